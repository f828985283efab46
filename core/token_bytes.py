"""A token's exact bytes, read from the tokenizer's vocabulary rather than from its decoded text (which turns
part of a UTF-8 character into U+FFFD).

The vocabulary kind comes from the tokenizer's decoder, the way grammar engines (xgrammar, llguidance) read
it: a byte-level decoder (GPT-2 style BPE) spells each byte as one character of a 256-character alphabet; a
byte-fallback decoder (sentencepiece style) spells a byte as ``<0xNN>`` and a space as ``▁``; any other
vocabulary is taken as its decoded text.
"""

from __future__ import annotations

import json
import re
from typing import Any

BYTE_LEVEL, BYTE_FALLBACK, TEXT = "byte_level", "byte_fallback", "text"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-character table, inverted: printable Latin-1 bytes spell themselves, the rest U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {byte: chr(byte) for byte in printable}
    others = (byte for byte in range(256) if byte not in chars)
    chars.update({byte: chr(256 + i) for i, byte in enumerate(others)})
    return {char: byte for byte, char in chars.items()}


BYTE_OF_CHAR = _byte_level_alphabet()


def _decoder_steps(decoder: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A decoder's steps, a Sequence flattened."""
    if not decoder:
        return []
    if decoder.get("type") == "Sequence":
        return [step for inner in decoder.get("decoders", []) for step in _decoder_steps(inner)]
    return [decoder]


def _space(steps: list[dict[str, Any]]) -> str:
    """The character a byte-fallback vocabulary writes a space as (``▁`` unless its decoder says otherwise)."""
    for step in steps:
        if step.get("type") == "Metaspace":
            return step.get("replacement", "▁")
        if step.get("type") == "Replace" and step.get("content") == " ":
            return step.get("pattern", {}).get("String", "▁")
    return "▁"


def vocabulary_kind(tokenizer: Any) -> tuple[str, str]:
    """(kind, the character that stands for a space in a byte-fallback vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast (Rust) tokenizer: read its decoder's configuration
        decoder = backend.decoder
        steps = _decoder_steps(json.loads(decoder.__getstate__()) if decoder is not None else None)
        kinds = {step.get("type") for step in steps}
        if "ByteLevel" in kinds:
            return BYTE_LEVEL, "▁"
        if kinds & {"ByteFallback", "Metaspace"}:
            return BYTE_FALLBACK, _space(steps)
        return TEXT, "▁"
    if hasattr(tokenizer, "byte_decoder"):  # a slow GPT-2 style tokenizer
        return BYTE_LEVEL, "▁"
    if hasattr(tokenizer, "sp_model"):  # a slow sentencepiece tokenizer
        return BYTE_FALLBACK, "▁"
    return TEXT, "▁"


class TokenBytes:
    """token id -> the bytes the token adds to a text (cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.kind, self.space = vocabulary_kind(tokenizer)
        self._cache: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        found = self._cache.get(token_id)
        if found is None:
            found = self._cache[token_id] = self._read(token_id)
        return found

    def _read(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, bytes):  # tiktoken-backed tokenizers hand out bytes already
            return piece
        if piece is None or self.kind == TEXT:
            return self.tokenizer.decode([token_id]).encode("utf-8")
        if self.kind == BYTE_LEVEL:
            if all(char in BYTE_OF_CHAR for char in piece):
                return bytes(BYTE_OF_CHAR[char] for char in piece)
            return piece.encode("utf-8")  # an added token, kept as written (as the byte-level decoder does)
        byte = _BYTE_TOKEN.fullmatch(piece)
        if byte is not None:
            return bytes([int(byte.group(1), 16)])
        return piece.replace(self.space, " ").encode("utf-8")
