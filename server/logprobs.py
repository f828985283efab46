"""Logprobs in OpenAI's two shapes: legacy completions (tokens / token_logprobs / top_logprobs / text_offset)
and chat (content: [{token, logprob, bytes, top_logprobs}]).

A token is described by its exact bytes (from the vocabulary, ``Logprob.token_bytes``), not by its decoded
text: part of a UTF-8 character keeps its real bytes and is shown as ``bytes:\\xNN`` (OpenAI's form), so
distinct tokens get distinct names; without a tokenizer a token is ``token_id:N`` (vLLM's form).
"""

from __future__ import annotations

import codecs
import math
from typing import Callable, Sequence

from pegboard.core.outputs import PositionLogprobs

MIN_LOGPROB = -9999.0  # JSON has no -inf (vLLM clamps the same way)

BytesOf = Callable[[int], "bytes | None"]  # token id -> its exact bytes (None without a tokenizer)


def token_bytes(token_id: int, entry: PositionLogprobs | None, bytes_of: BytesOf) -> bytes | None:
    """A token's bytes: the engine's, when the position's logprobs carry them, else ``bytes_of(token_id)``."""
    logprob = entry.get(token_id) if entry else None
    if logprob is not None and logprob.token_bytes is not None:
        return logprob.token_bytes
    return bytes_of(token_id)


def token_name(token_id: int, data: bytes | None) -> str:
    """A token as text: its bytes when they are whole UTF-8 characters, else ``bytes:\\xNN...``."""
    if data is None:
        return f"token_id:{token_id}"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{byte:02x}" for byte in data)


class TextOffset:
    """Where the next token starts in the text, in characters, counted from the tokens' bytes (a character split
    over several tokens counts once, with its last byte)."""

    def __init__(self) -> None:
        self.chars = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def advance(self, token_id: int, data: bytes | None) -> None:
        self.chars += len(self._utf8.decode(data)) if data is not None else len(token_name(token_id, None))


def completion_logprobs(token_ids: Sequence[int], positions: Sequence[PositionLogprobs | None], offset: TextOffset,
                        bytes_of: BytesOf, by_id: bool = False) -> dict[str, list]:
    """The legacy ``logprobs`` object of some tokens, starting (and advancing) at text ``offset``; ``by_id``
    names every token ``token_id:N`` (vLLM's return_tokens_as_token_ids)."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    for token_id, entry in zip(token_ids, positions):
        data = token_bytes(token_id, entry, bytes_of)
        tokens.append(token_name(token_id, None if by_id else data))
        text_offset.append(offset.chars)
        offset.advance(token_id, data)
        if entry is None:  # the first prompt token has no logprob
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(_finite(entry[token_id].logprob))
        top_logprobs.append(_top_by_name(entry, bytes_of, by_id))
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}


def _top_by_name(entry: PositionLogprobs, bytes_of: BytesOf, by_id: bool) -> dict[str, float]:
    """{token name: logprob} for every token of a position; a token whose bytes another token already has (two
    vocabulary entries with one spelling) is keyed ``token_id:N``, so no alternative is lost."""
    top: dict[str, float] = {}
    for token_id, logprob in entry.items():
        name = token_name(token_id, None if by_id else token_bytes(token_id, entry, bytes_of))
        top[token_name(token_id, None) if name in top else name] = _finite(logprob.logprob)
    return top


def merge_completion_logprobs(first: dict[str, list], second: dict[str, list]) -> dict[str, list]:
    """Two legacy logprobs objects one after the other (an echoed prompt, then the completion)."""
    return {key: first[key] + second[key] for key in first}


def chat_logprobs(token_ids: Sequence[int], positions: Sequence[PositionLogprobs], top_k: int,
                  bytes_of: BytesOf, by_id: bool = False) -> list[dict[str, object]]:
    """The chat ``logprobs.content`` list of some tokens, each with its ``top_k`` most likely alternatives
    (``by_id``: named ``token_id:N``)."""
    content = []
    for token_id, entry in zip(token_ids, positions):
        best = sorted(entry.items(), key=lambda item: -item[1].logprob)[:top_k]
        content.append({**_chat_token(token_id, entry, bytes_of, by_id),
                        "top_logprobs": [_chat_token(t, entry, bytes_of, by_id) for t, _ in best]})
    return content


def _chat_token(token_id: int, entry: PositionLogprobs, bytes_of: BytesOf, by_id: bool) -> dict[str, object]:
    data = token_bytes(token_id, entry, bytes_of)
    return {"token": token_name(token_id, None if by_id else data), "logprob": _finite(entry[token_id].logprob),
            "bytes": None if data is None else list(data)}


def prompt_logprobs(positions: Sequence[PositionLogprobs | None]) -> list[dict[str, dict] | None]:
    """vLLM's ``prompt_logprobs``: per prompt position (the first has none) {token id: {logprob, rank,
    decoded_token}} for the prompt's token and the top alternatives."""
    return [None if entry is None else {str(t): {"logprob": _finite(lp.logprob), "rank": lp.rank,
                                                 "decoded_token": lp.decoded_token} for t, lp in entry.items()}
            for entry in positions]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else MIN_LOGPROB
