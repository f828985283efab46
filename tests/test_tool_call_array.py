"""A required tool choice's output, a JSON array of calls, read as it is generated: each call is given out once
its name is known, and its arguments (the ``parameters`` text) follow piece by piece, whatever the pieces."""

from __future__ import annotations

import pytest

from pegboard.core.tool_calls import ParsedToolCall
from pegboard.plugins.tool_calling.call_array import CallArray
from pegboard.plugins.tool_calling.choice_tools import ChoiceTools, message_of
from pegboard.plugins.tool_calling.tool_choice import ToolPlan

ARRAY = ('[{"name": "f", "parameters": {"a": "x]}\\"", "b": [1, {}]}} , '
         '{"parameters" : {"z": null} ,"name":"g"}, {"name": "h"}]')
CALLS = [("f", '{"a": "x]}\\"", "b": [1, {}]}'), ("g", '{"z": null}'), ("h", "{}")]


def assembled(pieces: list[ParsedToolCall]) -> list[tuple[str, str]]:
    """(name, arguments) per call, a nameless piece continuing the call before it."""
    calls: list[list[str]] = []
    for piece in pieces:
        if piece.name is not None:
            calls.append([piece.name, piece.arguments])
        else:
            calls[-1][1] += piece.arguments
    return [tuple(call) for call in calls]


@pytest.mark.parametrize("size", [1, 3, 7, 10_000])
def test_calls_and_their_arguments_assemble_from_pieces_of_any_size(size):
    parser = CallArray()
    pieces = [piece for i in range(0, len(ARRAY), size) for piece in parser.feed(ARRAY[i:i + size]).calls]
    assert assembled(pieces) == CALLS
    assert parser.finish().content == ""


def test_arguments_stream_before_their_call_is_complete():
    parser = CallArray()
    first = parser.feed('[{"name": "f", "parameters": {"city": "Pa')
    assert first.calls == (ParsedToolCall("f", '{"city": "Pa'),)
    assert parser.feed('ris"}}').calls == (ParsedToolCall(None, 'ris"}'),)


def test_what_follows_the_last_complete_call_comes_out_as_content():
    parser = CallArray()
    parser.feed('[{"name": "f", "parameters": {}}, {"name": "g", "param')
    assert parser.finish().content == ', {"name": "g", "param'
    unshaped = CallArray()
    unshaped.feed("Q")
    assert unshaped.finish().content == "Q"


def test_a_streamed_required_choice_gives_each_call_one_header_then_argument_pieces():
    tools = ChoiceTools(ToolPlan("required", ()), None)
    deltas = [tools.delta(ARRAY[i:i + 5], i + 5 >= len(ARRAY)) for i in range(0, len(ARRAY), 5)]
    parts = [part for delta in deltas for part in delta.get("tool_calls", [])]
    headers = [part for part in parts if "id" in part]
    assert [(h["index"], h["type"], h["function"]["name"]) for h in headers] == [
        (0, "function", "f"), (1, "function", "g"), (2, "function", "h")]
    assert all(set(part) == {"index", "function"} for part in parts if "id" not in part)
    assert tools.finish_reason("stop") == "tool_calls"
    merged = message_of("assistant", {"tool_calls": parts})
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in merged["tool_calls"]] == CALLS
    assert merged["content"] is None
