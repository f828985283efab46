"""A chat choice's text as OpenAI's message parts: content, or ``tool_calls`` (each ``{"index", "id", "type":
"function", "function": {"name", "arguments"}}``, arguments a JSON text), streamed as OpenAI streams them.

A named tool choice streams the output as the one call's arguments, the first delta carrying its id and name;
required and auto give out each call when it is complete (required: an item of the JSON array the grammar
enforced; auto: what the server's tool parser finds).
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
        calls = [self._call(call) for call in parsed.calls if self.plan.parallel or self.calls == 0]
        if calls:
            delta["tool_calls"] = calls
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
    """A whole choice's message from its one delta: content null when it made calls and said nothing else."""
    calls = delta.get("tool_calls")
    if not calls:
        return {"role": role, "content": delta.get("content", "")}
    return {"role": role, "content": delta.get("content") or None, "tool_calls": calls}


class CallArray:
    """The output of a required tool choice, ``[{"name": N, "parameters": {...}}, ...]``: each item a call once
    it closes. The grammar keeps the text to the schema; what is not a call (an item cut off by max_tokens, text
    no grammar shaped) comes out as content at the end, never dropped."""

    def __init__(self) -> None:
        self.text = ""
        self.scanned = 0
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.item_start = -1
        self.used = 0  # the text up to the end of the last call

    def feed(self, text: str) -> ToolParse:
        self.text += text
        calls = []
        for i in range(self.scanned, len(self.text)):
            char = self.text[i]
            if self.in_string:
                self.in_string = char != '"' or self.escaped
                self.escaped = not self.escaped and char == "\\"
            elif char == '"':
                self.in_string = True
            elif char in "[{":
                self.depth += 1
                if self.depth == 2:
                    self.item_start = i
            elif char in "]}":
                self.depth -= 1
                if self.depth == 1 and self.item_start >= 0:
                    call = _call_of(self.text[self.item_start:i + 1])
                    if call is not None:
                        calls.append(call)
                        self.used = i + 1
                    self.item_start = -1
        self.scanned = len(self.text)
        return ToolParse("", tuple(calls))

    def finish(self) -> ToolParse:
        rest = self.text[self.used:] if self.used else self.text
        return ToolParse(rest if rest.strip(" \t\n\r,]") else "")


def _call_of(item: str) -> ParsedToolCall | None:
    """The call one array item spells, or None."""
    try:
        value = json.loads(item)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    return ParsedToolCall(value["name"], json.dumps(value.get("parameters", {}), ensure_ascii=False))
