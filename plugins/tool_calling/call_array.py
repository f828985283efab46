"""The output of a required tool choice, a JSON array of calls, read into tool calls as it is generated."""

from __future__ import annotations

import json
from typing import Any

from pegboard.core.tool_calls import ParsedToolCall, ToolParse


class CallArray:
    """The output of a required tool choice, ``[{"name": N, "parameters": {...}}, ...]``, read as it grows: a call
    once its name is known, then its parameters' text as it is generated (the call's arguments). The grammar keeps
    the text to the schema; what follows the last complete call (an item cut off by max_tokens, text no grammar
    shaped) comes out as content at the end."""

    def __init__(self) -> None:
        self.text = ""
        self.depth = 0  # 1: in the array, 2: in an item, 3+: inside an item's value
        self.in_string = False
        self.escaped = False
        self.used = 0  # the text up to the end of the last call
        self._new_item()

    def _new_item(self) -> None:
        self.key: str | None = None  # the item's key whose value is being read
        self.expect_key = True
        self.string_start = self.value_start = -1
        self.name: str | None = None
        self.args_start = self.args_end = -1
        self.args_sent = -1  # -1: the call is not given out yet

    def feed(self, text: str) -> ToolParse:
        start, self.text = len(self.text), self.text + text
        calls: list[ParsedToolCall] = []
        for i in range(start, len(self.text)):
            self._scan(i, calls)
        self._give(calls, len(self.text))
        return ToolParse("", tuple(calls))

    def finish(self) -> ToolParse:
        rest = self.text[self.used:]
        return ToolParse(rest if rest.strip(" \t\n\r,]") else "")

    def _scan(self, i: int, calls: list[ParsedToolCall]) -> None:
        char = self.text[i]
        if self.in_string:
            if char == '"' and not self.escaped:
                self.in_string = False
                if self.depth == 2:
                    self._string_ended(i + 1)
            self.escaped = not self.escaped and char == "\\"
            return
        if self.depth == 2 and self.key is not None and self.value_start < 0 and char not in " \t\n\r:":
            self.value_start = i  # a value of the item begins
            if self.key == "parameters":
                self.args_start = i
        if char == '"':
            self.in_string = True
            self.string_start = i
        elif char in "[{":
            self.depth += 1
        elif char in "]}":
            self.depth -= 1
            if self.depth == 2:  # a value that is an object or an array closed
                self._value_ended(i + 1)
            elif self.depth == 1:  # the item closed
                self._value_ended(i)
                self._item_ended(i + 1, calls)
        elif char == "," and self.depth == 2:
            self._value_ended(i)
            self.expect_key = True

    def _string_ended(self, end: int) -> None:
        if self.expect_key:
            self.key, self.expect_key = _json(self.text[self.string_start:end]), False
        else:
            self._value_ended(end)

    def _value_ended(self, end: int) -> None:
        if self.key is None or self.value_start < 0:
            return
        value = self.text[self.value_start:end].rstrip()
        if self.key == "name" and isinstance(_json(value), str):
            self.name = _json(value)
        elif self.key == "parameters":
            self.args_end = self.value_start + len(value)
        self.key, self.value_start = None, -1

    def _item_ended(self, end: int, calls: list[ParsedToolCall]) -> None:
        if self.name is not None:
            if self.args_start < 0:  # no parameters given: none
                self.args_start = self.args_end = end
                calls.append(ParsedToolCall(self.name, "{}"))
                self.args_sent = end
            self._give(calls, end)
            self.used = end
        self._new_item()

    def _give(self, calls: list[ParsedToolCall], upto: int) -> None:
        """The call (once its name is known) and its arguments' text generated so far."""
        if self.name is None or self.args_start < 0:
            return
        end = self.args_end if self.args_end >= 0 else upto
        if self.args_sent < 0:
            calls.append(ParsedToolCall(self.name, self.text[self.args_start:end]))
        elif end > self.args_sent:
            calls.append(ParsedToolCall(None, self.text[self.args_sent:end]))
        self.args_sent = max(self.args_sent, end)


def _json(text: str) -> Any:
    """The value a JSON text spells, or None."""
    try:
        return json.loads(text)
    except ValueError:
        return None
