"""The built-in ``hermes`` tool parser (``--tool-call-parser hermes``): tool calls written as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, the format of Hermes, Qwen 2.5/3 and
SmolLM3 chat templates. Text outside the blocks is content; a block that is not such a JSON object stays content."""

from __future__ import annotations

import json
from typing import Any

from pegboard.core.hookspecs import hookimpl
from pegboard.core.tool_calls import ParsedToolCall, ToolParse

START, END = "<tool_call>", "</tool_call>"


class HermesToolParser:
    """Follows one choice's text: content outside ``<tool_call>`` blocks, a call when a block closes. Whitespace
    next to a call is not content (a reply of calls only has no content)."""

    def __init__(self, *, tools: list[dict[str, Any]]) -> None:
        self.pending = ""  # text not given out yet: trailing whitespace, a possible start of a tag, an open block
        self.in_block = False
        self.after_call = False  # no content given out since the last call

    def feed(self, text: str) -> ToolParse:
        self.pending += text
        content, calls = [], []
        while True:
            if self.in_block:
                end = self.pending.find(END)
                if end < 0:
                    break
                content.append(self._block(self.pending[:end], calls, closed=True))
                self.pending, self.in_block = self.pending[end + len(END):], False
                continue
            start = self.pending.find(START)
            if start < 0:
                end = len(self.pending) - _partial_tag(self.pending)
                given, kept = self._outside(self.pending[:end])
                content.append(given)
                self.pending = kept + self.pending[end:]
                break
            content.append(self._outside(self.pending[:start])[0])  # whitespace before a call is dropped
            self.pending, self.in_block = self.pending[start + len(START):], True
        return ToolParse("".join(content), tuple(calls))

    def finish(self) -> ToolParse:
        calls: list[ParsedToolCall] = []
        if self.in_block:  # the text ended inside a block (max_tokens): a complete object still counts
            content = self._block(self.pending, calls, closed=False)
        else:
            content = self.pending.lstrip() if self.after_call else self.pending
        self.pending, self.in_block = "", False
        return ToolParse(content, tuple(calls))

    def _outside(self, text: str) -> tuple[str, str]:
        """(content to give out now, trailing whitespace kept back: a call may follow it) of text outside blocks."""
        if self.after_call:
            text = text.lstrip()
        given = text.rstrip()
        if given:
            self.after_call = False
        return given, text[len(given):]

    def _block(self, body: str, calls: list[ParsedToolCall], *, closed: bool) -> str:
        """A call from one block's JSON body, or the block as content when it is not a call."""
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        arguments = value.get("arguments", {}) if isinstance(value, dict) else None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not isinstance(arguments, dict):
            self.after_call = False
            return START + body + (END if closed else "")
        calls.append(ParsedToolCall(value["name"], json.dumps(arguments, ensure_ascii=False)))
        self.after_call = True
        return ""


def _partial_tag(text: str) -> int:
    """The length of the longest end of ``text`` that begins ``<tool_call>`` (it waits for the next piece)."""
    return next((n for n in range(min(len(START) - 1, len(text)), 0, -1) if START.startswith(text[-n:])), 0)


@hookimpl
def register_tool_parsers(register):
    register("hermes", HermesToolParser)
