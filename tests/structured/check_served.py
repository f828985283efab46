"""Structured outputs through a served pegboard, end to end: starts ``pegboard serve`` (the default SmolLM2 GGUF
on the CPU) on a free port and, with the official ``openai`` client, checks that every constrained output
parses and validates (the schemas of schemas.json at temperature 0 and 0.8; regex, choice, lark grammar and
json_object on chat and completions), and that free greedy requests running beside structured ones keep the
text each gives alone. Prints the figures; exits non-zero on any failure.

    python tests/structured/check_served.py [--reduced] [--concurrency 32] [--model smollm2] [--url URL]

An output cut at max_tokens (finish_reason "length") is a failure unless its constraint admits outputs of any
length (the case says why); those are counted apart.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai  # noqa: E402
from served_cases import FREE_PROMPTS, SCHEMAS, Case, other_kind_cases, schema_cases  # noqa: E402

FREE_MAX_TOKENS = 32
NEAR_TIE = 0.05  # nats between the two likeliest tokens below which batched float math may pick either


@contextmanager
def served(model: str, max_num_seqs: int) -> Iterator[str]:
    """``pegboard serve`` on a free loopback port; its base URL once /health answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tempfile.NamedTemporaryFile("w+b", prefix="pegboard-serve-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "pegboard.core.cli", "serve", model, "--device", "cpu", "--host", "127.0.0.1",
         "--port", str(port), "--max-num-seqs", str(max_num_seqs), "--log-level", "warning",
         "--disable-log-requests"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while not _answers(url + "/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit(f"pegboard serve did not come up (exit {process.poll()}):\n"
                                 f"{log.read().decode(errors='replace')[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        print(f"server log: {log.name}")


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


async def send(client: openai.AsyncOpenAI, model: str, case: Case) -> tuple[str, str]:
    """The case's request: its output text and finish reason."""
    arguments = dict(case.arguments)
    if case.endpoint == "chat":
        response = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": case.prompt}], **arguments)
        choice = response.choices[0]
        return choice.message.content or "", choice.finish_reason
    response = await client.completions.create(model=model, prompt=case.prompt, **arguments)
    return response.choices[0].text, response.choices[0].finish_reason


class Tally:
    """Pass, fail and truncation counts per category, and the failures' details."""

    def __init__(self) -> None:
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.failures: list[str] = []
        self.truncated_unbounded: list[str] = []

    def record(self, case: Case, text: str | None, finish: str | None, error: str | None = None) -> None:
        counts = self.counts[case.category]
        where = f"{case.category} {case.name} t={case.arguments['temperature']}"
        if error is not None:
            counts["fail"] += 1
            self.failures.append(f"{where}: request failed: {error}")
        elif finish == "length":
            counts["truncated"] += 1
            if case.unbounded:
                self.truncated_unbounded.append(f"{where} ({case.unbounded}): {text[-80:]!r}")
            else:
                counts["fail"] += 1
                self.failures.append(f"{where}: cut at max_tokens though the constraint is bounded: {text[:160]!r}")
        elif (why := case.check(text)) is not None:
            counts["fail"] += 1
            self.failures.append(f"{where}: finish={finish}: {why}: {text[:200]!r}")
        else:
            counts["pass"] += 1

    def fail_count(self) -> int:
        return sum(c["fail"] for c in self.counts.values())


async def run_cases(client, model: str, cases: list[Case], tally: Tally, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> None:
        async with gate:
            try:
                text, finish = await send(client, model, case)
            except openai.OpenAIError as exc:
                tally.record(case, None, None, f"{type(exc).__name__}: {exc}")
                return
            tally.record(case, text, finish)

    await asyncio.gather(*(one(case) for case in cases))


async def free_request(client, model: str, prompt: str) -> tuple[str, list]:
    """A free greedy chat request: its text and its tokens' logprobs (with the top two)."""
    response = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=FREE_MAX_TOKENS,
        logprobs=True, top_logprobs=2)
    choice = response.choices[0]
    return choice.message.content or "", list(choice.logprobs.content if choice.logprobs else [])


def divergence(alone: list, together: list) -> str:
    """Where two greedy runs' tokens first differ, and the top-two logprob gap there in each."""
    for i, (a, b) in enumerate(zip(alone, together)):
        if a.token != b.token:
            break
    else:
        i = min(len(alone), len(together))
        return f"one stops at token {i} (lengths {len(alone)} vs {len(together)})"

    def gap(entry) -> float:
        tops = sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        return tops[0] - tops[1] if len(tops) > 1 else math.inf
    g_alone, g_together = gap(alone[i]), gap(together[i])
    kind = "near-tie" if min(g_alone, g_together) < NEAR_TIE else "NOT a near-tie"
    return (f"token {i}: alone {alone[i].token!r} (top-2 gap {g_alone:.4f} nats), together {together[i].token!r} "
            f"(gap {g_together:.4f}): {kind}")


async def concurrency_check(client, model: str, structured: list[Case], prompts: list[str], tally: Tally) -> dict:
    """The free prompts sent one at a time, then all of them beside the structured cases at once."""
    alone = [await free_request(client, model, p) for p in prompts]
    started = time.perf_counter()
    results = await asyncio.gather(*(free_request(client, model, p) for p in prompts),
                                   *(send(client, model, c) for c in structured), return_exceptions=True)
    seconds = time.perf_counter() - started
    together, guided = results[:len(prompts)], results[len(prompts):]
    for case, result in zip(structured, guided):
        case = Case(f"concurrent/{case.category}", case.name, case.endpoint, case.prompt, case.arguments,
                    case.check, case.unbounded)
        if isinstance(result, BaseException):
            tally.record(case, None, None, repr(result))
        else:
            tally.record(case, *result)
    same, near_ties, differ = 0, [], []
    for prompt, (text, tokens), result in zip(prompts, alone, together):
        if isinstance(result, BaseException):
            differ.append(f"{prompt!r}: request failed: {result!r}")
        elif result[0] == text:
            same += 1
        else:
            where = divergence(tokens, result[1])
            line = f"{prompt!r}: {where}\n      alone:    {text!r}\n      together: {result[0]!r}"
            (near_ties if "near-tie" in where and "NOT" not in where else differ).append(line)
    return {"same": same, "near_ties": near_ties, "differ": differ, "seconds": seconds}


def keywords_used(schema, found: set[str]) -> set[str]:
    """Every key of every object in the schema (property names included: the caller intersects)."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            found.add(key)
            keywords_used(value, found)
    elif isinstance(schema, list):
        for item in schema:
            keywords_used(item, found)
    return found


def formats_used(schema, found: set[str]) -> set[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("format"), str):
            found.add(schema["format"])
        for value in schema.values():
            formats_used(value, found)
    elif isinstance(schema, list):
        for item in schema:
            formats_used(item, found)
    return found


def coverage(schemas: list[dict]) -> tuple[list[str], list[str]]:
    """The built-in backend's JSON-schema keywords and formats that no schema uses."""
    from pegboard.plugins.structured_outputs import json_schema, json_text

    supported = set().union(*json_schema.KEYWORDS.values()) | {"$defs", "definitions"}
    used = set().union(*(keywords_used(s["schema"], set()) for s in schemas))
    formats = set().union(*(formats_used(s["schema"], set()) for s in schemas))
    return sorted(supported - used), sorted(set(json_text.FORMATS) - formats)


async def check(url: str, args) -> int:
    started = time.perf_counter()
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=1800)
    model = (await client.models.list()).data[0].id
    schemas = json.loads(SCHEMAS.read_text())
    missing_keywords, missing_formats = coverage(schemas)
    if args.reduced:  # a few bounded schemas: the longest output sets the wall time of a batch
        schemas = [s for s in schemas if not s.get("unbounded")][::5]
    cases = schema_cases(schemas) + other_kind_cases(schemas, reduced=args.reduced)
    tally = Tally()
    phase = time.perf_counter()
    await run_cases(client, model, cases, tally, args.concurrency * 2)
    cases_seconds = time.perf_counter() - phase
    n = args.concurrency
    structured = [c for c in schema_cases(schemas) if c.arguments["temperature"] > 0]
    structured = (structured * (n // len(structured) + 1))[:n]
    prompts = (FREE_PROMPTS * (n // len(FREE_PROMPTS) + 1))[:n]
    phase = time.perf_counter()
    mixed = await concurrency_check(client, model, structured, prompts, tally)
    mixed_seconds = time.perf_counter() - phase
    await client.close()

    print(f"\n== structured outputs through pegboard serve ({model}) at {url}")
    print(f"schemas: {len(schemas)} of {SCHEMAS.name}; cases: {len(cases)} "
          f"(+ {n} structured and {n} free together)")
    print(f"JSON-schema keywords of the built-in backend no schema uses: {missing_keywords or 'none'}; "
          f"formats: {missing_formats or 'none'}")
    print(f"{'category':44} {'pass':>5} {'fail':>5} {'trunc':>6}")
    for category in sorted(tally.counts):
        c = tally.counts[category]
        print(f"{category:44} {c['pass']:5} {c['fail']:5} {c['truncated']:6}")
    truncated = sum(c["truncated"] for c in tally.counts.values())
    print(f"truncated (finish_reason length): {truncated}, of which the constraint is unbounded: "
          f"{len(tally.truncated_unbounded)}")
    for line in tally.truncated_unbounded:
        print(f"  truncated, unbounded: {line}")
    print(f"free greedy requests beside {n} structured ones: {mixed['same']}/{n} same text as alone, "
          f"{len(mixed['near_ties'])} differ at a near-tie (< {NEAR_TIE} nats), {len(mixed['differ'])} differ "
          f"otherwise; the concurrent batch took {mixed['seconds']:.1f} s")
    for line in mixed["near_ties"]:
        print(f"  near-tie: {line}")
    for line in mixed["differ"]:
        print(f"  DIFFERS: {line}")
    for line in tally.failures:
        print(f"  FAIL: {line}")
    failures = tally.fail_count() + len(mixed["differ"]) + (0 if args.reduced else
                                                           len(missing_keywords) + len(missing_formats))
    print(f"wall time: {time.perf_counter() - started:.1f} s (cases {cases_seconds:.1f} s, "
          f"alone + concurrent {mixed_seconds:.1f} s); failures: {failures}")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="every fifth bounded schema, fewer other cases (for CI)")
    parser.add_argument("--concurrency", type=int, default=32, help="structured and free requests run together")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--url", help="check a server already running there instead of starting one")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.url:
        sys.exit(asyncio.run(check(args.url.rstrip("/"), args)))
    with served(args.model, max_num_seqs=2 * args.concurrency) as url:
        print(f"pegboard serve answered after {time.perf_counter() - started:.1f} s")
        code = asyncio.run(check(url, args))
    sys.exit(code)


if __name__ == "__main__":
    main()
