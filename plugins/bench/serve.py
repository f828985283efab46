"""``pegboard bench serve``: stream requests at an OpenAI-compatible server and report latency and throughput.

Prompts are random ordinary token ids (``plugins/bench/data.py``); every request is greedy with
``ignore_eos`` and a fixed ``max_tokens``, so output lengths do not depend on the model. Requests arrive
all at once (``--request-rate inf``) or as a Poisson process, at most ``--max-concurrency`` at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pegboard.plugins.bench.data import BenchRequest, mixed_requests, ordinary_token_ids, random_requests
from pegboard.plugins.bench.serve_client import ENDPOINTS, endpoint_url, request_body, send
from pegboard.plugins.bench.serve_stats import RequestResult, format_summary, summarize

DATASET_DEFAULTS = {"mixed": 64, "random": 1000}  # default --num-prompts per dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server to load, the prompts, and how they arrive."""
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    parser.add_argument("--endpoint", choices=tuple(ENDPOINTS), default="completions",
                        help="completions (token-id prompts) or chat (prompts as text; default: %(default)s)")
    parser.add_argument("--model", help="model name to send (default: the server's first in /v1/models)")
    parser.add_argument("--tokenizer", help="model whose vocabulary makes the prompts (default: --model)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                        help="sent as a bearer token (default: $OPENAI_API_KEY)")
    parser.add_argument("--dataset", choices=tuple(DATASET_DEFAULTS), default="random",
                        help="random: fixed --input-len/--output-len; mixed: lengths drawn from the ranges")
    parser.add_argument("--num-prompts", type=int, help="requests to send (default: 64 mixed, 1000 random)")
    parser.add_argument("--input-len", type=int, default=1024)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--min-input-len", type=int, default=32)
    parser.add_argument("--max-input-len", type=int, default=512)
    parser.add_argument("--min-output-len", type=int, default=32)
    parser.add_argument("--max-output-len", type=int, default=256)
    parser.add_argument("--request-rate", type=float, default=math.inf,
                        help="requests per second, Poisson arrivals; inf sends all at once (default)")
    parser.add_argument("--max-concurrency", type=int, help="most requests in flight at once (default: no limit)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts and the arrival times")
    parser.add_argument("--output-json", metavar="PATH", help="write the figures, settings and per-request timings")


# ---- prompts -----------------------------------------------------------------------------------


def load_vocabulary(model: str, plugins: list[str]) -> tuple[list[int], Any]:
    """Ordinary (non-special) token ids of the model's vocabulary, and its tokenizer (None when it has none)."""
    from pegboard.plugins.bench.data import tokenizer_special_ids
    from pegboard.core.model_files import pick_loader, resolve_model
    from pegboard.core.plugins import load_board

    board = load_board(plugins)
    files = resolve_model(board.model_sources, model)
    _, loader = pick_loader(board.model_loaders, files, "auto")
    hf_config, tokenizer = loader.load_config(files), loader.load_tokenizer(files)
    if tokenizer is None:
        special = {getattr(hf_config, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
        return ordinary_token_ids(hf_config.vocab_size, special), None
    vocab_size = min(hf_config.vocab_size, len(tokenizer))
    return ordinary_token_ids(vocab_size, tokenizer_special_ids(tokenizer)), tokenizer


def build_requests(args: argparse.Namespace, vocab: list[int]) -> list[BenchRequest]:
    num_prompts = args.num_prompts or DATASET_DEFAULTS[args.dataset]
    if args.dataset == "random":
        return random_requests(vocab, num_prompts, input_len=args.input_len, output_len=args.output_len,
                               seed=args.seed)
    return mixed_requests(vocab, num_prompts, min_input_len=args.min_input_len, max_input_len=args.max_input_len,
                          min_output_len=args.min_output_len, max_output_len=args.max_output_len, seed=args.seed)


# ---- the run -----------------------------------------------------------------------------------


def arrival_gaps(num: int, request_rate: float, seed: int) -> list[float]:
    """Seconds to wait before each request: 0 first, then exponential gaps (a Poisson process); all 0 at inf."""
    gaps = random.Random(seed)
    return [0.0 if i == 0 or math.isinf(request_rate) else gaps.expovariate(request_rate) for i in range(num)]


async def run_requests(requests: list[BenchRequest], send_one: Callable[[BenchRequest], Awaitable[RequestResult]],
                       *, request_rate: float, max_concurrency: int | None,
                       seed: int) -> tuple[list[RequestResult], float]:
    """Start every request on schedule (Poisson gaps at ``request_rate``, none at inf); results and seconds."""
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def limited(request: BenchRequest) -> RequestResult:
        if limit is None:
            return await send_one(request)
        async with limit:
            return await send_one(request)

    started = time.perf_counter()
    tasks = []
    for gap, request in zip(arrival_gaps(len(requests), request_rate, seed), requests):
        if gap:
            await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(limited(request)))
    results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - started


async def benchmark(args: argparse.Namespace, requests: list[BenchRequest], tokenizer: Any,
                    model: str) -> tuple[list[RequestResult], float]:
    """Check the endpoint with one short request, then run them all."""
    import httpx2

    url = endpoint_url(args.base_url, args.endpoint)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    def prompt(request: BenchRequest) -> str | list[int]:
        return tokenizer.decode(request.prompt_token_ids) if args.endpoint == "chat" else request.prompt_token_ids

    connections = httpx2.Limits(max_connections=args.max_concurrency or len(requests), max_keepalive_connections=None)
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(6 * 3600.0), limits=connections) as client:
        async def send_one(request: BenchRequest, output_len: int | None = None) -> RequestResult:
            body = request_body(args.endpoint, model, prompt(request), output_len or request.output_len)
            return await send(client, url, body, headers, request.input_len)

        check = await send_one(requests[0], output_len=2)
        if not check.success:
            raise SystemExit(f"the first request to {url} failed: {check.error}")
        return await run_requests(requests, send_one, request_rate=args.request_rate,
                                  max_concurrency=args.max_concurrency, seed=args.seed)


def served_model(base_url: str, api_key: str | None) -> str:
    """The first model the server lists at /v1/models."""
    import httpx2

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = endpoint_url(base_url, "completions").rsplit("/", 1)[0] + "/models"
    try:
        response = httpx2.get(url, headers=headers)
        response.raise_for_status()
        return response.json()["data"][0]["id"]
    except (httpx2.HTTPError, ValueError, LookupError) as exc:
        raise SystemExit(f"could not read the model name from {url} ({type(exc).__name__}: {exc}); "
                         "pass --model") from exc


# ---- main --------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    model = args.model or served_model(args.base_url, args.api_key)
    vocab, tokenizer = load_vocabulary(args.tokenizer or model, getattr(args, "plugins", None) or [])
    if args.endpoint == "chat" and tokenizer is None:
        raise SystemExit(f"the chat endpoint sends text prompts: {args.tokenizer or model} has no tokenizer "
                         "(name one with --tokenizer)")
    requests = build_requests(args, vocab)
    results, duration = asyncio.run(benchmark(args, requests, tokenizer, model))
    summary = summarize(results, duration)
    print(format_summary(summary, args.max_concurrency, args.request_rate))
    asked = sum(r.output_len for r, result in zip(requests, results) if result.success)
    if summary["total_output_tokens"] != asked:
        print(f"warning: the server generated {summary['total_output_tokens']} tokens; {asked} were asked for")
    errors = sorted({r.error for r in results if not r.success})
    for error in errors[:5]:
        print(f"failed: {error}")
    if args.output_json:
        write_json(args.output_json, args, model, summary, results)
    return 0 if summary["completed"] else 1


def write_json(path: str, args: argparse.Namespace, model: str, summary: dict[str, Any],
               results: list[RequestResult]) -> None:
    settings = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    settings.pop("api_key", None)
    settings["request_rate"] = str(args.request_rate)  # JSON has no inf
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "model": model, "settings": settings,
              **summary,
              "requests": {"input_lens": [r.prompt_len for r in results],
                           "output_lens": [r.output_tokens for r in results],
                           "ttfts": [r.ttft for r in results], "itls": [r.itl for r in results],
                           "errors": [r.error for r in results]}}
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
