"""Logprobs describe tokens by their exact bytes: part of a UTF-8 character keeps its real bytes (shown as
``bytes:\\xNN``, OpenAI's form) instead of U+FFFD, so legacy ``top_logprobs`` never merges distinct tokens, and
``text_offset`` counts the characters of the text."""

from __future__ import annotations

import json

from tokenizers import pre_tokenizers

from pegboard.core.outputs import Logprob
from pegboard.core.token_bytes import BYTE_OF_CHAR
from pegboard.server.logprobs import TextOffset, chat_logprobs, completion_logprobs
from tiny_server import connect, serving  # tests/tiny_server.py (conftest puts tests/ on sys.path)

A, EMOJI_HEAD, EMOJI_TAIL, B, EMOJI_HEAD_TWIN = 1, 2, 3, 4, 5
BYTES = {A: b"a", EMOJI_HEAD: b"\xf0\x9f", EMOJI_TAIL: b"\x98\x8a", B: b"b", EMOJI_HEAD_TWIN: b"\xf0\x9f"}


def entry(chosen: int, *others: int) -> dict[int, Logprob]:
    """One position's logprobs: the chosen token first, then alternatives, each with its bytes."""
    return {t: Logprob(-0.5 - i, i + 1, None, BYTES[t]) for i, t in enumerate((chosen, *others))}


def test_a_character_split_over_tokens_keeps_its_bytes_and_counts_once_in_the_offsets():
    ids = [A, EMOJI_HEAD, EMOJI_TAIL, B]  # "a😊b"
    legacy = completion_logprobs(ids, [entry(t) for t in ids], TextOffset(), BYTES.get)
    assert legacy["tokens"] == ["a", "bytes:\\xf0\\x9f", "bytes:\\x98\\x8a", "b"]
    assert legacy["text_offset"] == [0, 1, 1, 2]  # "b" is character 2 of "a😊b"
    chat = chat_logprobs(ids, [entry(t) for t in ids], 1, BYTES.get)
    assert [bytes(token["bytes"]) for token in chat] == [BYTES[t] for t in ids]
    assert b"".join(bytes(token["bytes"]) for token in chat).decode() == "a😊b"


def test_legacy_top_logprobs_keep_every_alternative():
    legacy = completion_logprobs([A], [entry(A, EMOJI_HEAD, EMOJI_TAIL, EMOJI_HEAD_TWIN)], TextOffset(), BYTES.get)
    top = legacy["top_logprobs"][0]
    assert top == {"a": -0.5, "bytes:\\xf0\\x9f": -1.5, "bytes:\\x98\\x8a": -2.5, "token_id:5": -3.5}


def test_offsets_carry_over_from_one_chunk_to_the_next():
    offset = TextOffset()
    first = completion_logprobs([A, EMOJI_HEAD], [entry(A), entry(EMOJI_HEAD)], offset, BYTES.get)
    second = completion_logprobs([EMOJI_TAIL, B], [entry(EMOJI_TAIL), entry(B)], offset, BYTES.get)
    assert first["text_offset"] + second["text_offset"] == [0, 1, 1, 2]


def test_without_a_tokenizer_tokens_are_named_by_id_and_have_no_bytes():
    position = {7: Logprob(-0.1, 1, None, None)}
    assert completion_logprobs([7], [position], TextOffset(), lambda t: None)["tokens"] == ["token_id:7"]
    assert chat_logprobs([7], [position], 0, lambda t: None)[0] == {"token": "token_id:7", "logprob": -0.1,
                                                                    "bytes": None, "top_logprobs": []}


def test_the_server_reports_each_byte_tokens_real_byte(tiny_chat_model):
    """The tiny model's vocabulary is the 256 bytes, so most tokens it samples are parts of characters."""
    byte_of_id = [BYTE_OF_CHAR[char] for char in sorted(pre_tokenizers.ByteLevel.alphabet())]
    with serving(tiny_chat_model) as (url, _):
        chat = json.loads(connect(url, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 5, "max_tokens": 16,
            "temperature": 0, "ignore_eos": True, "return_token_ids": True}).read())["choices"][0]
        for token_id, token in zip(chat["token_ids"], chat["logprobs"]["content"]):
            assert token["bytes"] == [byte_of_id[token_id]]
        assert any(token["token"].startswith("bytes:") for token in chat["logprobs"]["content"])
        legacy = json.loads(connect(url, "/v1/completions", {"prompt": "hi", "logprobs": 5, "max_tokens": 16,
                                                              "temperature": 0, "ignore_eos": True}).read())
        assert all(len(top) == 5 for top in legacy["choices"][0]["logprobs"]["top_logprobs"])  # none merged
