"""``pegboard bench serve``: stream requests at an OpenAI-compatible server and report latency and throughput.

The flags and figures are ``vllm bench serve``'s. Prompts are runs of ordinary token ids (vLLM's random dataset,
``plugins/bench/data.py``); every request is greedy with a fixed ``max_tokens`` (and ``ignore_eos`` with
``--ignore-eos``). Requests arrive all at once (``--request-rate inf``) or as a Poisson process, at most
``--max-concurrency`` at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pegboard.core.errors import PegboardError
from pegboard.plugins.bench.data import BenchRequest, mixed_requests, ordinary_token_ids, random_requests
from pegboard.plugins.bench.serve_client import ENDPOINTS, endpoint_url, request_body, send
from pegboard.plugins.bench.serve_result import result_path, write_result
from pegboard.plugins.bench.serve_stats import METRICS, RequestResult, format_summary, summarize

DATASET_DEFAULTS = {"mixed": 64, "random": 1000}  # default --num-prompts per dataset
BACKENDS = {"openai": "completions", "openai-chat": "chat"}  # vLLM's --backend -> the endpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server to load, the prompts, how they arrive and what is reported: ``vllm bench serve``'s flags."""
    server = parser.add_argument_group("server")
    server.add_argument("--base-url", help="the server, e.g. http://10.0.0.2:8000 (default: http://HOST:PORT)")
    server.add_argument("--host", default="127.0.0.1", help="the server's address (default: %(default)s)")
    server.add_argument("--port", type=int, default=8000, help="the server's port (default: %(default)s)")
    server.add_argument("--backend", choices=tuple(BACKENDS), default="openai",
                        help="openai: /v1/completions with token-id prompts; openai-chat: /v1/chat/completions with "
                             "the prompts' text (default: %(default)s)")
    server.add_argument("--endpoint", help="the route, /v1/completions or /v1/chat/completions (default: the "
                                           "backend's)")
    server.add_argument("--model", help="model name to send (default: the server's first in /v1/models)")
    server.add_argument("--tokenizer", help="model whose vocabulary makes the prompts (default: --model)")
    server.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                        help="sent as a bearer token (default: $OPENAI_API_KEY)")
    data = parser.add_argument_group("prompts")
    data.add_argument("--dataset-name", "--dataset", dest="dataset_name", choices=tuple(DATASET_DEFAULTS),
                      default="random", help="random: vLLM's random dataset (--random-*); mixed: lengths drawn from "
                                             "--min/max-input/output-len (default: %(default)s)")
    data.add_argument("--num-prompts", type=int, help="requests to send (default: 1000 random, 64 mixed)")
    data.add_argument("--random-input-len", "--input-len", dest="random_input_len", type=int, default=1024,
                      help="prompt tokens (default: %(default)s)")
    data.add_argument("--random-output-len", "--output-len", dest="random_output_len", type=int, default=128,
                      help="tokens to generate, max_tokens (default: %(default)s)")
    data.add_argument("--random-range-ratio", type=float, default=0.0,
                      help="lengths drawn from [L(1-r), L(1+r)] (default: %(default)s, fixed lengths)")
    data.add_argument("--random-prefix-len", type=int, default=0,
                      help="random tokens every prompt starts with, before its own (default: %(default)s)")
    for flag, default in (("--min-input-len", 32), ("--max-input-len", 512), ("--min-output-len", 32),
                          ("--max-output-len", 256)):
        data.add_argument(flag, type=int, default=default, help=f"mixed dataset (default: {default})")
    data.add_argument("--seed", type=int, default=0, help="seed of the prompts and the arrival times (default: 0)")
    load = parser.add_argument_group("load")
    load.add_argument("--request-rate", type=float, default=math.inf,
                      help="requests per second, Poisson arrivals; inf sends all at once (default: inf)")
    load.add_argument("--max-concurrency", type=int, help="most requests in flight at once (default: no limit)")
    load.add_argument("--ignore-eos", action="store_true",
                      help="ask for exactly --random-output-len tokens, past EOS (default: off, as vLLM)")
    report = parser.add_argument_group("report")
    report.add_argument("--percentile-metrics", default="ttft,tpot,itl",
                        help=f"comma-separated, of {','.join(METRICS)} (default: %(default)s)")
    report.add_argument("--metric-percentiles", default="99",
                        help="comma-separated percentiles of each metric, e.g. 50,90,99 (default: %(default)s)")
    report.add_argument("--save-result", action="store_true",
                        help="write the figures, settings and per-request timings as JSON (default: off)")
    report.add_argument("--result-dir", help="directory of the JSON file (default: the current one)")
    report.add_argument("--result-filename",
                        help="its name (default: {backend}-{rate}qps[-concurrency{N}]-{model}-{date}.json, as vLLM)")
    report.add_argument("--disable-tqdm", action="store_true", help="no progress bar (default: one on a terminal)")


def selected_report(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The metrics and percentiles ``--percentile-metrics`` / ``--metric-percentiles`` pick; refusals name them."""
    metrics = tuple(m.strip() for m in args.percentile_metrics.split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise PegboardError(f"--percentile-metrics: {', '.join(unknown)} unknown (known: {', '.join(METRICS)})")
    try:
        percentiles = tuple(float(p) for p in args.metric_percentiles.split(","))
    except ValueError:
        percentiles = ()
    if not percentiles or not all(0 <= p <= 100 for p in percentiles):
        raise PegboardError(f"--metric-percentiles must be numbers in [0, 100], got {args.metric_percentiles!r}")
    return metrics, percentiles


def server_url(args: argparse.Namespace) -> tuple[str, str]:
    """The base URL and the endpoint name (completions or chat) the flags name."""
    base = args.base_url or f"http://{args.host}:{args.port}"
    endpoint = BACKENDS[args.backend]
    if args.endpoint:
        by_path = {path: name for name, path in ENDPOINTS.items()}
        endpoint = by_path.get("/" + args.endpoint.strip("/"), args.endpoint if args.endpoint in ENDPOINTS else None)
        if endpoint is None:
            raise PegboardError(f"--endpoint {args.endpoint!r}: the routes are {', '.join(ENDPOINTS.values())}")
    return base, endpoint


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
    num_prompts = args.num_prompts or DATASET_DEFAULTS[args.dataset_name]
    if args.dataset_name == "random":
        try:
            return random_requests(vocab, num_prompts, input_len=args.random_input_len,
                                   output_len=args.random_output_len, seed=args.seed,
                                   range_ratio=args.random_range_ratio, prefix_len=args.random_prefix_len)
        except ValueError as exc:
            raise PegboardError(f"--random-*: {exc}") from None
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


async def benchmark(args: argparse.Namespace, requests: list[BenchRequest], tokenizer: Any, model: str,
                    base_url: str, endpoint: str) -> tuple[list[RequestResult], float]:
    """Check the endpoint with one short request, then run them all under a progress bar."""
    import httpx2
    from tqdm import tqdm

    url = endpoint_url(base_url, endpoint)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    def prompt(request: BenchRequest) -> str | list[int]:
        return tokenizer.decode(request.prompt_token_ids) if endpoint == "chat" else request.prompt_token_ids

    connections = httpx2.Limits(max_connections=args.max_concurrency or len(requests), max_keepalive_connections=None)
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(6 * 3600.0), limits=connections) as client:
        async def send_one(request: BenchRequest, output_len: int | None = None) -> RequestResult:
            body = request_body(endpoint, model, prompt(request), output_len or request.output_len,
                                ignore_eos=args.ignore_eos)
            return await send(client, url, body, headers, request.input_len)

        check = await send_one(requests[0], output_len=2)
        if not check.success:
            raise SystemExit(f"the first request to {url} failed: {check.error}")
        with tqdm(total=len(requests), desc="requests", unit="req", dynamic_ncols=True,
                  disable=True if args.disable_tqdm else None) as bar:
            async def counted(request: BenchRequest) -> RequestResult:
                result = await send_one(request)
                bar.update(1)
                return result

            return await run_requests(requests, counted, request_rate=args.request_rate,
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
    try:
        import httpx2  # noqa: F401 (the client's HTTP library: checked before any work)
    except ImportError:
        raise SystemExit("bench serve needs httpx2: pip install 'pegboard[server]'") from None
    metrics, percentiles = selected_report(args)
    base_url, endpoint = server_url(args)
    model = args.model or served_model(base_url, args.api_key)
    vocab, tokenizer = load_vocabulary(args.tokenizer or model, getattr(args, "plugins", None) or [])
    if endpoint == "chat" and tokenizer is None:
        raise SystemExit(f"the chat endpoint sends text prompts: {args.tokenizer or model} has no tokenizer "
                         "(name one with --tokenizer)")
    requests = build_requests(args, vocab)
    results, duration = asyncio.run(benchmark(args, requests, tokenizer, model, base_url, endpoint))
    summary = summarize(results, duration, percentiles)
    print(format_summary(summary, args.max_concurrency, args.request_rate, metrics))
    asked = sum(r.output_len for r, result in zip(requests, results) if result.success)
    if args.ignore_eos and summary["total_output_tokens"] != asked:
        print(f"warning: the server generated {summary['total_output_tokens']} tokens; {asked} were asked for")
    errors = sorted({r.error for r in results if not r.success})
    for error in errors[:5]:
        print(f"failed: {error}")
    if args.save_result:
        path = result_path(args, model)
        write_result(path, args, model, summary, results, metrics)
        print(f"wrote {path}")
    return 0 if summary["completed"] else 1
