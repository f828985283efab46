"""A regular-expression parser (the Python / ECMAScript syntax that JSON-schema patterns and lark terminals use)
into regex_ast trees. Only regular features: backreferences, lookarounds, word boundaries and inline flags are
refused with an error naming them. ``\\d``, ``\\w`` and ``\\s`` are ASCII, as in ECMAScript."""

from __future__ import annotations

import re

from pegboard.core.errors import InvalidParameterError
from pegboard.plugins.structured_outputs import regex_ast as ra

DIGIT = ra.chars([(48, 57)])
WORD = ra.chars([(48, 57), (65, 90), (97, 122), (95, 95)])
SPACE = ra.char_set(" \t\n\r\f\v")
ANY_BUT_NEWLINE = ra.complement(ra.char_set("\n"))
CLASS_ESCAPES = {"d": DIGIT, "w": WORD, "s": SPACE,
                 "D": ra.complement(DIGIT), "W": ra.complement(WORD), "S": ra.complement(SPACE)}
CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0", "a": "\a"}
_BOUNDS = re.compile(r"\{(?P<low>\d*)(?P<comma>,(?P<high>\d*))?\}(?<!\{\})(?<!\{,\})")  # {n} {n,} {n,m} {,m}
UNSUPPORTED_ESCAPES = {"b": "word boundaries (\\b)", "B": "word boundaries (\\B)", "G": "\\G", "K": "\\K"}


class RegexError(InvalidParameterError):
    """A regex that cannot be parsed, or uses a feature no DFA has."""


def parse_regex(pattern: str, *, param: str = "regex") -> ra.Node:
    """The language of ``pattern`` (matched as a whole: a leading ``^`` and trailing ``$`` change nothing)."""
    if not isinstance(pattern, str):
        raise RegexError(f"a regex must be a string, got {type(pattern).__name__}", param=param)
    return _Parser(pattern, param).parse()


class _Parser:
    def __init__(self, text: str, param: str) -> None:
        self.text, self.pos, self.param = text, 0, param

    def fail(self, message: str) -> RegexError:
        return RegexError(f"regex {self.text!r}: {message} (at position {self.pos})", param=self.param)

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def take(self) -> str:
        if self.pos >= len(self.text):
            raise self.fail("unexpected end")
        self.pos += 1
        return self.text[self.pos - 1]

    def parse(self) -> ra.Node:
        if self.text.startswith("^"):
            self.pos = 1
        node = self.alternation()
        if self.pos < len(self.text):
            raise self.fail("unbalanced ')'")
        return node

    def alternation(self) -> ra.Node:
        branches = [self.concatenation()]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.concatenation())
        return ra.alt(*branches) if len(branches) > 1 else branches[0]

    def concatenation(self) -> ra.Node:
        items: list[ra.Node] = []
        while self.peek() not in (None, "|", ")"):
            if self.peek() == "$" and self.pos == len(self.text) - 1:
                self.pos += 1
                break
            items.append(self.quantified(self.atom()))
        return ra.seq(*items) if items else ra.EMPTY

    def quantified(self, node: ra.Node) -> ra.Node:
        while True:
            c = self.peek()
            if c == "*":
                low, high = 0, None
            elif c == "+":
                low, high = 1, None
            elif c == "?":
                low, high = 0, 1
            elif c == "{" and _BOUNDS.match(self.text, self.pos):
                bounds = _BOUNDS.match(self.text, self.pos)
                low = int(bounds["low"] or 0)
                high = low if bounds["comma"] is None else (int(bounds["high"]) if bounds["high"] else None)
                self.pos = bounds.end() - 1
            else:
                return node
            self.pos += 1
            if self.peek() == "?":  # lazy: the same language
                self.pos += 1
            elif self.peek() == "+":
                raise self.fail("possessive quantifiers are not supported")
            node = _checked_repeat(self, node, low, high)

    def atom(self) -> ra.Node:
        c = self.take()
        if c == "(":
            return self.group()
        if c == "[":
            return self.char_class()
        if c == ".":
            return ANY_BUT_NEWLINE
        if c == "\\":
            return self.escape(in_class=False)
        if c in "*+?":
            raise self.fail(f"nothing to repeat before {c!r}")
        if c == "^":
            raise self.fail("'^' is only supported at the start")
        if c == "$":
            raise self.fail("'$' is only supported at the end")
        return ra.literal(c)

    def group(self) -> ra.Node:
        if self.peek() == "?":
            self.pos += 1
            kind = self.take()
            if kind == ":":
                pass
            elif kind == "P" and self.peek() == "<" or kind == "<" and self.peek() not in ("=", "!"):
                close = self.text.find(">", self.pos)
                if close < 0:
                    raise self.fail("unterminated group name")
                self.pos = close + 1
            elif kind in "=!" or kind == "<":
                raise self.fail("lookaround assertions are not supported")
            elif kind == "P" and self.peek() == "=":
                raise self.fail("backreferences are not supported")
            else:
                raise self.fail(f"inline flags and (?{kind}...) groups are not supported")
        node = self.alternation()
        if self.peek() != ")":
            raise self.fail("missing ')'")
        self.pos += 1
        return node

    def escape(self, *, in_class: bool) -> ra.Chars:
        c = self.take()
        if c in CLASS_ESCAPES:
            return CLASS_ESCAPES[c]
        if c in CHAR_ESCAPES and not (c == "0" and self.peek() and self.peek().isdigit()):
            return ra.char_set(CHAR_ESCAPES[c])
        if c == "b" and in_class:
            return ra.char_set("\b")
        if c in UNSUPPORTED_ESCAPES:
            raise self.fail(f"{UNSUPPORTED_ESCAPES[c]} are not supported")
        if c.isdigit():
            raise self.fail("backreferences are not supported")
        if c in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[c]
            if c == "u" and self.peek() == "{":
                end = self.text.index("}", self.pos)
                digits, self.pos = self.text[self.pos + 1:end], end + 1
            else:
                digits, self.pos = self.text[self.pos:self.pos + width], self.pos + width
            try:
                code = int(digits, 16)
            except ValueError:
                raise self.fail(f"bad \\{c} escape") from None
            return ra.chars([(code, code)])
        if c.isalpha():
            raise self.fail(f"unknown escape \\{c}")
        return ra.char_set(c)

    def char_class(self) -> ra.Chars:
        negate = self.peek() == "^"
        if negate:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.take()
            if c == "]" and not first:
                break
            first = False
            if c == "\\":
                item = self.escape(in_class=True)
            elif c == "[" and self.peek() == ":":
                raise self.fail("POSIX classes [:name:] are not supported")
            else:
                item = ra.char_set(c)
            if self.peek() == "-" and self.pos + 1 < len(self.text) and self.text[self.pos + 1] != "]":
                if len(item.ranges) != 1 or item.ranges[0][0] != item.ranges[0][1]:
                    raise self.fail("a class escape cannot start a range")
                self.pos += 1
                end_char = self.take()
                end = self.escape(in_class=True) if end_char == "\\" else ra.char_set(end_char)
                if len(end.ranges) != 1 or end.ranges[0][0] != end.ranges[0][1]:
                    raise self.fail("a class escape cannot end a range")
                lo, hi = item.ranges[0][0], end.ranges[0][0]
                if hi < lo:
                    raise self.fail("a range out of order")
                ranges.append((lo, hi))
            else:
                ranges.extend(item.ranges)
        node = ra.chars(ranges)
        return ra.complement(node) if negate else node


def _checked_repeat(parser: _Parser, node: ra.Node, low: int, high: int | None) -> ra.Node:
    if high is not None and high < low:
        raise parser.fail(f"bad repetition {{{low},{high}}}")
    return ra.repeat(node, low, high)
