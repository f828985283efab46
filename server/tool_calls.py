"""A chat choice's text as OpenAI's message parts: content, or ``tool_calls`` (each ``{"index", "id", "type":
"function", "function": {"name", "arguments"}}``, arguments a JSON text), streamed as OpenAI streams them.

A call's first delta carries its index, id, type and name; its arguments follow in that and later deltas of the
same index, as they are generated: a named tool choice's output is the one call's arguments; a required one's is a
JSON array of calls (CallArray); auto's calls are what the server's tool parser finds (the built-in hermes gives
each out whole, when its block closes).
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable

from pegboard.core.interfaces import ToolParser
from pegboard.core.tool_calls import ParsedToolCall, ToolParse
from pegboard.server.tool_choice import ToolPlan

ParserFactory = Callable[..., ToolParser]


def tool_call_id() -> str:
    """A new call's id, vLLM's form."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


class ChoiceTools:
    """One choice's text pieces -> chat deltas (``content`` and/or ``tool_calls``)."""

    def __init__(self, plan: ToolPlan, auto_parser: ParserFactory | None) -> None:
        self.plan = plan
        self.parser: ToolParser | None = None
        if plan.mode == "required":
            self.parser = CallArray()
        elif plan.mode == "auto":
            self.parser = auto_parser(tools=plan.functions)
        self.calls = 0  # calls given out so far
        self.keeping = False  # whether the pieces of the current call are given out

    def delta(self, text: str, finished: bool) -> dict[str, Any]:
        """The delta for the next piece of text (the last piece when ``finished``)."""
        if self.plan.mode == "named":
            return self._named(text)
        if self.parser is None:
            return {"content": text} if text else {}
        parsed = self.parser.feed(text)
        if finished:
            end = self.parser.finish()
            parsed = ToolParse(parsed.content + end.content, parsed.calls + end.calls)
        delta: dict[str, Any] = {"content": parsed.content} if parsed.content else {}
        parts = []
        for call in parsed.calls:
            if call.name is not None:
                self.keeping = self.plan.parallel or self.calls == 0  # parallel_tool_calls false: the first only
                if self.keeping:
                    parts.append(self._call(call))
            elif self.keeping and call.arguments:
                parts.append({"index": self.calls - 1, "function": {"arguments": call.arguments}})
        if parts:
            delta["tool_calls"] = parts
        return delta

    def finish_reason(self, reason: str | None) -> str | None:
        """OpenAI's: "tool_calls" when a required or auto choice made calls and stopped; a named one "stop"."""
        return "tool_calls" if reason == "stop" and self.calls and self.plan.mode != "named" else reason

    def _named(self, text: str) -> dict[str, Any]:
        if self.calls:
            return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]} if text else {}
        return {"tool_calls": [self._call(ParsedToolCall(self.plan.name, text))]}

    def _call(self, call: ParsedToolCall) -> dict[str, Any]:
        self.calls += 1
        return {"index": self.calls - 1, "id": tool_call_id(), "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}}


def message_of(role: str, delta: dict[str, Any]) -> dict[str, Any]:
    """A whole choice's message from its one delta (a call's pieces joined): content null when it made calls and
    said nothing else."""
    calls: dict[int, dict[str, Any]] = {}
    for part in delta.get("tool_calls", []):
        if part["index"] in calls:
            calls[part["index"]]["function"]["arguments"] += part["function"]["arguments"]
        else:
            calls[part["index"]] = {k: v for k, v in part.items() if k != "index"}
    if not calls:
        return {"role": role, "content": delta.get("content", "")}
    return {"role": role, "content": delta.get("content") or None, "tool_calls": list(calls.values())}


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
