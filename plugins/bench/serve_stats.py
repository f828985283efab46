"""``bench serve`` figures from per-request timings, defined as vLLM's ``bench serve`` defines them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (99.0,)  # --metric-percentiles' default
METRICS = ("ttft", "tpot", "itl", "e2el")  # what --percentile-metrics may select
TITLES = {"ttft": ("Time to First Token", "TTFT"), "tpot": ("Time per Output Token (excl. 1st token)", "TPOT"),
          "itl": ("Inter-token Latency", "ITL"), "e2el": ("End-to-end Latency", "E2EL")}


@dataclass
class RequestResult:
    """One streamed request as the client saw it (seconds, from the moment it was sent)."""

    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0  # until the first chunk with content
    latency: float = 0.0  # until the stream ended
    itl: list[float] = field(default_factory=list)  # gaps between successive content chunks
    error: str = ""


def percentile_name(p: float) -> str:
    """``p99`` for 99, ``p99.9`` for 99.9, as vLLM names them."""
    return f"p{int(p)}" if int(p) == p else f"p{p}"


def distribution(seconds: list[float], percentiles: tuple[float, ...] = PERCENTILES) -> dict[str, float]:
    """Mean, median, standard deviation and percentiles in milliseconds (zeros for no values, as vLLM)."""
    import numpy as np

    values = np.asarray(seconds or [0.0], dtype=np.float64) * 1000
    figures = {"mean": float(values.mean()), "median": float(np.median(values)), "std": float(values.std())}
    figures.update({percentile_name(p): float(np.percentile(values, p)) for p in percentiles})
    return figures


def tpot(result: RequestResult) -> float | None:
    """Time per output token after the first: (latency - TTFT) / (output tokens - 1); None for one token."""
    if result.output_tokens < 2:
        return None
    return (result.latency - result.ttft) / (result.output_tokens - 1)


def summarize(results: list[RequestResult], duration: float,
              percentiles: tuple[float, ...] = PERCENTILES) -> dict[str, Any]:
    """Counts, throughputs and TTFT / TPOT / ITL / E2EL distributions over the successful requests."""
    done = [r for r in results if r.success]
    input_tokens = sum(r.prompt_len for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    tpots = [t for t in map(tpot, done) if t is not None]
    return {
        "duration_s": duration,
        "completed": len(done),
        "failed": len(results) - len(done),
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(done) / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (input_tokens + output_tokens) / duration,
        "ttft_ms": distribution([r.ttft for r in done], percentiles),
        "tpot_ms": distribution(tpots, percentiles),
        "itl_ms": distribution([gap for r in done for gap in r.itl], percentiles),
        "e2el_ms": distribution([r.latency for r in done], percentiles),
    }


def format_summary(summary: dict[str, Any], max_concurrency: int | None, request_rate: float,
                   metrics: tuple[str, ...] = ("ttft", "tpot", "itl")) -> str:
    """The summary laid out as vLLM's ``bench serve`` prints it, with the ``metrics`` selected."""
    lines = [f"{' Serving Benchmark Result ':=^50}"]

    def row(label: str, value: Any) -> None:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{label:<40} {text:<10}")

    row("Successful requests:", summary["completed"])
    row("Failed requests:", summary["failed"])
    if max_concurrency is not None:
        row("Maximum request concurrency:", max_concurrency)
    if request_rate != float("inf"):
        row("Request rate configured (RPS):", float(request_rate))
    row("Benchmark duration (s):", summary["duration_s"])
    row("Total input tokens:", summary["total_input_tokens"])
    row("Total generated tokens:", summary["total_output_tokens"])
    row("Request throughput (req/s):", summary["request_throughput"])
    row("Output token throughput (tok/s):", summary["output_throughput"])
    row("Total token throughput (tok/s):", summary["total_token_throughput"])
    for metric in METRICS:  # vLLM's order, whatever the order asked for
        if metric not in metrics:
            continue
        title, short = TITLES[metric]
        lines.append(f"{title:-^50}")
        for stat, figure in summary[f"{metric}_ms"].items():
            if stat != "std":
                row(f"{stat.capitalize() if stat in ('mean', 'median') else stat.upper()} {short} (ms):", figure)
    lines.append("=" * 50)
    return "\n".join(lines)
