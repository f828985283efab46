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


def chunk_text(chunk: dict[str, Any]) -> str:
    """The text a streamed chunk adds: ``choices[0].text`` (completions) or ``.delta.content`` (chat)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
    return text or ""


async def send(client: Any, url: str, body: dict[str, Any], headers: dict[str, str], prompt_len: int) -> RequestResult:
    """Stream one request; any failure is recorded in the result, never raised."""
    result = RequestResult(prompt_len=prompt_len)
    started = last = time.perf_counter()
    content_chunks = 0
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
                if chunk_text(chunk):
                    if content_chunks:
                        result.itl.append(now - last)
                    else:
                        result.ttft = now - started
                    last = now
                    content_chunks += 1
                if usage := chunk.get("usage"):
                    result.output_tokens = usage.get("completion_tokens") or 0
                    result.prompt_len = usage.get("prompt_tokens") or prompt_len
    except Exception as exc:  # a refused connection, a reset stream, bad JSON: one failed request
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.latency = last - started  # until the last content chunk, as vLLM measures it
    result.output_tokens = result.output_tokens or content_chunks
    result.success = content_chunks > 0
    result.error = "" if result.success else "the stream had no content"
    return result
