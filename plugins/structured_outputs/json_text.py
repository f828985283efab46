"""JSON text as regex_ast: the whitespace allowed between tokens, string characters, escapes and formats."""

from __future__ import annotations

from pegboard.plugins.structured_outputs import regex_ast as ra

MAX_BLANKS = 2  # spaces or tabs in a run of whitespace between tokens, before its newline
MAX_INDENT = 12  # spaces or tabs after the newline: 4-space indentation 3 levels deep
_BLANK = ra.char_set(" \t")
# Every run is bounded: greedy SmolLM2 wrote "[" then newlines to max_tokens under [ \n\t]*, and then tabs to
# max_tokens under [ \t]*(\n[ \t]*)? (tests/structured/check_served.py). The bound costs DFA states: 80% more
# over the 80 test schemas (19,564 -> 35,182; the largest 1,147 -> 2,754).
WHITESPACE = ra.seq(ra.repeat(_BLANK, 0, MAX_BLANKS),
                    ra.optional(ra.seq(ra.literal("\n"), ra.repeat(_BLANK, 0, MAX_INDENT))))

_HEX = ra.chars([(48, 57), (65, 70), (97, 102)])
_MUST_ESCAPE = ra.chars([(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])  # control characters, '"' and '\\'
_PLAIN = ra.complement(_MUST_ESCAPE)  # written as itself in a JSON string
_ESCAPE = ra.seq(ra.literal("\\"), ra.alt(ra.char_set('"\\/bfnrt'), ra.seq(ra.literal("u"), ra.repeat(_HEX, 4, 4))))
STRING_CHAR = ra.alt(_PLAIN, _ESCAPE)
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

FORMATS = {  # the regular string formats (RFC 3339 dates and times, RFC 4122 uuids, dotted IPv4, simple emails)
    "date": r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    "time": r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])",
    "date-time": r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)"
                 r"(\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "ipv4": r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    "email": r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63}){1,8}",
}


def escape_in_string(node: ra.Node) -> ra.Node:
    """A tree over decoded string characters -> the same strings as written inside JSON quotes."""
    if isinstance(node, ra.Chars):
        special = ra.intersect(node, _MUST_ESCAPE)
        escapes = [ra.literal(_SHORT.get(chr(c), f"\\u{c:04x}")) for lo, hi in special.ranges for c in range(lo, hi + 1)]
        return ra.alt(ra.intersect(node, _PLAIN), *escapes)
    if isinstance(node, ra.Concat):
        return ra.seq(*(escape_in_string(item) for item in node.items))
    if isinstance(node, ra.Alt):
        return ra.alt(*(escape_in_string(item) for item in node.items))
    return ra.repeat(escape_in_string(node.item), node.low, node.high)

