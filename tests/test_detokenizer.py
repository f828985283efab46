"""Incremental detokenization: text grows token by token, stop strings cut it, partial UTF-8 waits."""

from __future__ import annotations

from pathlib import Path

import pytest

from pegboard.core.detokenizer import DecodeDiffText, DecodeStreamText, IncrementalDetokenizer, text_source


class ByteTokenizer:
    """Token i is byte i; decoding joins the bytes as UTF-8 (U+FFFD for an incomplete sequence)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def detok(stop: list[str], include: bool = False) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(ByteTokenizer(), list(b"prompt: "), True, stop, include)


def test_text_grows_token_by_token():
    d = detok([])
    for t in b"hello":
        assert d.add_tokens([t]) is None
    assert d.text == "hello"


def test_incomplete_utf8_waits_for_the_rest():
    d = detok([])
    euro = "€".encode()  # three bytes
    d.add_tokens([euro[0]])
    d.add_tokens([euro[1]])
    assert d.text == ""
    d.add_tokens([euro[2]])
    assert d.text == "€"


def test_stop_string_across_tokens_cuts_the_text():
    d = detok(["END"])
    found = [d.add_tokens([t]) for t in b"abcEN"]
    assert found == [None] * 5 and d.safe_text_length(False) == len("abc")  # "EN" may start "END"
    assert d.add_tokens([ord("D")]) == "END" and d.text == "abc"


def test_stop_string_kept_when_asked():
    d = detok(["!"], include=True)
    for t in b"hi!":
        d.add_tokens([t])
    assert d.text == "hi!"


def test_stop_strings_ignored_before_min_tokens_and_text_kept():
    d = detok(["x"])
    assert d.add_tokens([ord("x")], check_stop=False) is None
    assert d.add_tokens([ord("y")]) is None
    assert d.text == "xy"


# ---- SmolLM2's fast tokenizer: DecodeStream, and the hand-written diffs it falls back to -------------------

SMOLLM2_TEXTS = ["Hello, world!", "héllo wörld — 日本語 🤗 ﷽ naïve", "  two spaces\tand\nnewlines",
                 "<|im_start|>assistant\nhi<|im_end|> after", "numbers 1234567 and code: def f(x): return x**2"]


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_gguf: Path):
    from pegboard.core.model_files import ModelFiles
    from pegboard.plugins.loader_gguf import GGUFLoader

    return GGUFLoader().load_tokenizer(ModelFiles(str(smollm2_gguf), "gguf", "smollm2"))


def streamed(tokenizer, source_class, ids: list[int], skip: bool, stop: list[str] = ()) -> IncrementalDetokenizer:
    prompt = tokenizer("<|im_start|>user\nSay it:<|im_end|>\n", add_special_tokens=False).input_ids
    source = source_class(tokenizer.backend_tokenizer if source_class is DecodeStreamText else tokenizer, prompt, skip)
    d = IncrementalDetokenizer(tokenizer, prompt, skip, list(stop), False, source=source)
    for token_id in ids:
        if d.add_tokens([token_id]) is not None:
            break
    return d


def test_a_fast_tokenizer_gets_decode_stream_and_a_plain_one_the_diffs(smollm2_tokenizer):
    assert isinstance(text_source(smollm2_tokenizer, [1, 2], True), DecodeStreamText)
    assert isinstance(text_source(ByteTokenizer(), [1, 2], True), DecodeDiffText)


@pytest.mark.parametrize("source_class", [DecodeStreamText, DecodeDiffText])
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("text", SMOLLM2_TEXTS)
def test_streamed_text_is_the_decode_of_all_tokens(smollm2_tokenizer, source_class, skip, text):
    ids = smollm2_tokenizer(text, add_special_tokens=False).input_ids
    assert streamed(smollm2_tokenizer, source_class, ids, skip).text == smollm2_tokenizer.decode(
        ids, skip_special_tokens=skip)


@pytest.mark.parametrize("source_class", [DecodeStreamText, DecodeDiffText])
def test_a_character_split_across_tokens_waits_for_its_last_byte(smollm2_tokenizer, source_class):
    ids = smollm2_tokenizer("🤗", add_special_tokens=False).input_ids
    assert len(ids) > 1  # byte-level BPE spells the emoji in several tokens
    d = streamed(smollm2_tokenizer, source_class, ids[:-1], True)
    assert d.text == ""
    d.add_tokens(ids[-1:])
    assert d.text == "🤗"


@pytest.mark.parametrize("source_class", [DecodeStreamText, DecodeDiffText])
def test_stop_string_cuts_the_decoded_text(smollm2_tokenizer, source_class):
    ids = smollm2_tokenizer("The answer is 42. Then more text", add_special_tokens=False).input_ids
    d = streamed(smollm2_tokenizer, source_class, ids, True, stop=[". Then"])
    assert d.text == "The answer is 42"
