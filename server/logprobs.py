"""Logprobs in OpenAI's two shapes: legacy completions (tokens / token_logprobs / top_logprobs / text_offset)
and chat (content: [{token, logprob, bytes, top_logprobs}])."""

from __future__ import annotations

import math
from typing import Any, Sequence

from pegboard.core.outputs import PositionLogprobs

MIN_LOGPROB = -9999.0  # JSON has no -inf (vLLM clamps the same way)


def token_text(token_id: int, entry: PositionLogprobs | None, decode: Any) -> str:
    """A token's text: the engine's decoding when it has one, else ``decode([token_id])``."""
    logprob = entry.get(token_id) if entry else None
    if logprob is not None and logprob.decoded_token is not None:
        return logprob.decoded_token
    return decode([token_id])


def completion_logprobs(token_ids: Sequence[int], positions: Sequence[PositionLogprobs | None], offset: int,
                        decode: Any) -> tuple[dict[str, list], int]:
    """The legacy ``logprobs`` object of some tokens starting at text ``offset``, and the offset after them."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    for token_id, entry in zip(token_ids, positions):
        text = token_text(token_id, entry, decode)
        tokens.append(text)
        text_offset.append(offset)
        offset += len(text)
        if entry is None:  # the first prompt token has no logprob
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(_finite(entry[token_id].logprob))
        top_logprobs.append({token_text(t, entry, decode): _finite(lp.logprob) for t, lp in entry.items()})
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}, offset


def merge_completion_logprobs(first: dict[str, list], second: dict[str, list]) -> dict[str, list]:
    """Two legacy logprobs objects one after the other (an echoed prompt, then the completion)."""
    return {key: first[key] + second[key] for key in first}


def chat_logprobs(token_ids: Sequence[int], positions: Sequence[PositionLogprobs], top_k: int,
                  decode: Any) -> list[dict[str, Any]]:
    """The chat ``logprobs.content`` list of some tokens, each with its ``top_k`` most likely alternatives."""
    content = []
    for token_id, entry in zip(token_ids, positions):
        best = sorted(entry.items(), key=lambda item: -item[1].logprob)[:top_k]
        content.append({**_chat_token(token_text(token_id, entry, decode), entry[token_id].logprob),
                        "top_logprobs": [_chat_token(token_text(t, entry, decode), lp.logprob) for t, lp in best]})
    return content


def _chat_token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode("utf-8", "replace"))}


def _finite(value: float) -> float:
    return value if math.isfinite(value) else MIN_LOGPROB
