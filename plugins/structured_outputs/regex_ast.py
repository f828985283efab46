"""Regular languages over Unicode code points: a small immutable AST and the constructors the compilers share.

JSON schemas, choices, lark grammars and user regexes all become one of these trees; dfa.py turns a tree into a
byte-level DFA (code points are matched as their UTF-8 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)


@dataclass(frozen=True, eq=False)
class Chars:
    """One code point out of sorted, disjoint, inclusive ranges (no ranges: matches nothing)."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, eq=False)
class Concat:
    """The items one after another (no items: the empty string)."""

    items: tuple["Node", ...]


@dataclass(frozen=True, eq=False)
class Alt:
    """Any one of the items (no items: the empty language)."""

    items: tuple["Node", ...]


@dataclass(frozen=True, eq=False)
class Repeat:
    """``item`` between ``low`` and ``high`` times (``high`` None: unbounded)."""

    item: "Node"
    low: int
    high: int | None


Node = Union[Chars, Concat, Alt, Repeat]
EMPTY = Concat(())
NOTHING = Alt(())


def normalize(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, merged ranges."""
    merged: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


def chars(ranges: Iterable[tuple[int, int]]) -> Chars:
    return Chars(normalize(ranges))


def char_set(text: str) -> Chars:
    """Any one character of ``text``."""
    return chars((ord(c), ord(c)) for c in text)


def complement(node: Chars) -> Chars:
    """Every code point (surrogates excluded) that ``node`` does not match."""
    out, start = [], 0
    for lo, hi in normalize([*node.ranges, SURROGATES]):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return Chars(tuple(out))


def intersect(a: Chars, b: Chars) -> Chars:
    out = []
    for lo, hi in a.ranges:
        for blo, bhi in b.ranges:
            if max(lo, blo) <= min(hi, bhi):
                out.append((max(lo, blo), min(hi, bhi)))
    return chars(out)


def literal(text: str) -> Node:
    """Exactly ``text``."""
    if len(text) == 1:
        return Chars(((ord(text), ord(text)),))
    return Concat(tuple(Chars(((ord(c), ord(c)),)) for c in text))


def seq(*items: Node) -> Node:
    """Concatenation, flattened; an empty-language item makes the whole empty."""
    flat: list[Node] = []
    for item in items:
        if isinstance(item, Concat):
            flat.extend(item.items)
        elif is_nothing(item):
            return NOTHING
        else:
            flat.append(item)
    return flat[0] if len(flat) == 1 else Concat(tuple(flat))


def alt(*items: Node) -> Node:
    """Alternation, flattened; empty-language items dropped."""
    flat: list[Node] = []
    for item in items:
        if isinstance(item, Alt):
            flat.extend(item.items)
        elif not is_nothing(item):
            flat.append(item)
    return flat[0] if len(flat) == 1 else Alt(tuple(flat))


def repeat(item: Node, low: int, high: int | None) -> Node:
    if high is not None and high < low:
        return NOTHING
    if high == 0:
        return EMPTY
    if low == high == 1:
        return item
    return Repeat(item, low, high)


def optional(item: Node) -> Node:
    return repeat(item, 0, 1)


def is_nothing(node: Node) -> bool:
    """Whether the node certainly matches nothing (structurally: an empty class or alternation inside)."""
    if isinstance(node, Chars):
        return not node.ranges
    if isinstance(node, Alt):
        return all(is_nothing(item) for item in node.items)
    if isinstance(node, Concat):
        return any(is_nothing(item) for item in node.items)
    return node.low > 0 and is_nothing(node.item)
