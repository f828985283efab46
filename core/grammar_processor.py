"""Guided decoding on the step contract: each request whose ``SamplingParams.extra["grammar"]`` names a registered
grammar gets a matcher that follows its accepted tokens and masks its logits to what the grammar allows; the
end-of-sequence token is allowed exactly when the grammar can end.

A plain per-row mask from ``allowed_token_ids()``: the packed-bitmask kernel of the structured-outputs issue
replaces it without changing this lifecycle.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from pegboard.core.errors import InvalidParameterError
from pegboard.core.sampling_params import SamplingParams

GRAMMAR_FIELD = "grammar"  # SamplingParams.extra[GRAMMAR_FIELD] = {"kind": registered grammar, "spec": ...}


def grammar_spec(params: SamplingParams, grammars: Any) -> tuple[str, Any] | None:
    """The request's (grammar kind, spec), checked against the registered grammars; None without one."""
    spec = params.extra.get(GRAMMAR_FIELD)
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) != {"kind", "spec"}:
        raise InvalidParameterError('grammar must be {"kind": NAME, "spec": ...}', param=GRAMMAR_FIELD)
    if spec["kind"] not in grammars:
        available = ", ".join(grammars.names()) or "none"
        raise InvalidParameterError(f"no grammar plugin is registered for kind {spec['kind']!r} "
                                    f"(available: {available})", param=GRAMMAR_FIELD)
    return spec["kind"], spec["spec"]


class GrammarProcessor:
    """A LogitsProcessor holding one compiled matcher per guided request."""

    follows_tokens = True  # the mask of a step depends on every token accepted before it

    def __init__(self, grammars: Any, *, vocab_size: int, device: Any, eos_token_id: Callable[[str], int | None],
                 tokenizer: Any = None) -> None:
        self.grammars = grammars
        self.vocab_size = vocab_size
        self.device = device
        self.eos_token_id = eos_token_id
        self.tokenizer = tokenizer
        self.matchers: dict[str, Any] = {}

    def add_request(self, request_id: str, params: SamplingParams, prompt_token_ids: Sequence[int]) -> bool:
        spec = grammar_spec(params, self.grammars)
        if spec is None:
            return False
        kind, body = spec
        self.matchers[request_id] = self.grammars.get(kind).compile(body, vocab_size=self.vocab_size,
                                                                    tokenizer=self.tokenizer)
        return True

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

        for row, request_id in enumerate(request_ids):
            matcher = self.matchers.get(request_id)
            if matcher is None:
                continue
            allowed = list(matcher.allowed_token_ids())
            eos = self.eos_token_id(request_id)
            if matcher.is_finished() and eos is not None:
                allowed.append(eos)
            mask = torch.full((logits.shape[1],), float("-inf"), device=logits.device, dtype=logits.dtype)
            mask[torch.tensor(allowed, dtype=torch.long, device=logits.device)] = 0.0
            logits[row] += mask
        return logits
