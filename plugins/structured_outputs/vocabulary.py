"""Per-tokenizer precomputation: every token's exact bytes as a trie (each distinct prefix one node, ordered by
length), and for a DFA the packed int32 bitmask of the tokens allowed in each state (bit j of word w allows token
32 w + j, as kernels/token_bitmask.py reads it), so a step's mask is one row copy.

The table is computed for many states at once, one trie level at a time: the (state, node) pairs still alive
step to the node's children (contiguous, as nodes are sorted), each child's DFA state its parent's stepped by the
child's last byte, in one gather per level; pairs that die are dropped, so a state that allows few first bytes
costs little. SmolLM2's 49,152 tokens hold 332k bytes but 100k distinct prefixes: the trie walks a third of
what the tokens would. Special tokens (EOS among
them) are never allowed by the table; the grammar processor adds EOS when the matcher is finished.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from pegboard.plugins.structured_outputs.dfa import DEAD, DFA

STATE_CHUNK = 64  # states walked together (bounds the [chunk, trie nodes] int32 walk: 25 MB for SmolLM2)


@dataclass(frozen=True)
class Vocabulary:
    """Token bytes of one tokenizer for ``vocab_size`` ids (ids it lacks, and special tokens, are empty), and the
    trie of their prefixes: node 0 is the empty prefix, nodes are ordered by length, the last node is a sink
    that empty tokens point at."""

    token_bytes: tuple[bytes, ...]
    last_byte: np.ndarray  # [N] int64: the byte that leads from the node's parent
    first_child: np.ndarray  # [N] int64: a node's children are first_child .. first_child + child_count - 1
    child_count: np.ndarray  # [N] int64
    token_node: np.ndarray  # [V] int64: the node of each token's whole bytes (the sink for empty tokens)

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    @functools.cached_property
    def padded_bytes(self) -> tuple[Any, Any]:
        """(every token's bytes as a zero-padded [V, L] uint8 tensor, their [V] int32 lengths), built once."""
        import torch

        lengths = np.fromiter(map(len, self.token_bytes), dtype=np.int64, count=self.size)
        padded = np.zeros((self.size, max(int(lengths.max(initial=0)), 1)), dtype=np.uint8)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        padded[np.repeat(np.arange(self.size), lengths), np.arange(starts.size) - starts] = \
            np.frombuffer(b"".join(self.token_bytes), dtype=np.uint8)
        return torch.from_numpy(padded), torch.from_numpy(lengths.astype(np.int32))


def _trie(pieces: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    prefixes = sorted({p[:i] for p in pieces for i in range(1, len(p) + 1)}, key=lambda p: (len(p), p))
    index = {b"": 0, **{p: i + 1 for i, p in enumerate(prefixes)}}
    parent = np.array([-1] + [index[p[:-1]] for p in prefixes], dtype=np.int64)  # non-decreasing (sorted)
    last_byte = np.array([0] + [p[-1] for p in prefixes], dtype=np.int64)
    nodes = np.arange(len(index))
    first_child = np.searchsorted(parent, nodes, side="left")
    child_count = np.searchsorted(parent, nodes, side="right") - first_child
    sink = len(index)  # a node no walk reaches: empty tokens are never allowed
    token_node = np.array([index[p] if p else sink for p in pieces], dtype=np.int64)
    return last_byte, first_child, child_count, token_node


def build_vocabulary(tokenizer: Any, vocab_size: int) -> Vocabulary:
    from pegboard.core.token_bytes import TokenBytes

    read = TokenBytes(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            special.add(token_id)
    known = min(vocab_size, len(tokenizer))
    pieces = [b"" if i in special or i >= known else read(i) for i in range(vocab_size)]
    return Vocabulary(tuple(pieces), *_trie(pieces))


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
    nodes = len(vocabulary.last_byte)
    for begin in range(1, dfa.num_states, STATE_CHUNK):  # state 0 (dead) allows nothing
        states = np.arange(begin, min(begin + STATE_CHUNK, dfa.num_states), dtype=np.int32)
        alive = np.zeros((len(states), nodes + 1), dtype=bool)  # [chunk, trie nodes + the sink]
        rows, node, state = np.arange(len(states)), np.zeros(len(states), dtype=np.int64), states
        while rows.size:  # one trie level: every alive pair steps to its node's children
            counts = vocabulary.child_count[node]
            pair = np.repeat(np.arange(rows.size), counts)
            offsets = np.cumsum(counts) - counts
            child = vocabulary.first_child[node][pair] + (np.arange(pair.size) - offsets[pair])
            state = dfa.transitions[state[pair], vocabulary.last_byte[child]]
            keep = state != DEAD
            rows, node, state = rows[pair][keep], child[keep], state[keep]
            alive[rows, node] = True
        allowed = np.zeros((len(states), words * 32), dtype=bool)
        allowed[:, :vocabulary.size] = alive[:, vocabulary.token_node]
        table[states] = np.packbits(allowed, axis=1, bitorder="little").view("<i4")
    return table
