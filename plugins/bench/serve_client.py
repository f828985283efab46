"""One streaming request to an OpenAI-compatible endpoint, timed chunk by chunk (httpx2, no torch)."""

from __future__ import annotations

import json
import time
from typing import Any

from pegboard.plugins.bench.serve_stats import RequestResult

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def endpoint_url(base_url: str, endpoint: str) -> str:
    """``base_url`` (with or without a trailing ``/v1``) joined with the endpoint's path."""
    base = base_url.rstrip("/")
    path = ENDPOINTS[endpoint]
    return base + (path.removeprefix("/v1") if base.endswith("/v1") else path)


def request_body(endpoint: str, model: str, prompt: str | list[int], output_len: int, *,
                 ignore_eos: bool = False) -> dict[str, Any]:
    """A greedy streaming request for at most ``output_len`` tokens, exactly so with ``ignore_eos`` (a vLLM extra,
    sent only when asked for, as vLLM's client does)."""
    body: dict[str, Any] = {"model": model, "temperature": 0.0, "stream": True,
                            "stream_options": {"include_usage": True}}
    if ignore_eos:
        body["ignore_eos"] = True
    if endpoint == "chat":
        return {**body, "messages": [{"role": "user", "content": prompt}], "max_completion_tokens": output_len}
    return {**body, "prompt": prompt, "max_tokens": output_len}


def carries_tokens(chunk: dict[str, Any]) -> bool:
    """Whether a streamed chunk brings tokens, even ones whose text is empty (special tokens, or ids the tokenizer
    lacks), as vLLM's client counts them; chat's first chunk, the role alone, brings none."""
    choices = chunk.get("choices") or []
    if not choices:
        return False
    delta = choices[0].get("delta")
    return delta is None or (delta.get("content") is not None and "role" not in delta)


async def send(client: Any, url: str, body: dict[str, Any], headers: dict[str, str], prompt_len: int) -> RequestResult:
    """Stream one request; any failure is recorded in the result, never raised."""
    result = RequestResult(prompt_len=prompt_len)
    started = last = time.perf_counter()
    token_chunks = 0
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                result.error = f"HTTP {response.status_code}: {detail}"
                return result
            async for line in response.aiter_lines():
                data = line[len("data:"):].strip() if line.startswith("data:") else ""
                if not data or data == "[DONE]":
                    continue
                chunk = json.loads(data)
                now = time.perf_counter()
                if "error" in chunk:
                    result.error = f"error in stream: {chunk['error']}"
                    return result
                if carries_tokens(chunk):
                    if token_chunks:
                        result.itl.append(now - last)
                    else:
                        result.ttft = now - started
                    last = now
                    token_chunks += 1
                if usage := chunk.get("usage"):
                    result.output_tokens = usage.get("completion_tokens") or 0
                    result.prompt_len = usage.get("prompt_tokens") or prompt_len
    except Exception as exc:  # a refused connection, a reset stream, bad JSON: one failed request
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.latency = last - started  # until the last content chunk, as vLLM measures it
    result.output_tokens = result.output_tokens or token_chunks
    result.success = token_chunks > 0
    result.error = "" if result.success else "the stream brought no tokens"
    return result
