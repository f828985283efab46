"""Soak test for issue 8 (not in CI): one `pegboard serve`, hostile mixed load for N minutes, then the promises.

    python tests/soak/soak.py --minutes 10 [--json soak.json]

Runs together against one server on loopback: 64 ordinary clients (completions and chat, streamed or not, a
quarter of their requests hung up mid-stream and 5% given up before the answer), clients sending extreme
sampling values (200 or 400 only), oversized requests (400 or 413 as documented, at once), idle and trickling
raw sockets (the server must close them), and a greedy canary every 30 s whose text must never change. A
monitor samples the RSS of the HTTP process and of its engine-core child, the /metrics gauges and /health
every 5 s.

The exit status is 1 when a promise fails: an engine death, a 5xx other than 500 engine_step_failed, a status
outside a kind's documented set, a request that hangs, gauges not back to 0, RSS growth past the tolerance, a
changed canary, a socket left open past its deadline, a traceback in the server's log, or a SIGTERM that does
not exit 0. The parts: server.py (the process and its samples), clients.py (ordinary clients, canary),
hostile.py (extreme values, oversized requests, sockets), common.py (counters, request helpers); this file
runs them together and reports. What it found is in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2

from clients import canary_client, canary_text, check_canary, ordinary_client
from common import ACCEPTED_ERROR_CODE, MODEL, REQUEST_DEADLINE, Stats
from hostile import SOCKET_DEADLINES, extreme_client, oversized_client, socket_client
from server import (core_child, free_port, gauges_back_to_zero, monitor, sample, server_command, start_server,
                    stop_server, wait_healthy)

RSS_TOLERANCE_MIB, RSS_TOLERANCE_FRACTION = 64.0, 0.05  # "flat": end - warm <= max(64 MiB, 5% of warm)


async def run_load(url: str, proc: subprocess.Popen, args: argparse.Namespace, expected: str, stats: Stats
                   ) -> dict[str, Any]:
    """Every kind of client together for ``args.minutes``; then let the in-flight requests finish."""
    stop, started = asyncio.Event(), time.monotonic()
    tasks = [asyncio.create_task(ordinary_client(url, stop, i, stats)) for i in range(args.clients)]
    tasks += [asyncio.create_task(extreme_client(url, stop, 1000 + i, stats)) for i in range(args.extreme_clients)]
    tasks += [asyncio.create_task(oversized_client(url, stop, 2000 + i, stats)) for i in range(2)]
    tasks += [asyncio.create_task(socket_client(url, stop, mode, stats)) for mode in SOCKET_DEADLINES for _ in range(2)]
    tasks.append(asyncio.create_task(canary_client(url, stop, expected, stats)))
    watcher = asyncio.create_task(monitor(url, proc, stop, started, stats))
    await asyncio.sleep(args.minutes * 60)
    stop.set()
    load_seconds = time.monotonic() - started
    done, pending = await asyncio.wait(tasks, timeout=REQUEST_DEADLINE + 30)
    for task in pending:
        task.cancel()
    await watcher
    errors = [repr(t.exception()) for t in done if t.exception() is not None]
    stats.failures += [f"client task crashed: {e}" for e in errors]
    stats.failures += [f"{len(pending)} client task(s) still running {REQUEST_DEADLINE + 30:.0f} s after the stop"] \
        if pending else []
    drain_seconds = time.monotonic() - started - load_seconds
    return {"load_seconds": round(load_seconds, 1), "drain_seconds": round(drain_seconds, 1)}


def rss_summary(samples: list[dict], key: str, warmup_s: float, load_s: float) -> dict[str, Any]:
    """RSS after warm-up (median of the next minute) against the end of the load (median of its last minute)."""
    values = [(s["t"], s[key]) for s in samples if s.get(key) is not None]
    warm = [v for t, v in values if warmup_s <= t < warmup_s + 60] or [values[-1][1]]
    end = [v for t, v in values if load_s - 60 <= t <= load_s] or [values[-1][1]]
    warm_mib, end_mib = statistics.median(warm), statistics.median(end)
    tolerance = max(RSS_TOLERANCE_MIB, RSS_TOLERANCE_FRACTION * warm_mib)
    after = [(t, v) for t, v in values if warmup_s <= t <= load_s]
    slope = statistics.linear_regression(*zip(*after)).slope * 60 if len(after) > 2 else float("nan")
    return {"start_mib": round(values[0][1], 1), "warm_mib": round(warm_mib, 1), "end_mib": round(end_mib, 1),
            "peak_mib": round(max(v for _, v in values), 1), "growth_mib": round(end_mib - warm_mib, 1),
            "slope_mib_per_min": round(slope, 2), "tolerance_mib": round(tolerance, 1),
            "flat": end_mib - warm_mib <= tolerance}


def throughput(samples: list[dict], load_s: float) -> dict[str, float]:
    """Prompt and generated tokens the engine computed during the load, and generated tokens a second."""
    during = [s for s in samples if s.get("generation_tokens_total") is not None and s["t"] <= load_s]
    first, last = during[0], during[-1]
    seconds = max(last["t"] - first["t"], 1e-9)
    generated = last["generation_tokens_total"] - first["generation_tokens_total"]
    return {"prompt_tokens": last["prompt_tokens_total"] - first["prompt_tokens_total"],
            "generated_tokens": generated, "generated_per_s": round(generated / seconds, 1)}


def load_average(samples: list[dict]) -> dict[str, float]:
    """The machine's 1-minute load average over the samples."""
    loads = [s["load1"] for s in samples]
    return {"min": round(min(loads), 2), "mean": round(statistics.mean(loads), 2), "max": round(max(loads), 2)}


def log_findings(log: Path) -> dict[str, Any]:
    """Tracebacks and ERROR lines in the server's log."""
    lines = log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if " ERROR " in line or line.startswith("ERROR")]
    return {"lines": len(lines), "tracebacks": sum("Traceback" in line for line in lines),
            "error_lines": len(errors), "first_errors": errors[:5]}


def summarize(stats: Stats, args: argparse.Namespace, timing: dict, extra: dict) -> dict[str, Any]:
    """The report: counts by kind and status, deaths, 5xx, gauges, RSS, canary, sockets, shutdown."""
    sockets = {k: dict(c) for k, c in stats.statuses.items() if k.startswith("socket:")}
    close_times = {k: round(max(v), 1) for k, v in stats.latencies.items() if k.startswith("socket:") and v}
    latencies = {k: {"p50": round(statistics.median(v), 2), "max": round(max(v), 2)}
                 for k, v in sorted(stats.latencies.items()) if not k.startswith("socket:")}
    server_errors = Counter(f"{e['status']} {e['code']}" for e in stats.server_errors)
    return {"args": vars(args), **timing, **extra,
            "requests_by_kind": {k: dict(c) for k, c in sorted(stats.statuses.items())},
            "requests_total": sum(sum(c.values()) for c in stats.statuses.values()),
            "latency_s": latencies, "engine_deaths": stats.deaths, "server_errors": dict(server_errors),
            "server_error_examples": stats.server_errors[:5],
            "canary": {"checks": len(stats.canary), "unchanged": all(t == stats.canary[0] for t in stats.canary)},
            "sockets": sockets, "socket_seconds_to_close_max": close_times,
            "load_average": load_average(stats.samples),
            "failures": stats.failures[:50], "failure_count": len(stats.failures), "samples": stats.samples}


def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    """Each promise and whether it held."""
    return {"no engine deaths": not report["engine_deaths"],
            "no 5xx but engine_step_failed": all(k in (f"500 {ACCEPTED_ERROR_CODE}", f"event {ACCEPTED_ERROR_CODE}")
                                                 for k in report["server_errors"]),
            "every status as documented, no hang": report["failure_count"] == 0,
            "gauges back to 0": all(v == 0 for v in report["gauges_after"].values()),
            "http RSS flat": report["rss"]["http"]["flat"], "core RSS flat": report["rss"]["core"]["flat"],
            "canary unchanged": report["canary"]["unchanged"] and report["canary"]["checks"] > 0,
            "sockets closed by the server": not any("left_open" in c for c in report["sockets"].values()),
            "no traceback in the server log": report["log"]["tracebacks"] == 0,
            "SIGTERM exits 0": report["shutdown"]["exit_status"] == 0}


def print_report(report: dict[str, Any]) -> None:
    """The figures, readable."""
    print(f"\n== soak: {report['load_seconds']:.0f} s of load, {report['requests_total']} outcomes; {report['date']}, "
          f"{report['commit']}, {report['machine']} ==")
    for kind, statuses in report["requests_by_kind"].items():
        latency = report["latency_s"].get(kind)
        extra = f"  (latency p50 {latency['p50']} s, max {latency['max']} s)" if latency else ""
        print(f"  {kind:34s} {statuses}{extra}")
    print(f"engine tokens during the load: {report['engine_tokens']}")
    print(f"engine deaths: {len(report['engine_deaths'])} {report['engine_deaths'][:3]}")
    print(f"5xx / error events: {report['server_errors']} {report['server_error_examples'][:2]}")
    print(f"gauges after the load: {report['gauges_after']} ({report['gauges_seconds']} s after the drain)")
    for name, rss in report["rss"].items():
        print(f"RSS {name}: {rss}")
    print(f"canary: {report['canary']}; sockets closed by the server, slowest: {report['socket_seconds_to_close_max']}")
    print(f"load average (1 min): {report['load_average']}; server log: {report['server_log']}")
    print(f"shutdown: {report['shutdown']}; in the server log: {report['log']}")
    for failure in report["failures"][:20]:
        print(f"  FAIL {failure}")
    for promise, held in report["verdicts"].items():
        print(f"  [{'ok' if held else 'FAILED'}] {promise}")


async def soak(args: argparse.Namespace, url: str, proc: subprocess.Popen, log: Path) -> dict[str, Any]:
    """Canary reference, load, drain, gauges, shutdown: the report."""
    stats = Stats()
    async with httpx2.AsyncClient(base_url=url, timeout=REQUEST_DEADLINE) as client:
        expected = await canary_text(client)
    stats.canary.append(expected)
    print(f"canary: {expected!r}", flush=True)
    timing = await run_load(url, proc, args, expected, stats)
    gauges, waited = await gauges_back_to_zero(url)
    async with httpx2.AsyncClient(base_url=url, timeout=REQUEST_DEADLINE) as client:
        await check_canary(client, expected, stats)
        final = await sample(client, proc, time.monotonic(), stats)  # idle, after the load
    exit_status, exit_seconds = stop_server(proc)
    warmup = args.warmup_minutes * 60
    rss = {name: rss_summary(stats.samples, f"{name}_rss_mib", warmup, timing["load_seconds"])
           for name in ("http", "core")}
    for name in rss:
        rss[name]["idle_after_mib"] = final[f"{name}_rss_mib"]
    extra = {"engine_tokens": throughput(stats.samples, timing["load_seconds"]), "gauges_after": gauges,
             "gauges_seconds": round(waited, 1), "rss": rss, "server_log": str(log),
             "log": log_findings(log), "shutdown": {"exit_status": exit_status, "seconds": round(exit_seconds, 1)}}
    report = summarize(stats, args, timing, extra)
    report["verdicts"] = verdicts(report)
    return report


def git_commit() -> str:
    """The checkout's commit, and the tracked files that differ from it (the server runs the working tree)."""
    root = Path(__file__).resolve().parents[2]
    run = lambda *cmd: subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True).stdout.strip()
    changed = run("diff", "--name-only", "HEAD").split()
    return run("rev-parse", "--short", "HEAD") + (f" + changes to {', '.join(changed)}" if changed else "")


def parse_args() -> argparse.Namespace:
    """The soak's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default: 10)")
    parser.add_argument("--warmup-minutes", type=float, help="RSS is compared from here on (default: min(2, 1/5))")
    parser.add_argument("--clients", type=int, default=64, help="ordinary clients (default: 64)")
    parser.add_argument("--extreme-clients", type=int, default=4, help="clients sending extreme values (default: 4)")
    parser.add_argument("--model", default=MODEL, help=f"model to serve (default: {MODEL})")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="server flag (default: 32, for 2 CPU cores)")
    parser.add_argument("--kv-cache-memory-gb", type=float, default=1.0,
                        help="server flag (default: 1, under the 1 GiB above which a CPU cache is left untouched "
                             "until used: resident from the start, so RSS growth is not first touches)")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()
    if args.warmup_minutes is None:
        args.warmup_minutes = min(2.0, args.minutes / 5)
    return args


def main() -> int:
    """Start the server, soak it, report; 1 when a promise failed."""
    args = parse_args()
    commit, started = git_commit(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    port, log = free_port(), Path(tempfile.mkdtemp(prefix="pegboard-soak-")) / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port, log)
    try:
        print(f"pegboard serve: {' '.join(server_command(args, port)[2:])} (pid {proc.pid}); "
              f"healthy after {wait_healthy(url, proc):.1f} s; core pid {core_child(proc.pid)}", flush=True)
        report = asyncio.run(soak(args, url, proc, log))
    finally:
        if proc.poll() is None:
            stop_server(proc)
    report.update({"machine": f"{os.cpu_count()} CPUs, {os.uname().nodename}", "commit": commit, "date": started})
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0 if all(report["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
