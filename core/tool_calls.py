"""What a tool parser finds in a choice's text: content, and tool calls (a function's name and its arguments as
JSON text, possibly in pieces), as frozen messages from the parser (core/interfaces.py: ToolParser) to the server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParsedToolCall:
    """One call the model made, the function's name and (the first piece of) its arguments, a JSON text; a piece
    without a name continues the arguments of the call before it (a parser may stream them)."""

    name: str | None
    arguments: str


@dataclass(frozen=True)
class ToolParse:
    """The content and the tool calls (or pieces of their arguments) one piece of text yields."""

    content: str = ""
    calls: tuple[ParsedToolCall, ...] = ()
