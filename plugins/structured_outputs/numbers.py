"""Decimal numbers within bounds as regex_ast trees: integers in any range, JSON numbers between integer bounds."""

from __future__ import annotations

from pegboard.plugins.structured_outputs import regex_ast as ra

DIGIT = ra.chars([(48, 57)])
NONZERO = ra.chars([(49, 57)])
FRACTION = ra.seq(ra.literal("."), ra.repeat(DIGIT, 1, None))
ZERO_FRACTION = ra.seq(ra.literal("."), ra.repeat(ra.literal("0"), 1, None))
NONZERO_FRACTION = ra.seq(ra.literal("."), ra.repeat(DIGIT, 0, None), NONZERO, ra.repeat(DIGIT, 0, None))
EXPONENT = ra.seq(ra.char_set("eE"), ra.optional(ra.char_set("+-")), ra.repeat(DIGIT, 1, None))
NATURAL = ra.alt(ra.literal("0"), ra.seq(NONZERO, ra.repeat(DIGIT, 0, None)))
INTEGER = ra.seq(ra.optional(ra.literal("-")), NATURAL)
NUMBER = ra.seq(INTEGER, ra.optional(FRACTION), ra.optional(EXPONENT))


def _digits(lo: str, hi: str) -> ra.Node:
    """Digit strings of one length from lo to hi (inclusive, lo <= hi)."""
    if not lo:
        return ra.EMPTY
    rest = len(lo) - 1
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return ra.seq(ra.chars([(ord(lo[0]), ord(hi[0]))]), ra.repeat(DIGIT, rest, rest))
    if lo[0] == hi[0]:
        return ra.seq(ra.literal(lo[0]), _digits(lo[1:], hi[1:]))
    parts = [ra.seq(ra.literal(lo[0]), _digits(lo[1:], "9" * rest))]
    if ord(hi[0]) - ord(lo[0]) > 1:
        parts.append(ra.seq(ra.chars([(ord(lo[0]) + 1, ord(hi[0]) - 1)]), ra.repeat(DIGIT, rest, rest)))
    parts.append(ra.seq(ra.literal(hi[0]), _digits("0" * rest, hi[1:])))
    return ra.alt(*parts)


def natural_range(lo: int, hi: int | None) -> ra.Node:
    """Canonical decimals (no leading zeros) of the integers lo..hi, lo >= 0 (hi None: unbounded)."""
    if hi is not None and hi < lo:
        return ra.NOTHING
    parts = []
    length = len(str(lo))
    top = len(str(hi)) if hi is not None else length
    for n in range(length, top + 1):
        a = max(lo, 10 ** (n - 1) if n > 1 else 0)
        b = 10 ** n - 1 if hi is None else min(hi, 10 ** n - 1)
        if a <= b:
            parts.append(_digits(str(a).zfill(n), str(b).zfill(n)))
    if hi is None:  # every longer number
        parts.append(ra.seq(NONZERO, ra.repeat(DIGIT, length, None)))
    return ra.alt(*parts)


def integer_range(lo: int | None, hi: int | None) -> ra.Node:
    """Integers lo..hi (None: unbounded on that side) in canonical JSON form."""
    parts = []
    if hi is None or hi >= 0:
        parts.append(natural_range(max(lo or 0, 0) if lo is not None else 0, hi))
    if lo is None or lo < 0:  # negatives: magnitudes max(1, -hi)..-lo
        low = max(1, -hi) if hi is not None else 1
        parts.append(ra.seq(ra.literal("-"), natural_range(low, -lo if lo is not None else None)))
    return ra.alt(*parts)


def _magnitude(low: int, low_exclusive: bool, high: int | None, high_exclusive: bool) -> ra.Node:
    """Non-negative decimals m (integer part, optional fraction) with low <(=) m <(=) high."""
    frac = ra.optional(FRACTION)
    parts = [ra.seq(natural_range(low + low_exclusive, None if high is None else high - 1), frac)]
    if low_exclusive and (high is None or high > low):
        parts.append(ra.seq(natural_range(low, low), NONZERO_FRACTION))
    if high is not None and not high_exclusive and (high > low or (high == low and not low_exclusive)):
        parts.append(ra.seq(natural_range(high, high), ra.optional(ZERO_FRACTION)))
    return ra.alt(*parts)


def number_range(lo: int | None, lo_exclusive: bool, hi: int | None, hi_exclusive: bool) -> ra.Node:
    """JSON numbers between integer bounds (no exponent: a bounded number is written out)."""
    parts = []
    if hi is None or hi > 0 or (hi == 0 and not hi_exclusive):
        low, excl = (0, False) if lo is None or lo < 0 else (lo, lo_exclusive)
        parts.append(_magnitude(low, excl, hi, hi_exclusive))
    if lo is None or lo < 0:  # x = -m with -hi <(=) m <(=) -lo
        low, excl = (0, False) if hi is None or hi > 0 else (-hi, hi_exclusive)
        parts.append(ra.seq(ra.literal("-"), _magnitude(low, excl, None if lo is None else -lo, lo_exclusive)))
    return ra.alt(*parts)
