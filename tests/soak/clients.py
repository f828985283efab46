"""Well-behaved clients: 64 ordinary ones (some hang up mid-stream or give up) and the greedy canary."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx2

from common import MODEL, PROMPTS, REQUEST_DEADLINE, Stats, error_of, guarded, is_server_error, post, read_stream

CANARY_INTERVAL = 30.0
CANARY = {"model": MODEL, "prompt": "The three primary colors are", "max_tokens": 24, "temperature": 0}


def ordinary_body(chat: bool, rng: random.Random) -> dict[str, Any]:
    """A short everyday request: a prompt or a chat, a few tokens, greedy or sampled."""
    body: dict[str, Any] = {"model": MODEL, "max_tokens": rng.randint(2, 12),
                            "temperature": rng.choice([0, 0.7, 1.0]), "top_p": rng.choice([1.0, 0.9])}
    prompt = rng.choice(PROMPTS)
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if rng.random() < 0.1:
        body["n"] = 2
    if rng.random() < 0.2:
        body.update({"logprobs": True, "top_logprobs": 3} if chat else {"logprobs": 3})
    return body


def ordinary_plan(rng: random.Random) -> tuple[str, str, dict[str, Any], int | None]:
    """(kind, path, body, events to read before hanging up; for a whole answer, 0 = give up after 1-3 s): 25%
    streams hung up after 1-4 events, 37.5% whole streams, 32.5% whole answers, 5% whole answers given up."""
    chat = rng.random() < 0.5
    path, kind = ("/v1/chat/completions", "chat") if chat else ("/v1/completions", "completion")
    body, roll = ordinary_body(chat, rng), rng.random()
    if roll >= 0.625:
        return (kind + "_given_up", path, body, 0) if roll < 0.675 else (kind, path, body, None)
    body["stream"] = True
    hang_up = rng.randint(1, 4) if roll < 0.25 else None
    return kind + ("_stream_hangup" if hang_up else "_stream"), path, body, hang_up


async def ordinary_request(client: httpx2.AsyncClient, plan: tuple, stats: Stats) -> None:
    """Send one planned ordinary request and check its answer."""
    kind, path, body, hang_up = plan
    started = time.monotonic()
    if not body.get("stream"):
        if hang_up == 0:
            response = await give_up(client, path, body, after=random.uniform(1, 3))
            if response is None:
                return stats.record(kind, "given_up")
        else:
            response = await post(client, path, json.dumps(body))
        check_whole(kind, response, body.get("n", 1), time.monotonic() - started, stats)
        return
    status, events, done, error = await asyncio.wait_for(read_stream(client, path, body, hang_up), REQUEST_DEADLINE)
    check_stream(kind, status, events, done, error, hang_up, time.monotonic() - started, stats)


async def give_up(client: httpx2.AsyncClient, path: str, body: dict, after: float) -> httpx2.Response | None:
    """Send a request; hang up (None) if no answer came within ``after`` seconds, as a client's own timeout does."""
    try:
        return await asyncio.wait_for(client.post(path, json=body), after)
    except asyncio.TimeoutError:
        return None


def check_whole(kind: str, response: httpx2.Response, n: int, latency: float, stats: Stats) -> None:
    """An ordinary whole answer must be a 200 with n choices of text (or an allowed 500)."""
    status, failure = response.status_code, None
    if status >= 500:
        failure = f"{status} {error_of(response)}" if is_server_error(kind, status, error_of(response), stats) else None
    elif status != 200:
        failure = f"status {status}: {response.text[:200]}"
    elif len(response.json().get("choices", [])) != n:
        failure = f"expected {n} choices: {response.text[:200]}"
    stats.record(kind, status, latency, failure)


def check_stream(kind: str, status: int, events: list[dict], done: bool, error: dict, hang_up: int | None,
                 latency: float, stats: Stats) -> None:
    """A stream must be a 200 whose events end with [DONE] (unless we hung up) and hold no error event."""
    failure = None
    if status >= 500 or (status == 200 and error):
        if is_server_error(kind, status, error, stats):
            failure = f"{status} error {error}"
    elif status != 200:
        failure = f"status {status}: {error}"
    elif hang_up is None and not done:
        failure = f"stream ended without [DONE] after {len(events)} events"
    stats.record(kind, status, latency, failure)


async def ordinary_client(url: str, stop: asyncio.Event, seed: int, stats: Stats) -> None:
    """Send ordinary requests one after another (1-3 s of think time between) until ``stop``."""
    rng = random.Random(seed)
    async with httpx2.AsyncClient(base_url=url, timeout=httpx2.Timeout(REQUEST_DEADLINE, connect=30)) as client:
        while not stop.is_set():
            plan = ordinary_plan(rng)
            await guarded(plan[0], ordinary_request(client, plan, stats), stats)
            await asyncio.sleep(rng.uniform(1, 3))


async def canary_text(client: httpx2.AsyncClient) -> str:
    """The greedy canary's text."""
    response = await post(client, "/v1/completions", json.dumps(CANARY))
    response.raise_for_status()
    return response.json()["choices"][0]["text"]


async def canary_client(url: str, stop: asyncio.Event, expected: str, stats: Stats) -> None:
    """Every CANARY_INTERVAL, the greedy canary must give the text it gave before the load."""
    async with httpx2.AsyncClient(base_url=url, timeout=httpx2.Timeout(REQUEST_DEADLINE, connect=30)) as client:
        while not stop.is_set():
            await asyncio.sleep(CANARY_INTERVAL)
            await guarded("canary", check_canary(client, expected, stats), stats)


async def check_canary(client: httpx2.AsyncClient, expected: str, stats: Stats) -> None:
    """One canary check."""
    started = time.monotonic()
    text = await canary_text(client)
    stats.canary.append(text)
    stats.record("canary", 200, time.monotonic() - started, None if text == expected else f"text changed: {text!r}")
