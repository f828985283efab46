"""Hostile clients: extreme sampling values, oversized requests, idle and trickling raw sockets."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx2

from common import MODEL, PROMPTS, REQUEST_DEADLINE, Stats, error_of, guarded, is_server_error, post

HEADER_READ_TIMEOUT, BODY_READ_TIMEOUT, KEEP_ALIVE_TIMEOUT = 10.0, 60.0, 5.0  # pegboard serve's defaults
CLOSE_SLACK = 5.0  # seconds past a deadline a socket may stay open (a busy 2-core machine's scheduling)

# ---------------------------------------------------------------- extreme sampling values

# Raw JSON texts at the edges of each field (and past them): NaN/Infinity/1e400 are not JSON numbers -> 400.
EDGES: dict[str, list[str]] = {
    "temperature": ["0", "1e-5", "1e-45", "5e-324", "1e30", "1e308", "-1", "NaN", "Infinity", "1e400"],
    "top_p": ["1e-46", "5e-324", "1e-5", "1", "0", "1.0000001", "-Infinity", "NaN"],
    "top_k": ["-1", "0", "1", "49152", "49153", "9223372036854775807", "9223372036854775808", "-2"],
    "min_p": ["0", "1", "0.9999999", "1e-46", "1.5", "NaN"],
    "repetition_penalty": ["5e-324", "1e-46", "1e30", "1e308", "0", "Infinity", "1"],
    "presence_penalty": ["-2", "2", "2.0000001", "-Infinity"],
    "frequency_penalty": ["-2", "2", "-2.5", "NaN"],
    "seed": ["-9223372036854775808", "9223372036854775807", "9223372036854775806", "0", "1e3", "true"],
    "min_tokens": ["0", "4", "5", "-1", "null"],
    "max_tokens": ["1", "4", "0", "-1", "8192", "9223372036854775807"],
    "n": ["1", "2", "128", "129", "0", "-1"],
    "logprobs": ["0", "20", "21", "-1"],
}
LOGIT_BIAS = ['{"0": 100}', '{"49151": -100}', '{"1": 100, "2": 100, "3": -100}', '{"49152": 1}', '{"-1": 1}',
              '{"5": 100.0000001}', '{"5": NaN}', '{"5": 1e-320}', '{"x": 1}', '[1]', '{"0": -100, "1": -100}']


def extreme_fields(rng: random.Random, chat: bool) -> dict[str, str]:
    """1-4 sampling fields at their edges, as raw JSON texts; each case stays cheap."""
    fields = {name: rng.choice(EDGES[name]) for name in rng.sample(sorted(EDGES), rng.randint(1, 4))}
    fields.setdefault("max_tokens", "4")
    if fields.get("n") == "128" and rng.random() >= 0.2:
        fields["n"] = "2"  # 128 sequences take a busy 2-core machine ~15 s: sent in one draw of five
    if fields.get("n") == "128":
        fields["max_tokens"] = "1"
    if rng.random() < 0.3:
        fields["logit_bias"] = rng.choice(LOGIT_BIAS)
    if rng.random() < 0.1:
        fields["stop_token_ids"] = json.dumps(list(range(300)))
    if chat and "logprobs" in fields:  # chat: logprobs is a boolean, the count is top_logprobs
        fields.update(top_logprobs=fields.pop("logprobs"), logprobs="true")
    if chat and rng.random() < 0.5:
        fields["max_completion_tokens"] = fields.pop("max_tokens")
    return fields


def extreme_body(rng: random.Random, stream: bool, chat: bool) -> str:
    """A completions or chat body with extreme sampling fields, as raw JSON text."""
    fields = extreme_fields(rng, chat)
    prompt = json.dumps(rng.choice(PROMPTS))
    fields["messages" if chat else "prompt"] = f'[{{"role": "user", "content": {prompt}}}]' if chat else prompt
    fields.update(model=json.dumps(MODEL), stream=json.dumps(stream))
    return "{" + ", ".join(f'"{name}": {text}' for name, text in fields.items()) + "}"


async def extreme_request(client: httpx2.AsyncClient, rng: random.Random, stats: Stats) -> None:
    """One request with extreme sampling values: 200 (a well-formed answer) or 400 naming the problem."""
    stream, chat = rng.random() < 0.3, rng.random() < 0.3
    kind = ("extreme_chat" if chat else "extreme") + ("_stream" if stream else "")
    body = extreme_body(rng, stream, chat)
    started = time.monotonic()
    response = await post(client, "/v1/chat/completions" if chat else "/v1/completions", body)
    status, failure = response.status_code, None
    if status >= 500:
        if is_server_error(kind, status, error_of(response), stats):
            failure = f"{status} {error_of(response)} for {body}"
    elif status == 400:
        if error_of(response).get("type") != "invalid_request_error":
            failure = f"400 without an invalid_request_error for {body}"
    elif status != 200:
        failure = f"status {status} for {body}"
    elif stream:
        failure = stream_text_failure(kind, response.text, body, stats)
    elif not response.json().get("choices"):
        failure = f"200 without choices for {body}: {response.text[:200]}"
    stats.record(kind, status, time.monotonic() - started, failure)


def stream_text_failure(kind: str, text: str, body: str, stats: Stats) -> str | None:
    """A whole SSE text must end with [DONE] and carry no error event (save an allowed one)."""
    if not text.rstrip().endswith("data: [DONE]"):
        return f"stream without [DONE] for {body}"
    for line in text.splitlines():
        if line.startswith("data: {") and '"error"' in line:
            error = json.loads(line[6:]).get("error") or {}
            if is_server_error(kind, 200, error, stats):
                return f"error event {error} for {body}"
    return None


async def extreme_client(url: str, stop: asyncio.Event, seed: int, stats: Stats) -> None:
    """Send extreme-value requests until ``stop``."""
    rng = random.Random(seed)
    async with httpx2.AsyncClient(base_url=url, timeout=httpx2.Timeout(REQUEST_DEADLINE, connect=30)) as client:
        while not stop.is_set():
            await guarded("extreme", extreme_request(client, rng, stats), stats)
            await asyncio.sleep(rng.uniform(0.5, 2))


# ---------------------------------------------------------------- oversized requests

@dataclass(frozen=True)
class Oversized:
    """One oversized request: where it goes, its body, the statuses documented for it."""

    path: str
    body: bytes
    allowed: frozenset[int]
    declared_length: int | None = None  # send only headers declaring this Content-Length


def oversized_cases() -> dict[str, Oversized]:
    """Shape name -> the request (docs/serving.md, 'Work per request' and 'Connections')."""
    def body(**fields: Any) -> bytes:
        """A JSON body naming the model."""
        return json.dumps({"model": MODEL, **fields}).encode()

    completions, chat = "/v1/completions", "/v1/chat/completions"
    return {
        "huge_prompt_6MB": Oversized(completions, body(prompt="a" * 6_000_000, max_tokens=1), frozenset({400})),
        "prompt_over_context": Oversized(completions, body(prompt="hello " * 9000, max_tokens=1), frozenset({400})),
        "huge_chat_6MB": Oversized(chat, body(messages=[{"role": "user", "content": "b" * 6_000_000}]),
                                   frozenset({400})),
        "body_over_8MiB": Oversized(completions, body(prompt="c" * 9 * 2**20), frozenset({413})),
        "declared_100MiB": Oversized(completions, b"", frozenset({413}), declared_length=100 * 2**20),
        "129_prompts": Oversized(completions, body(prompt=["hi"] * 129, max_tokens=1), frozenset({400})),
        "200k_prompts": Oversized(completions, body(prompt=[[1]] * 200_000, max_tokens=1), frozenset({400})),
        "n128_x_3_prompts": Oversized(completions, body(prompt=["a", "b", "c"], n=128, max_tokens=1),
                                      frozenset({400})),
        "max_tokens_over_context": Oversized(completions, body(prompt="hi", max_tokens=9000), frozenset({400})),
        "nested_json": Oversized(completions, b"[" * 100_000 + b"]" * 100_000, frozenset({400})),
    }


async def oversized_request(url: str, name: str, case: Oversized, stats: Stats) -> None:
    """Send one oversized request; its status must be one of the documented ones, never a hang."""
    kind = f"oversized:{name}"
    started = time.monotonic()
    if case.declared_length is not None:
        status, error = await lying_content_length(url, case.path, case.declared_length)
    else:
        async with httpx2.AsyncClient(base_url=url, timeout=httpx2.Timeout(REQUEST_DEADLINE, connect=30)) as client:
            response = await post(client, case.path, case.body)
        status, error = response.status_code, error_of(response)
    failure = None
    if status not in case.allowed:
        failure = f"status {status} (documented: {sorted(case.allowed)}): {error}"
        if status >= 500 and not is_server_error(kind, status, error, stats):
            failure = None
    stats.record(kind, status, time.monotonic() - started, failure)


async def lying_content_length(url: str, path: str, declared: int) -> tuple[int, dict]:
    """Declare a huge body, send none: the server must answer 413 at once."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {declared}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        status = int(head.split()[1])
        length = re.search(rb"content-length: (\d+)", head, re.I)
        body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), 30) if length else b"{}"
        return status, json.loads(body).get("error") or {}
    finally:
        writer.close()


async def oversized_client(url: str, stop: asyncio.Event, seed: int, stats: Stats) -> None:
    """Send oversized shapes at random until ``stop``, 2-6 s apart (parsing megabytes of JSON costs CPU)."""
    rng = random.Random(seed)
    cases = oversized_cases()
    while not stop.is_set():
        name = rng.choice(sorted(cases))
        await guarded(f"oversized:{name}", oversized_request(url, name, cases[name], stats), stats)
        await asyncio.sleep(rng.uniform(2, 6))


# ---------------------------------------------------------------- idle and trickling sockets

SOCKET_DEADLINES = {"idle": HEADER_READ_TIMEOUT, "trickle_headers": HEADER_READ_TIMEOUT,
                    "trickle_body": BODY_READ_TIMEOUT, "idle_after_response": KEEP_ALIVE_TIMEOUT}
HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
TRICKLED = {"idle": b"", "idle_after_response": b"", "trickle_headers": HEAD + b"X-Pad: " + b"x" * 1000,
            "trickle_body": b" " * 1000}  # after headers sent at once


async def socket_probe(url: str, mode: str) -> float:
    """Open a raw connection that misbehaves as ``mode`` says; seconds until the server closed it (inf: never)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    limit = SOCKET_DEADLINES[mode] + CLOSE_SLACK
    try:
        if mode == "idle_after_response":
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
        started = time.monotonic()
        if mode == "trickle_body":
            writer.write(HEAD + b"Content-Length: 1000\r\n\r\n")
        return await trickle_until_closed(reader, writer, TRICKLED[mode], started, limit)
    finally:
        writer.close()


async def trickle_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes,
                               started: float, limit: float) -> float:
    """Send ``data`` a byte a second (nothing if empty), reading, until EOF or ``limit`` seconds; time to EOF."""
    sent = 0
    while time.monotonic() - started < limit:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 1.0)
        except asyncio.TimeoutError:
            chunk = None
        except (ConnectionError, OSError):
            return time.monotonic() - started
        if chunk == b"":
            return time.monotonic() - started
        if chunk is None and sent < len(data):
            try:
                writer.write(data[sent:sent + 1])
                await writer.drain()
            except (ConnectionError, OSError):
                return time.monotonic() - started
            sent += 1
    return float("inf")


async def socket_client(url: str, stop: asyncio.Event, mode: str, stats: Stats) -> None:
    """Repeat one misbehaving-socket mode until ``stop``; each must be closed by the server within its deadline."""
    while not stop.is_set():
        kind = f"socket:{mode}"
        try:
            seconds = await socket_probe(url, mode)
        except (OSError, asyncio.IncompleteReadError) as exc:
            stats.record(kind, type(exc).__name__, failure=f"{type(exc).__name__}: {exc}")
            continue
        if seconds == float("inf"):
            stats.record(kind, "left_open", failure=f"still open {SOCKET_DEADLINES[mode] + CLOSE_SLACK:.0f} s on")
        else:
            stats.record(kind, "closed_by_server", seconds)
