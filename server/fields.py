"""Typed reads of a JSON request body's fields; every error is a 400 naming the field.

A field that is absent or ``null`` takes its default, as in OpenAI's API. Integers must be JSON integers
(``true`` is not 1), numbers must be finite.
"""

from __future__ import annotations

import math
from typing import Any

from pegboard.core.errors import InvalidParameterError

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def is_int(value: object) -> bool:
    """A JSON integer (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite JSON number (not a boolean)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return is_int(value)


def invalid(name: str, message: str) -> InvalidParameterError:
    """A 400 error about field ``name``."""
    return InvalidParameterError(f"'{name}' {message}", param=name)


def get_int(body: dict[str, Any], name: str, default: int | None = None, *, lo: int = INT64_MIN,
            hi: int = INT64_MAX) -> int | None:
    """An integer field in [lo, hi]."""
    value = body.get(name)
    if value is None:
        return default
    if not is_int(value) or not lo <= value <= hi:
        raise invalid(name, f"must be an integer in [{lo}, {hi}], got {_show(value)}")
    return value


def get_number(body: dict[str, Any], name: str, default: float, *, lo: float = -math.inf, hi: float = math.inf,
               lo_open: bool = False) -> float:
    """A finite number field in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    value = body.get(name)
    if value is None:
        return default
    if not is_number(value) or not (lo < value if lo_open else lo <= value) or value > hi:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise invalid(name, f"must be a number in {interval}, got {_show(value)}")
    return float(value)


def get_bool(body: dict[str, Any], name: str, default: bool) -> bool:
    """A boolean field."""
    return _typed(body, name, default, bool, "a boolean")


def get_str(body: dict[str, Any], name: str, default: str | None = None) -> str | None:
    """A string field."""
    return _typed(body, name, default, str, "a string")


def get_object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A JSON object field."""
    return _typed(body, name, None, dict, "an object")


def _typed(body: dict[str, Any], name: str, default: Any, kind: type, what: str) -> Any:
    """The field if it is a ``kind``, ``default`` when absent or null, else a 400 naming it."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise invalid(name, f"must be {what}, got {_show(value)}")
    return value


def get_token_ids(body: dict[str, Any], name: str, vocab_size: int) -> list[int] | None:
    """A list of token ids, each in [0, vocab_size)."""
    value = body.get(name)
    if value is None:
        return None
    if not is_token_ids(value, vocab_size):
        raise invalid(name, f"must be a list of token ids in [0, {vocab_size})")
    return value


def is_token_ids(value: object, vocab_size: int) -> bool:
    """A list of integers in [0, vocab_size)."""
    return isinstance(value, list) and all(is_int(t) and 0 <= t < vocab_size for t in value)


def _show(value: object) -> str:
    """A short rendering of a bad value for an error message."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__.replace("dict", "object")
    return text if len(text) <= 40 else text[:37] + "..."
