"""Guided decoding followed on the device: for requests whose matcher is a ByteDFAMatcher (the built-in grammars),
each request's DFA state lives in a device tensor. A step gathers its guided rows' masks from the grammar's mask
table on the device, allows EOS exactly where the state accepts, masks the logits in place, and after sampling walks
each request's state by its new token (kernels/dfa_walk.py). No guided step waits for tokens on the host, so async
scheduling runs ahead as it does for free requests. GrammarProcessor keeps the other matchers (the optional
backends), which follow their tokens on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    """One ByteDFA's tensors on the device."""

    masks: torch.Tensor
    transitions: torch.Tensor
    accepting: torch.Tensor
    token_bytes: torch.Tensor
    token_lengths: torch.Tensor


@dataclass(frozen=True)
class _Walk:
    """What the step's sampling must walk: each guided request's first row, state slot, state and EOS id."""

    rows: torch.Tensor  # [R] int64 sample rows
    slots: torch.Tensor  # [R] int64
    states: torch.Tensor  # [R] int32
    eos_ids: torch.Tensor  # [R] int64, -1 for none
    dfa: _OnDevice


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
        return True

    def accept_tokens(self, request_id: str, token_ids: Sequence[int]) -> None:
        """Nothing to do: on_sampled walked the tokens on the device already."""

    def remove_request(self, request_id: str) -> None:
        slot, dfa, _ = self._requests.pop(request_id)
        self._free_slots.append(slot)
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
        return _OnDevice(dfa.masks.to(self.device), dfa.transitions.to(self.device), dfa.accepting.to(self.device),
                         shared[1], shared[2])

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
        groups: dict[int, tuple[list[int], list[int], list[int], list[int]]] = {}  # rows, slots, first rows, EOS
        seen: set[str] = set()
        for row, request_id in enumerate(request_ids):
            held = self._requests.get(request_id)
            if held is None:
                continue
            slot, dfa, eos = held
            rows, slots, firsts, eos_ids = groups.setdefault(id(dfa), ([], [], [], []))
            rows.append(row)
            slots.append(slot)
            if request_id not in seen:  # a request's first row carries its sampled token (proposals are not kept)
                seen.add(request_id)
                firsts.append(len(rows) - 1)
            eos_ids.append(eos)
        pinned = self.device.type == "cuda"
        if self._starting:  # new requests' start states, in one upload
            start = torch.tensor([list(self._starting), list(self._starting.values())], dtype=torch.long,
                                 pin_memory=pinned).to(self.device, non_blocking=True)
            self._states[start[0]] = start[1].to(torch.int32)
            self._starting.clear()
        for key, (rows, slots, firsts, eos_ids) in groups.items():
            on_device = self._on_device[key][1]
            host = torch.tensor([rows, slots, eos_ids], dtype=torch.long, pin_memory=pinned)
            rows_t, slots_t, eos_t = host.to(self.device, non_blocking=True)
            states = self._states[slots_t]
            bitmask = on_device.masks[states.long()]
            set_eos_bits(bitmask, eos_t, on_device.accepting[states.long()])  # EOS exactly where the state accepts
            logits = apply_bitmask(logits, bitmask, rows_t)
            if len(firsts) == len(rows):  # one row per request (no proposals in the step)
                self._pending.append(_Walk(rows_t, slots_t, states, eos_t, on_device))
            else:
                first = torch.tensor(firsts, dtype=torch.long).to(self.device, non_blocking=True)
                self._pending.append(_Walk(rows_t[first], slots_t[first], states[first], eos_t[first], on_device))
        return logits

    def on_sampled(self, token_ids: torch.Tensor) -> None:
        """Walk each guided request's state by the token sampled in its first row (``token_ids``: [N] rows)."""
        for walk in self._pending:
            d = walk.dfa
            self._states[walk.slots] = self._walk_states(walk.states, token_ids[walk.rows], walk.eos_ids,
                                                         d.token_bytes, d.token_lengths, d.transitions, d.accepting)
        self._pending.clear()
