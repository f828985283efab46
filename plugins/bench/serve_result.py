"""``bench serve --save-result``: the run's figures, settings and per-request timings as JSON, in vLLM's layout."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

from pegboard.plugins.bench.serve_stats import RequestResult


def result_path(args: argparse.Namespace, model: str, now: datetime.datetime | None = None) -> Path:
    """``--result-dir`` / ``--result-filename``, else vLLM's name:
    ``{backend}-{rate}qps[-concurrency{N}]-{model}-{YYYYmmdd-HHMMSS}.json``."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    concurrency = f"-concurrency{args.max_concurrency}" if args.max_concurrency is not None else ""
    default = f"{args.backend}-{args.request_rate}qps{concurrency}-{model.split('/')[-1]}-{stamp}.json"
    name = args.result_filename or default
    directory = Path(args.result_dir) if args.result_dir else Path()
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


def flat_figures(summary: dict[str, Any], metrics: tuple[str, ...]) -> dict[str, Any]:
    """vLLM's keys: ``mean_ttft_ms``, ``median_ttft_ms``, ``std_ttft_ms``, ``p99_ttft_ms``, ... for each metric."""
    figures = {key: value for key, value in summary.items() if not key.endswith("_ms")}
    figures["duration"] = figures.pop("duration_s")
    for metric in metrics:
        for stat, value in summary[f"{metric}_ms"].items():
            figures[f"{stat}_{metric}_ms"] = value
    return figures


def write_result(path: Path, args: argparse.Namespace, model: str, summary: dict[str, Any],
                 results: list[RequestResult], metrics: tuple[str, ...]) -> None:
    """The JSON file: date, settings (never the API key), figures, then one list per per-request field."""
    settings = {k: v for k, v in vars(args).items()
                if isinstance(v, (str, int, float, bool, type(None))) and k not in ("api_key", "run")}
    settings["request_rate"] = str(args.request_rate)  # JSON has no inf
    report = {"date": datetime.datetime.now().strftime("%Y%m%d-%H%M%S"), "backend": args.backend, "model_id": model,
              "num_prompts": len(results), "request_rate": str(args.request_rate),
              "max_concurrency": args.max_concurrency, "settings": settings, **flat_figures(summary, metrics),
              "input_lens": [r.prompt_len for r in results], "output_lens": [r.output_tokens for r in results],
              "ttfts": [r.ttft for r in results], "itls": [r.itl for r in results],
              "latencies": [r.latency for r in results], "errors": [r.error for r in results]}
    path.write_text(json.dumps(report, indent=2) + "\n")
