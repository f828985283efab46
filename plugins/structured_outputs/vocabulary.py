"""Per-tokenizer precomputation: every token's exact bytes as a padded matrix, and for a DFA the packed int32
bitmask of the tokens allowed in each state (bit j of word w allows token 32 w + j, as kernels/token_bitmask.py
reads it), so a step's mask is one row copy.

The table is computed for all states at once: the first byte of every token through every state in one
gather, then only the (state, token) pairs still alive walk on, byte by byte. Special tokens (EOS among them)
are never allowed by the table; the grammar processor adds EOS when the matcher is finished.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from pegboard.plugins.structured_outputs.dfa import DEAD, DFA

STATE_CHUNK = 64  # states walked together (bounds the [chunk, V] first-byte gather)


@dataclass(frozen=True)
class Vocabulary:
    """Token bytes of one tokenizer, for ``vocab_size`` ids (ids the tokenizer lacks, and special tokens, are empty)."""

    token_bytes: tuple[bytes, ...]
    matrix: np.ndarray  # [V, Lmax] uint8, zero-padded
    lengths: np.ndarray  # [V] int32, 0 for tokens never allowed

    @property
    def size(self) -> int:
        return len(self.token_bytes)


def build_vocabulary(tokenizer: Any, vocab_size: int) -> Vocabulary:
    from pegboard.core.token_bytes import TokenBytes

    read = TokenBytes(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            special.add(token_id)
    known = min(vocab_size, len(tokenizer))
    pieces = [b"" if i in special or i >= known else read(i) for i in range(vocab_size)]
    lengths = np.array([len(p) for p in pieces], dtype=np.int32)
    matrix = np.zeros((vocab_size, max(int(lengths.max()), 1)), dtype=np.uint8)
    for i, piece in enumerate(pieces):
        if piece:
            matrix[i, :len(piece)] = np.frombuffer(piece, dtype=np.uint8)
    return Vocabulary(tuple(pieces), matrix, lengths)


_vocabularies: dict[tuple[int, int], tuple[Any, Vocabulary]] = {}
_lock = threading.Lock()


def vocabulary_of(tokenizer: Any, vocab_size: int) -> Vocabulary:
    """The tokenizer's Vocabulary, built once per (tokenizer, vocab_size)."""
    key = (id(tokenizer), vocab_size)
    with _lock:
        found = _vocabularies.get(key)
        if found is None or found[0] is not tokenizer:
            found = _vocabularies[key] = (tokenizer, build_vocabulary(tokenizer, vocab_size))
        return found[1]


def mask_table(dfa: DFA, vocabulary: Vocabulary) -> np.ndarray:
    """[S, ceil(V / 32)] int32: the tokens whose whole bytes keep state s alive."""
    words = -(-vocabulary.size // 32)
    table = np.zeros((dfa.num_states, words), dtype=np.int32)
    usable = np.flatnonzero(vocabulary.lengths > 0)
    first = vocabulary.matrix[usable, 0]
    lengths = vocabulary.lengths[usable]
    transitions = dfa.transitions
    for begin in range(1, dfa.num_states, STATE_CHUNK):  # state 0 (dead) allows nothing
        states = np.arange(begin, min(begin + STATE_CHUNK, dfa.num_states))
        after_first = transitions[states[:, None], first[None, :]]  # [chunk, U]
        rows, cols = np.nonzero(after_first)
        current = after_first[rows, cols]
        position = 1
        done_rows, done_cols = [], []
        while rows.size:
            finished = lengths[cols] == position
            done_rows.append(rows[finished])
            done_cols.append(cols[finished])
            rows, cols, current = rows[~finished], cols[~finished], current[~finished]
            if not rows.size:
                break
            current = transitions[current, vocabulary.matrix[usable[cols], position]]
            alive = current != DEAD
            rows, cols, current = rows[alive], cols[alive], current[alive]
            position += 1
        allowed = np.zeros((len(states), words * 32), dtype=bool)
        allowed[np.concatenate(done_rows), usable[np.concatenate(done_cols)]] = True
        table[states] = np.packbits(allowed, axis=1, bitorder="little").view("<i4")
    return table
