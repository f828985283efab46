"""A chat choice's text as OpenAI's message parts: content, or ``tool_calls`` (each ``{"index", "id", "type":
"function", "function": {"name", "arguments"}}``, arguments a JSON text), streamed as OpenAI streams them.

A call's first delta carries its index, id, type and name; its arguments follow in that and later deltas of the
same index, as they are generated: a named tool choice's output is the one call's arguments; a required one's is a
JSON array of calls (call_array.py); auto's calls are what the server's tool parser finds (the built-in hermes gives
each out whole, when its block closes).
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

from pegboard.core.interfaces import ToolParser
from pegboard.core.tool_calls import ParsedToolCall, ToolParse
from pegboard.plugins.tool_calling.call_array import CallArray
from pegboard.plugins.tool_calling.tool_choice import ToolPlan

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
