"""Incremental detokenization: text grows token by token, stop strings cut it, partial UTF-8 waits."""

from __future__ import annotations

from pegboard.core.detokenizer import IncrementalDetokenizer


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
