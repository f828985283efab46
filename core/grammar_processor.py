"""Guided decoding on the step contract: each request whose ``SamplingParams.extra["grammar"]`` names a registered
grammar gets a matcher that follows its accepted tokens and masks its logits to what the grammar allows; the
end-of-sequence token is allowed exactly when the grammar can end.

Each step packs the allowed tokens of every guided row into one int32 bitmask (kernels/token_bitmask.py: bit j
of word w allows token 32 w + j), uploads it once and masks the logits in place: a Triton kernel on CUDA, integer
bit operations on the CPU (kernels/cpu_token_bitmask.py), the torch reference elsewhere. Matchers that declare
``supports_bitmask`` fill their bitmask row themselves (``fill_bitmask(words)``, a [ceil(V / 32)] int32 tensor on
the host), skipping the Python list of ``allowed_token_ids()``; those that declare ``supports_mask_table`` hand
over a row of a table that every matcher of one compiled grammar shares, and a step gathers all such rows with one
indexing op per table (core/interfaces.py: GrammarMatcher, BitmaskGrammarMatcher, TableGrammarMatcher).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, cast

from pegboard.core.errors import InvalidParameterError
from pegboard.core.interfaces import BitmaskGrammarMatcher, GrammarMatcher, TableGrammarMatcher, require
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_config import registered_name

GRAMMAR_FIELD = "grammar"  # SamplingParams.extra[GRAMMAR_FIELD] = {"kind": registered grammar, "spec": ...}


def grammar_spec(params: SamplingParams, grammars: Any, backend: str = "pegboard") -> tuple[str, Any] | None:
    """The request's (registered grammar name, spec), the kind looked up in ``backend``; None without one."""
    spec = params.extra.get(GRAMMAR_FIELD)
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) != {"kind", "spec"}:
        raise InvalidParameterError('grammar must be {"kind": NAME, "spec": ...}', param=GRAMMAR_FIELD)
    name = registered_name(spec["kind"], backend)
    if name not in grammars:
        if backend != "pegboard":
            kinds = sorted(n.split(":", 1)[1] for n in grammars.names() if n.startswith(backend + ":"))
            raise InvalidParameterError(f"the {backend} structured-outputs backend has no {spec['kind']!r} grammar "
                                        f"(it has: {', '.join(kinds) or 'none'})", param=GRAMMAR_FIELD)
        available = ", ".join(n for n in grammars.names() if ":" not in n) or "none"
        raise InvalidParameterError(f"no grammar plugin is registered for kind {spec['kind']!r} "
                                    f"(available: {available})", param=GRAMMAR_FIELD)
    return name, spec["spec"]


def compile_matcher(grammars: Any, params: SamplingParams, *, backend: str, vocab_size: int,
                    tokenizer: Callable[[], Any]) -> GrammarMatcher | None:
    """The request's matcher for this vocabulary, checked against GrammarMatcher; None for a request without a
    grammar (``tokenizer()`` is called only for a request with one)."""
    spec = grammar_spec(params, grammars, backend)
    if spec is None:
        return None
    name, body = spec
    matcher = grammars.get(name).compile(body, vocab_size=vocab_size, tokenizer=tokenizer())
    require(matcher, GrammarMatcher, kind="grammar matcher", name=name, owner=grammars.owners[name])
    return matcher


def check_grammar(params: SamplingParams, grammars: Any, backend: str = "pegboard") -> None:
    """Refuse, by name, a grammar nothing provides or a spec its grammar finds wrong (the front end's check)."""
    spec = grammar_spec(params, grammars, backend)
    if spec is not None:
        grammars.get(spec[0]).validate(spec[1])


class GrammarProcessor:
    """A LogitsProcessor holding one compiled matcher per guided request."""

    follows_tokens = True  # the mask of a step depends on every token accepted before it

    def __init__(self, grammars: Any, *, vocab_size: int, device: Any, eos_token_id: Callable[[str], int | None],
                 tokenizer: Any = None, load_tokenizer: Callable[[], Any] | None = None,
                 backend: str = "pegboard", defer_to: Any = None) -> None:
        self.grammars = grammars
        self.defer_to = defer_to  # a DeviceGrammarProcessor: the requests it holds are not this one's
        self.backend = backend
        self.vocab_size = vocab_size
        self.device = device
        self.eos_token_id = eos_token_id
        self.tokenizer = tokenizer
        self.load_tokenizer = load_tokenizer  # loads ``tokenizer`` at the first guided request, when not given
        self.matchers: dict[str, GrammarMatcher] = {}

    def add_request(self, request_id: str, params: SamplingParams, prompt_token_ids: Sequence[int]) -> bool:
        if self.defer_to is not None and self.defer_to.holds(request_id):
            return False
        matcher = None if self.defer_to is None else self.defer_to.declined.pop(request_id, None)
        if matcher is None:
            matcher = compile_matcher(self.grammars, params, backend=self.backend, vocab_size=self.vocab_size,
                                      tokenizer=self._tokenizer)
        if matcher is None:
            return False
        self.matchers[request_id] = matcher
        return True

    def _tokenizer(self) -> Any:
        if self.tokenizer is None and self.load_tokenizer is not None:
            self.tokenizer = self.load_tokenizer()
        return self.tokenizer

    def accept_tokens(self, request_id: str, token_ids: Sequence[int]) -> None:
        matcher = self.matchers[request_id]
        eos = self.eos_token_id(request_id)
        for token_id in token_ids:
            if token_id == eos and matcher.is_finished():
                break
            matcher.accept(token_id)

    def remove_request(self, request_id: str) -> None:
        del self.matchers[request_id]

    def apply(self, logits, request_ids: Sequence[str]):
        import torch

        guided = [(row, rid) for row, rid in enumerate(request_ids) if rid in self.matchers]
        if not guided:
            return logits
        vocab_size = logits.shape[1]
        eos_ids: list[int] = []  # each bitmask row's EOS id (-1: none), and whether its grammar can end now
        can_end: list[bool] = []
        pinned = logits.device.type == "cuda"  # built in pinned memory: uploaded without another host copy
        bitmask = torch.empty(len(guided), -(-vocab_size // 32), dtype=torch.int32, pin_memory=pinned)
        tables: dict[int, tuple[Any, list[int], list[int]]] = {}  # id(table) -> (table, bitmask rows, table rows)
        for i, (_, request_id) in enumerate(guided):
            matcher = self.matchers[request_id]
            if getattr(matcher, "supports_mask_table", False):  # checked when compiled: a TableGrammarMatcher
                table, state = cast(TableGrammarMatcher, matcher).mask_row()
                _, at, states = tables.setdefault(id(table), (table, [], []))
                at.append(i)
                states.append(state)
            else:
                bitmask[i].zero_()
                self._fill(bitmask[i], matcher)
            eos = self.eos_token_id(request_id)
            eos_ids.append(-1 if eos is None or eos >= vocab_size else eos)
            can_end.append(matcher.is_finished())
        for table, at, states in tables.values():  # one gather per compiled grammar, not one copy per row
            if len(at) == len(guided):  # every row from one grammar (a batch of one schema): gathered in place
                torch.index_select(table, 0, torch.tensor(states), out=bitmask)
            else:
                bitmask[at] = table[states]
        set_eos_bits(bitmask, torch.tensor(eos_ids), torch.tensor(can_end))  # after the gathers, which overwrite rows
        rows = torch.tensor([row for row, _ in guided], dtype=torch.long, pin_memory=pinned)
        if pinned:
            bitmask, rows = bitmask.to(logits.device, non_blocking=True), rows.to(logits.device, non_blocking=True)
        return apply_bitmask(logits, bitmask, rows)

    @staticmethod
    def _fill(words, matcher: GrammarMatcher) -> None:
        """Set the bits of the tokens the matcher's grammar allows now (EOS is the caller's)."""
        import torch

        if matcher.supports_bitmask:  # checked when compiled: a BitmaskGrammarMatcher
            cast(BitmaskGrammarMatcher, matcher).fill_bitmask(words)
        else:
            allowed = torch.zeros(words.numel() * 32, dtype=torch.bool)
            allowed[list(matcher.allowed_token_ids())] = True
            words.copy_(pack_bits(allowed))


def apply_bitmask(logits, bitmask, rows):
    """-inf in place where bitmask row i forbids a token of logits row rows[i] (both on the logits' device)."""
    if logits.device.type == "cuda":
        from pegboard.kernels.token_bitmask import apply_token_bitmask
    elif logits.device.type == "cpu":
        from pegboard.kernels.cpu_token_bitmask import apply_token_bitmask_cpu as apply_token_bitmask
    else:
        from pegboard.kernels.reference import apply_token_bitmask_ref as apply_token_bitmask
    return apply_token_bitmask(logits, bitmask, rows)


def pack_bits(allowed) -> "torch.Tensor":
    """[32 W] bool -> [W] int32 words, bit j of word w for token 32 w + j."""
    import torch

    weights = torch.tensor([1 << j for j in range(32)], dtype=torch.int64)
    return (allowed.view(-1, 32).long() * weights).sum(-1).to(torch.int32)


def set_eos_bits(bitmask, eos_ids, can_end) -> None:
    """In place: allow token eos_ids[i] in bitmask row i where can_end[i], forbid it elsewhere; -1 is no EOS.

    Tensors on the bitmask's device, one op for all rows; bit 31 is the int32 sign bit. Both grammar processors
    set EOS here: allowed exactly where the grammar can end, also when the tokenizer gives it bytes that a grammar's
    table would allow (a vocabulary whose EOS is not a special token).
    """
    import torch

    ids = eos_ids.clamp(min=0)
    bits = torch.where(eos_ids >= 0, torch.bitwise_left_shift(torch.ones_like(ids), ids % 32), 0).to(torch.int32)
    words = (ids // 32)[:, None]  # 1 << 31 wraps to the sign bit above; a row without EOS gets bit 0: unchanged
    word = bitmask.gather(1, words)
    bitmask.scatter_(1, words, torch.where(can_end[:, None], word | bits[:, None], word & ~bits[:, None]))
