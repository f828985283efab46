"""What a tool parser finds in a choice's text: content, and tool calls (a function's name and its arguments as
JSON text), as frozen messages from the parser (core/interfaces.py: ToolParser) to the server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParsedToolCall:
    """One call the model made: the function's name and its arguments, a JSON text."""

    name: str
    arguments: str


@dataclass(frozen=True)
class ToolParse:
    """The content and the complete tool calls one piece of text yields (text that may begin a call waits)."""

    content: str = ""
    calls: tuple[ParsedToolCall, ...] = ()
