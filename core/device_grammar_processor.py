"""Guided decoding followed on the device: for requests whose matcher is a ByteDFAMatcher (the built-in grammars),
each request's DFA state lives in a device tensor. A step gathers its guided rows' masks from the grammar's mask
table on the device (EOS's bit set once per table, exactly in the accepting states), masks the logits in place, and
after sampling walks each request's state by its new token (kernels/dfa_walk.py). No guided step waits for tokens on
the host, so async scheduling runs ahead as it does for free requests; a step whose rows are the last step's reuses
its row tensors, so its host cost does not grow with the rows. GrammarProcessor keeps the other matchers (the
optional backends), which follow their tokens on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, cast

import torch

from pegboard.core.byte_dfa import ByteDFA
from pegboard.core.grammar_processor import apply_bitmask, compile_matcher, set_eos_bits
from pegboard.core.interfaces import ByteDFAMatcher, GrammarMatcher
from pegboard.core.sampling_params import SamplingParams


def follows_grammars_on_device(device: torch.device) -> bool:
    """Whether an engine on this device follows ByteDFA grammars on it: on CUDA, where the host may then run
    ahead of the device; a CPU runs every op as it is issued, so it has nothing to run ahead of (its engine keeps
    GrammarProcessor's host walk, measured there)."""
    return device.type == "cuda"


@dataclass(frozen=True)
class _OnDevice:
    """One ByteDFA's tensors on the device; its mask tables made on first use, one per EOS id (see _table)."""

    transitions: torch.Tensor
    accepting: torch.Tensor
    token_bytes: torch.Tensor
    token_lengths: torch.Tensor
    tables: dict[int, torch.Tensor] = field(default_factory=dict)  # EOS id (-1: none) -> [S, W] int32 masks


@dataclass(frozen=True)
class _Group:
    """The rows of one step that one mask table serves (a grammar and an EOS id), as device tensors."""

    table: torch.Tensor  # [S, W] int32: each state's allowed tokens, EOS allowed exactly where the state accepts
    rows: torch.Tensor  # [G] int64 logits rows
    slots: torch.Tensor  # [G] int64 state slots
    firsts: torch.Tensor | None  # which of them are each request's first row; None: all (no proposals in the step)
    walk_rows: torch.Tensor  # [R] int64: each request's first row (it carries the sampled token)
    walk_slots: torch.Tensor  # [R] int64
    eos_ids: torch.Tensor  # [R] int64, -1 for none
    dfa: _OnDevice


@dataclass(frozen=True)
class _Walk:
    """What the step's sampling must walk: a group's requests and their states before the step."""

    group: _Group
    states: torch.Tensor  # [R] int32


class DeviceGrammarProcessor:
    """A LogitsProcessor for ByteDFA grammars, with every request's state on the device."""

    follows_tokens = False  # it follows the tokens on the device (on_sampled), never on the host

    def __init__(self, grammars: Any, *, vocab_size: int, device: Any, eos_token_id: Callable[[str], int | None],
                 load_tokenizer: Callable[[], Any] | None = None, backend: str = "pegboard",
                 walk: Callable[..., torch.Tensor] | None = None) -> None:  # the kernel, or its reference
        self.grammars = grammars
        self.backend = backend
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.eos_token_id = eos_token_id
        self.load_tokenizer = load_tokenizer
        self.tokenizer: Any = None
        if walk is None and self.device.type == "cuda":
            from pegboard.kernels.dfa_walk import dfa_walk as walk
        elif walk is None:
            from pegboard.kernels.reference import dfa_walk_ref as walk
        self._walk_states = walk
        self._states = torch.zeros(256, dtype=torch.int32, device=self.device)  # one slot per request
        self._free_slots = list(range(255, -1, -1))
        self._requests: dict[str, tuple[int, ByteDFA, int]] = {}  # request id -> (slot, its ByteDFA, EOS id or -1)
        self._on_device: dict[int, tuple[ByteDFA, _OnDevice, int]] = {}  # id(ByteDFA) -> (it, on device, users)
        # id(host token bytes) -> (them, their device copy, the lengths' device copy, grammars using them)
        self._bytes_on_device: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = {}
        self._pending: list[_Walk] = []  # what apply() asked this step's sampling to walk
        self._starting: dict[int, int] = {}  # slot -> start state of requests added since the last step
        self.declined: dict[str, GrammarMatcher] = {}  # matchers compiled here for the host to follow (taken at once)
        self._plan: tuple[list[str], list[_Group]] = ([], [])  # the last step's rows and groups, reused while they hold

    def holds(self, request_id: str) -> bool:
        return request_id in self._requests

    def _tokenizer(self) -> Any:
        if self.tokenizer is None and self.load_tokenizer is not None:
            self.tokenizer = self.load_tokenizer()
        return self.tokenizer

    def add_request(self, request_id: str, params: SamplingParams, prompt_token_ids: Sequence[int]) -> bool:
        matcher = compile_matcher(self.grammars, params, backend=self.backend, vocab_size=self.vocab_size,
                                  tokenizer=self._tokenizer)
        if matcher is None:
            return False
        if not (getattr(matcher, "supports_mask_table", False) and matcher.supports_byte_dfa):
            self.declined[request_id] = matcher  # GrammarProcessor follows it on the host, without compiling again
            return False
        matcher = cast(ByteDFAMatcher, matcher)
        dfa = matcher.byte_dfa()
        if not self._free_slots:
            self._grow()
        slot = self._free_slots.pop()
        self._starting[slot] = matcher.state  # written on the device with the next step's (a write now would sync)
        held = self._on_device.get(id(dfa))
        if held is None:
            held = (dfa, self._copy_to_device(dfa), 0)
        self._on_device[id(dfa)] = (held[0], held[1], held[2] + 1)
        eos = self.eos_token_id(request_id)
        self._requests[request_id] = (slot, dfa, -1 if eos is None or eos >= self.vocab_size else eos)
        self._plan = ([], [])  # a request came: the next step's groups are new
        return True

    def accept_tokens(self, request_id: str, token_ids: Sequence[int]) -> None:
        """Nothing to do: on_sampled walked the tokens on the device already."""

    def remove_request(self, request_id: str) -> None:
        slot, dfa, _ = self._requests.pop(request_id)
        self._free_slots.append(slot)
        self._plan = ([], [])  # a request went (and the plan no longer holds its grammar's tables)
        held, on_device, users = self._on_device[id(dfa)]
        if users == 1:
            del self._on_device[id(dfa)]  # its device copy is freed with the last request that used it
            self._release_bytes(dfa)
        else:
            self._on_device[id(dfa)] = (held, on_device, users - 1)

    def _copy_to_device(self, dfa: ByteDFA) -> _OnDevice:
        """The ByteDFA's tensors on the device; its tokens' bytes shared by every grammar of the same vocabulary
        (the same host tensors: 4 MB for SmolLM2's, copied once, not once a schema)."""
        shared = self._bytes_on_device.get(id(dfa.token_bytes))
        if shared is None:
            shared = (dfa.token_bytes, dfa.token_bytes.to(self.device), dfa.token_lengths.to(self.device), 0)
        self._bytes_on_device[id(dfa.token_bytes)] = (*shared[:3], shared[3] + 1)
        return _OnDevice(dfa.transitions.to(self.device), dfa.accepting.to(self.device), shared[1], shared[2])

    def _table(self, dfa: ByteDFA, on_device: _OnDevice, eos: int) -> torch.Tensor:
        """The grammar's mask table for requests whose EOS id is ``eos``, with EOS allowed exactly in the accepting
        states: set once per table here, not in every step's rows (-1: no EOS, the table as compiled)."""
        table = on_device.tables.get(eos)
        if table is None:
            table = dfa.masks.to(self.device)
            if eos >= 0:
                set_eos_bits(table, torch.full((table.shape[0],), eos, device=self.device), on_device.accepting)
            on_device.tables[eos] = table
        return table

    def _release_bytes(self, dfa: ByteDFA) -> None:
        """One grammar fewer uses its vocabulary's bytes on the device (freed with the last)."""
        host, token_bytes, token_lengths, users = self._bytes_on_device[id(dfa.token_bytes)]
        if users == 1:
            del self._bytes_on_device[id(dfa.token_bytes)]
        else:
            self._bytes_on_device[id(dfa.token_bytes)] = (host, token_bytes, token_lengths, users - 1)

    def _grow(self) -> None:
        """Twice the state slots (a batch holds more guided requests than ever before)."""
        size = self._states.numel()
        self._states = torch.cat([self._states, torch.zeros_like(self._states)])
        self._free_slots = list(range(2 * size - 1, size - 1, -1))

    def apply(self, logits: torch.Tensor, request_ids: Sequence[str]) -> torch.Tensor:
        """Mask every guided row to what its state allows (EOS where it accepts); remember what to walk."""
        pinned = self.device.type == "cuda"
        if self._starting:  # new requests' start states, in one upload
            start = torch.tensor([list(self._starting), list(self._starting.values())], dtype=torch.long,
                                 pin_memory=pinned).to(self.device, non_blocking=True)
            self._states[start[0]] = start[1].to(torch.int32)
            self._starting.clear()
        ids = list(request_ids)
        last_ids, groups = self._plan
        if last_ids != ids:  # unless the rows are the last step's and no request came or went
            groups = self._groups(ids, pinned)
            self._plan = (ids, groups)
        for group in groups:
            states = self._states[group.slots]
            logits = apply_bitmask(logits, group.table.index_select(0, states), group.rows)
            self._pending.append(_Walk(group, states if group.firsts is None else states[group.firsts]))
        return logits

    def _groups(self, request_ids: Sequence[str], pinned: bool) -> list[_Group]:
        """The step's guided rows by mask table, uploaded in one copy per table."""
        by_table: dict[tuple[int, int], tuple[list[int], list[int], list[int]]] = {}  # rows, slots, first rows
        seen: set[str] = set()
        for row, request_id in enumerate(request_ids):
            held = self._requests.get(request_id)
            if held is None:
                continue
            slot, dfa, eos = held
            rows, slots, firsts = by_table.setdefault((id(dfa), eos), ([], [], []))
            if request_id not in seen:  # a request's first row carries its sampled token (proposals are not kept)
                seen.add(request_id)
                firsts.append(len(rows))
            rows.append(row)
            slots.append(slot)
        groups = []
        for (key, eos), (rows, slots, firsts) in by_table.items():
            dfa, on_device, _ = self._on_device[key]
            table = self._table(dfa, on_device, eos)
            host = torch.tensor([rows, slots], dtype=torch.long, pin_memory=pinned)
            rows_t, slots_t = host.to(self.device, non_blocking=True)
            eos_t = torch.full((len(firsts),), eos, dtype=torch.long, device=self.device)
            if len(firsts) == len(rows):  # one row per request (no proposals in the step)
                groups.append(_Group(table, rows_t, slots_t, None, rows_t, slots_t, eos_t, on_device))
            else:
                first = torch.tensor(firsts, dtype=torch.long).to(self.device, non_blocking=True)
                groups.append(_Group(table, rows_t, slots_t, first, rows_t[first], slots_t[first], eos_t,
                                     on_device))
        return groups

    def on_sampled(self, token_ids: torch.Tensor) -> None:
        """Walk each guided request's state by the token sampled in its first row (``token_ids``: [N] rows)."""
        for walk in self._pending:
            group, d = walk.group, walk.group.dfa
            self._states[group.walk_slots] = self._walk_states(walk.states, token_ids[group.walk_rows], group.eos_ids,
                                                               d.token_bytes, d.token_lengths, d.transitions,
                                                               d.accepting)
        self._pending.clear()
