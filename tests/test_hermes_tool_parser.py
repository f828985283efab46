"""The built-in hermes tool parser, alone and as a chat choice streams it: ``<tool_call>{json}</tool_call>``
blocks become calls, the rest content, whatever the pieces the text arrives in."""

from __future__ import annotations

import json

import pytest

from pegboard.core.plugins import load_board
from pegboard.core.tool_calls import ParsedToolCall
from pegboard.plugins.hermes_tool_parser import HermesToolParser
from pegboard.plugins.tool_calling.choice_tools import ChoiceTools, message_of
from pegboard.plugins.tool_calling.tool_choice import ToolPlan

TOOLS = ({"type": "function", "function": {"name": "get_weather"}}, {"type": "function", "function": {"name": "f"}})
TWO_CALLS = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>{"name": "f", "arguments": {}}</tool_call>\n')


def parse_in_pieces(text: str, size: int) -> tuple[str, list[ParsedToolCall]]:
    """(content, calls) of ``text`` fed ``size`` characters at a time."""
    parser = HermesToolParser(tools=[tool["function"] for tool in TOOLS])
    parts = [parser.feed(text[i:i + size]) for i in range(0, len(text), size)] + [parser.finish()]
    return "".join(p.content for p in parts), [call for p in parts for call in p.calls]


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_blocks_become_calls_and_the_rest_content_in_pieces_of_any_size(size):
    content, calls = parse_in_pieces(TWO_CALLS, size)
    assert content == "Let me check."  # the whitespace around calls is not content
    assert calls == [ParsedToolCall("get_weather", '{"city": "Paris"}'), ParsedToolCall("f", "{}")]


@pytest.mark.parametrize("text", ["Plain text, no calls.", "a < b and <tool is not a tag", "ends with <tool_ca",
                                  "trailing spaces   "])
def test_text_without_calls_comes_out_unchanged(text):
    assert parse_in_pieces(text, 1) == (text, [])


def test_a_block_that_is_not_a_call_stays_content():
    text = "<tool_call>not json</tool_call> after"
    assert parse_in_pieces(text, 3) == (text, [])


def test_a_block_cut_off_by_max_tokens_counts_when_its_json_is_complete():
    assert parse_in_pieces('<tool_call>{"name": "f", "arguments": {"a": 1}}', 4)[1] == [
        ParsedToolCall("f", '{"a": 1}')]
    assert parse_in_pieces('<tool_call>{"name": "f", "argu', 4) == ('<tool_call>{"name": "f", "argu', [])


def test_text_that_may_begin_a_tag_waits_for_the_next_piece():
    parser = HermesToolParser(tools=[])
    assert parser.feed("Sure <tool").content == "Sure"
    assert parser.feed('_call>{"name": "f"}').content == ""
    assert parser.feed("</tool_call>").calls == (ParsedToolCall("f", "{}"),)


def test_hermes_is_registered_as_a_builtin():
    assert load_board().tool_parsers.get("hermes") is HermesToolParser


def stream_choice(plan: ToolPlan, text: str, size: int, reason: str = "stop") -> list[dict]:
    """The chat deltas of one choice whose text arrives ``size`` characters at a time, then finishes."""
    tools = ChoiceTools(plan, HermesToolParser)
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    deltas = [tools.delta(piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)]
    assert tools.finish_reason(reason) == ("tool_calls" if reason == "stop" else reason)
    return deltas


def test_auto_streams_each_call_once_with_its_index_id_and_name():
    deltas = stream_choice(ToolPlan("auto", TOOLS), TWO_CALLS, 3)
    calls = [call for delta in deltas for call in delta.get("tool_calls", [])]
    assert [(c["index"], c["type"], c["function"]["name"]) for c in calls] == [
        (0, "function", "get_weather"), (1, "function", "f")]
    assert len({c["id"] for c in calls}) == 2 and all(c["id"].startswith("chatcmpl-tool-") for c in calls)
    assert "".join(d.get("content", "") for d in deltas) == "Let me check."
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}


def test_auto_without_parallel_calls_keeps_the_first():
    deltas = stream_choice(ToolPlan("auto", TOOLS, parallel=False), TWO_CALLS, len(TWO_CALLS), reason="length")
    [delta] = deltas
    assert [c["function"]["name"] for c in delta["tool_calls"]] == ["get_weather"]
    assert message_of("assistant", delta)["content"] == "Let me check."


def test_a_whole_message_of_calls_only_has_null_content():
    [delta] = stream_choice(ToolPlan("auto", TOOLS), TWO_CALLS.split("\n", 1)[1], 10_000)
    message = message_of("assistant", delta)
    assert message["content"] is None and len(message["tool_calls"]) == 2
