"""regex_ast trees -> byte-level DFAs: a Thompson NFA over UTF-8 byte ranges (built back to front, so a shared
subtree with the same continuation is built once), the subset construction over byte segments, then the states
that cannot reach an accepting one folded into the dead state 0, and Moore minimization (numpy).

A DFA is ``transitions`` [S, 256] int32 (state 0 is dead and absorbing) plus ``accepting`` [S] bool, start 1.
Every live state can still reach an accepting one, so "not dead" means "still possible".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pegboard.core.errors import InvalidParameterError
from pegboard.plugins.structured_outputs import regex_ast as ra

MAX_NFA_STATES = 400_000
MAX_DFA_STATES = 20_000
DEAD, START = 0, 1


class GrammarTooLargeError(InvalidParameterError):
    """The constraint compiles to more states than the caps allow."""


@dataclass(frozen=True)
class DFA:
    transitions: np.ndarray  # [S, 256] int32
    accepting: np.ndarray  # [S] bool

    @property
    def num_states(self) -> int:
        return len(self.accepting)

    def matches(self, data: bytes) -> bool:
        state = START
        for byte in data:
            state = int(self.transitions[state, byte])
        return bool(self.accepting[state])


def utf8_sequences(lo: int, hi: int) -> list[tuple[tuple[int, int], ...]]:
    """The code points lo..hi as sequences of byte ranges (Go's and Rust's utf8 range splitting)."""
    out: list[tuple[tuple[int, int], ...]] = []
    for start, end in ((0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)):
        a, b = max(lo, start), min(hi, end)
        if a <= b:
            _split(a, b, out)
    return out


def _split(lo: int, hi: int, out: list) -> None:
    n = len(chr(lo).encode())
    for i in range(1, n):
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m:
                _split(lo, lo | m, out)
                _split((lo | m) + 1, hi, out)
                return
            if hi & m != m:
                _split(lo, (hi & ~m) - 1, out)
                _split(hi & ~m, hi, out)
                return
    out.append(tuple(zip(chr(lo).encode(), chr(hi).encode())))


class _NFA:
    """States with epsilon edges and byte-range edges; built from the accepting state backwards."""

    def __init__(self, what: str) -> None:
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int, int]]] = []
        self.what = what
        self._memo: dict[tuple[int, int], int] = {}
        self._keep: list[ra.Node] = []  # memo keys are ids: keep their nodes alive

    def state(self) -> int:
        if len(self.eps) >= MAX_NFA_STATES:
            raise GrammarTooLargeError(f"{self.what} is too large to compile (over {MAX_NFA_STATES} NFA states); "
                                       f"simplify it (fewer alternatives, smaller repetition bounds)")
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def build(self, node: ra.Node, cont: int) -> int:
        """An entry state from which ``node`` followed by ``cont`` is matched."""
        key = (id(node), cont)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self._build(node, cont)
            self._keep.append(node)
        return found

    def _build(self, node: ra.Node, cont: int) -> int:
        if isinstance(node, ra.Chars):  # a byte-range trie whose equal suffixes (continuation bytes) are shared
            entry = self.state()
            suffixes: dict[tuple[tuple[int, int], ...], int] = {(): cont}

            def suffix(ranges: tuple[tuple[int, int], ...]) -> int:
                if ranges not in suffixes:
                    state = suffixes[ranges] = self.state()
                    self.edges[state].append((*ranges[0], suffix(ranges[1:])))
                return suffixes[ranges]

            for sequence in (s for lo, hi in node.ranges for s in utf8_sequences(lo, hi)):
                self.edges[entry].append((*sequence[0], suffix(sequence[1:])))
            return entry
        if isinstance(node, ra.Concat):
            for item in reversed(node.items):
                cont = self.build(item, cont)
            return cont
        if isinstance(node, ra.Alt):
            entry = self.state()
            self.eps[entry].extend(self.build(item, cont) for item in node.items)
            return entry
        tail = cont  # Repeat: the optional part after the required copies
        if node.high is None:
            loop = self.state()
            self.eps[loop].extend([self.build(node.item, loop), cont])
            tail = loop
        else:
            for _ in range(node.high - node.low):
                entry = self.state()
                self.eps[entry].extend([self._build(node.item, tail), cont])
                tail = entry
        for _ in range(node.low):
            tail = self._build(node.item, tail)
        return tail


def compile_dfa(node: ra.Node, *, what: str = "the constraint") -> DFA:
    """The minimal DFA of ``node``'s UTF-8 bytes; an empty language is an error naming ``what``."""
    nfa = _NFA(what)
    final = nfa.state()
    start = nfa.build(node, final)
    cuts = sorted({0, 256, *(b for edges in nfa.edges for lo, hi, _ in edges for b in (lo, hi + 1))})
    segment_of_byte = np.searchsorted(np.array(cuts), np.arange(256), side="right") - 1
    seg_edges = [[(int(segment_of_byte[lo]), int(segment_of_byte[hi]), t) for lo, hi, t in edges]
                 for edges in nfa.edges]
    closures: dict[frozenset, frozenset] = {}

    def closure(states: frozenset) -> frozenset:
        found = closures.get(states)
        if found is None:
            seen, stack = set(states), list(states)
            while stack:
                for nxt in nfa.eps[stack.pop()]:
                    if nxt not in seen:
                        seen.add(nxt)
                        stack.append(nxt)
            found = closures[states] = frozenset(seen)
        return found

    index: dict[frozenset, int] = {frozenset(): DEAD}
    first = closure(frozenset([start]))
    index[first] = START
    order = [frozenset(), first]
    rows: list[list[int]] = [[DEAD] * (len(cuts) - 1)]
    i = START
    while i < len(order):
        moves: dict[int, set[int]] = {}
        for s in order[i]:
            for slo, shi, target in seg_edges[s]:
                for segment in range(slo, shi + 1):
                    moves.setdefault(segment, set()).add(target)
        row = [DEAD] * (len(cuts) - 1)
        for segment, targets in moves.items():
            nxt = closure(frozenset(targets))
            j = index.get(nxt)
            if j is None:
                if len(order) >= MAX_DFA_STATES:
                    raise GrammarTooLargeError(f"{what} is too large to compile (over {MAX_DFA_STATES} DFA "
                                               f"states); simplify it (fewer optional parts or bounds)")
                j = index[nxt] = len(order)
                order.append(nxt)
            row[segment] = j
        rows.append(row)
        i += 1
    by_segment = np.array(rows, dtype=np.int32)
    accepting = np.array([final in states for states in order])
    minimal, accepting = _minimize(by_segment, accepting, what)
    return DFA(np.ascontiguousarray(minimal[:, segment_of_byte]), accepting)


_WEIGHTS = np.random.default_rng(0).integers(1, 2**63, size=4096, dtype=np.uint64)


def _group(signature: np.ndarray) -> np.ndarray:
    """Equal rows -> equal group ids (by a row hash, checked exactly; np.unique of rows if two rows collide)."""
    hashes = (signature.astype(np.uint64) * _WEIGHTS[:signature.shape[1]]).sum(axis=1)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if (signature == signature[first[inverse]]).all():
        return inverse
    return np.unique(signature, axis=0, return_inverse=True)[1].ravel()


def _minimize(transitions: np.ndarray, accepting: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Fold states that cannot reach acceptance into the dead state, then merge equivalent states (Moore);
    ``transitions`` [S, segments] -> the minimal [S', segments] and its accepting states."""
    live = accepting.copy()
    while True:  # live = can reach an accepting state
        grown = live | live[transitions].any(axis=1)
        if (grown == live).all():
            break
        live = grown
    live[DEAD] = False
    if not live[START]:
        raise InvalidParameterError(f"{what} matches no output at all (it is unsatisfiable)", param="grammar")
    transitions = np.where(live[transitions], transitions, DEAD)
    transitions[~live] = DEAD
    # Moore: split blocks by (block, successor blocks) until stable; dead stays alone, start is renumbered 1
    block = _group(np.where(live, np.where(accepting, 2, 1), 0)[:, None])  # dense ids: max() counts the blocks
    while True:
        refined = _group(np.concatenate([block[:, None], block[transitions]], axis=1))
        if refined.max() == block.max():
            break
        block = refined
    # renumber: dead -> 0, start -> 1, others in first-seen order
    order = [int(block[DEAD]), int(block[START])]
    seen = set(order)
    for b in block.tolist():
        if b not in seen:
            seen.add(b)
            order.append(b)
    renumber = np.empty(int(block.max()) + 1, dtype=np.int32)
    renumber[order] = np.arange(len(order), dtype=np.int32)
    states = renumber[block]
    representative = np.zeros(len(order), dtype=np.int64)
    representative[states[::-1]] = np.arange(len(states))[::-1]
    minimal = states[transitions[representative]].astype(np.int32)
    return minimal, accepting[representative] & (np.arange(len(order)) != DEAD)


def overlap(a: DFA, b: DFA) -> bool:
    """Whether some text matches both DFAs (a walk of the product automaton)."""
    seen = {(START, START)}
    stack = [(START, START)]
    while stack:
        x, y = stack.pop()
        if a.accepting[x] and b.accepting[y]:
            return True
        for pair in set(zip(a.transitions[x].tolist(), b.transitions[y].tolist())):
            if DEAD not in pair and pair not in seen:
                seen.add(pair)
                stack.append(pair)
    return False
