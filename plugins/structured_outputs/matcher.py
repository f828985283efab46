"""A compiled constraint for one tokenizer, and the per-request matcher that walks it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pegboard.core.byte_dfa import ByteDFA
from pegboard.plugins.structured_outputs.dfa import DEAD, DFA, START
from pegboard.plugins.structured_outputs.vocabulary import Vocabulary


@dataclass(frozen=True)
class CompiledGrammar:
    """A DFA with its per-state token bitmasks (torch int32 [S, W]) over one vocabulary."""

    dfa: DFA
    vocabulary: Vocabulary
    masks: Any  # torch.Tensor [S, ceil(V / 32)] int32
    next_state: list[list[int]]  # transitions as Python lists (a token's walk in accept())
    accepting: list[bool]

    @functools.cached_property
    def byte_dfa(self) -> ByteDFA:
        """The tensors a step walks on the device (built at the first request that asks)."""
        import torch

        token_bytes, token_lengths = self.vocabulary.padded_bytes
        return ByteDFA(self.masks, torch.from_numpy(np.ascontiguousarray(self.dfa.transitions, dtype=np.int32)),
                       torch.from_numpy(np.asarray(self.dfa.accepting, dtype=bool)), token_bytes, token_lengths)


class DFAMatcher:
    """Follows one request through a CompiledGrammar: a state number, a row of masks per step."""

    supports_bitmask = True
    supports_mask_table = True  # a step gathers the rows of every matcher of one CompiledGrammar at once
    supports_byte_dfa = True  # and may follow it on the device

    def __init__(self, compiled: CompiledGrammar) -> None:
        self.compiled = compiled
        self.state = START

    def byte_dfa(self) -> ByteDFA:
        return self.compiled.byte_dfa

    def fill_bitmask(self, words) -> None:
        words.copy_(self.compiled.masks[self.state])

    def mask_row(self) -> tuple[Any, int]:
        return self.compiled.masks, self.state

    def allowed_token_ids(self) -> Sequence[int]:
        from pegboard.kernels.reference import unpack_token_bitmask

        row = self.compiled.masks[self.state][None]
        return unpack_token_bitmask(row, self.compiled.vocabulary.size)[0].nonzero()[:, 0].tolist()

    def accept(self, token_id: int) -> None:
        pieces = self.compiled.vocabulary.token_bytes
        piece = pieces[token_id] if 0 <= token_id < len(pieces) else b""
        state, table = (self.state if piece else DEAD), self.compiled.next_state
        for byte in piece:  # a special token (piece b"") ends in the dead state: the mask allows nothing more
            state = table[state][byte]
        self.state = state

    def is_finished(self) -> bool:
        return self.compiled.accepting[self.state]
