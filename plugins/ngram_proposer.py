"""Built-in plugin: the ``[ngram]`` proposer (prompt lookup): the tokens that followed the latest earlier
occurrence of the sequence's final n-gram are proposed to come again (vLLM's ``method: ngram``)."""

from __future__ import annotations

from typing import Any, Sequence

from pegboard.core.hookspecs import hookimpl

MAX_NGRAM = 4  # the longest tail looked up first (speculative_config's prompt_lookup_max overrides it)
MIN_NGRAM = 1  # the shortest (prompt_lookup_min)


class NgramProposer:
    """Proposes up to k tokens per request from its own earlier tokens; no model, no device."""

    def __init__(self, *, config: Any, num_speculative_tokens: int) -> None:
        self.k = num_speculative_tokens
        spec = getattr(config, "speculative_config", None) or {}
        self.min_ngram = spec.get("prompt_lookup_min", MIN_NGRAM)
        self.max_ngram = spec.get("prompt_lookup_max", MAX_NGRAM)

    def propose(self, requests: Sequence[Any]) -> list[list[int]]:
        """One proposal per request (``request.all_token_ids``): [] where no tail recurs."""
        return [self._lookup(request.all_token_ids) for request in requests]

    def _lookup(self, tokens: list[int]) -> list[int]:
        for n in range(min(self.max_ngram, len(tokens) - 1), self.min_ngram - 1, -1):
            tail = tokens[-n:]
            for start in range(len(tokens) - n - 1, -1, -1):  # the latest occurrence before the tail itself
                if tokens[start:start + n] == tail:
                    return tokens[start + n:start + n + self.k]
        return []


@hookimpl
def register_proposers(register) -> None:
    register("ngram", NgramProposer)
