"""What every part of the soak shares: the model and prompts, the outcome counters, request helpers."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx2

MODEL = "smollm2"
REQUEST_DEADLINE = 300.0  # seconds after which a request counts as hung
PROMPTS = ["Write a haiku about the sea.", "What is 17 times 23?", "List three uses of copper.",
           "Explain recursion to a child.", "Translate 'good morning' to French.", "Name a prime above 100.",
           "Once upon a time", "The quick brown fox", "def fibonacci(n):", "Summarize the water cycle."]
ACCEPTED_ERROR_CODE = "engine_step_failed"  # a failed step's own requests: 500, or an error event (issue 8, item 2)


@dataclass
class Stats:
    """Everything the load saw: statuses by kind, failures, server errors, latencies, samples."""

    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[str] = field(default_factory=list)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    samples: list[dict[str, Any]] = field(default_factory=list)
    canary: list[str] = field(default_factory=list)
    deaths: list[str] = field(default_factory=list)

    def record(self, kind: str, status: int | str, latency: float | None = None, failure: str | None = None) -> None:
        """Count one outcome of ``kind``; a failure is kept with its description."""
        self.statuses[kind][str(status)] += 1
        if latency is not None:
            self.latencies[kind].append(latency)
        if failure:
            self.failures.append(f"{kind}: {failure}")

    def server_error(self, kind: str, status: int | str, error: dict[str, Any]) -> None:
        """Keep a 5xx (status ``"event"`` for a stream's error event) with its code and message."""
        self.server_errors.append({"kind": kind, "status": status, "code": error.get("code"),
                                   "message": str(error.get("message"))[:300]})


def is_server_error(kind: str, status: int, error: dict[str, Any], stats: Stats) -> bool:
    """Keep a 5xx or (status 200) a stream's error event; True (a failure) unless the promises allow it."""
    stats.server_error(kind, "event" if status == 200 else status, error)
    return status not in (200, 500) or error.get("code") != ACCEPTED_ERROR_CODE


def error_of(response: httpx2.Response) -> dict[str, Any]:
    """The OpenAI error object of a response ({} when it has none)."""
    try:
        return response.json().get("error") or {}
    except (ValueError, AttributeError):
        return {}


async def post(client: httpx2.AsyncClient, path: str, content: bytes | str) -> httpx2.Response:
    """POST a raw JSON body, bounded by REQUEST_DEADLINE."""
    headers = {"Content-Type": "application/json"}
    return await asyncio.wait_for(client.post(path, content=content, headers=headers), REQUEST_DEADLINE)


async def read_stream(client: httpx2.AsyncClient, path: str, body: dict, hang_up_after: int | None
                      ) -> tuple[int, list[dict], bool, dict]:
    """Stream a request: (status, events, whether [DONE] came, error body); stop after ``hang_up_after`` events."""
    events, done, error = [], False, {}
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, events, done, error_of(response)
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[6:])
            events.append(event)
            error = event.get("error") or error
            if hang_up_after is not None and len(events) >= hang_up_after:
                break  # leaving the block closes the connection mid-stream
        return response.status_code, events, done, error


async def guarded(kind: str, work: Any, stats: Stats) -> None:
    """Run one request's coroutine; a hang or a transport error is counted as that kind's failure."""
    try:
        await work
    except asyncio.TimeoutError:
        stats.record(kind, "hang", failure=f"no answer within {REQUEST_DEADLINE:.0f} s")
    except (httpx2.HTTPError, OSError, ValueError) as exc:
        stats.record(kind, type(exc).__name__, failure=f"{type(exc).__name__}: {exc}")
