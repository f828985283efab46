"""The server under test: start and stop `pegboard serve`, find its engine-core child, sample RSS, /metrics and
/health."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

from common import Stats

MONITOR_INTERVAL = 5.0


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(args: argparse.Namespace, port: int) -> list[str]:
    """The `pegboard serve` command line for this machine."""
    return [sys.executable, "-m", "pegboard.core.cli", "serve", args.model, "--host", "127.0.0.1", "--port", str(port),
            "--max-num-seqs", str(args.max_num_seqs), "--kv-cache-memory-gb", str(args.kv_cache_memory_gb),
            "--log-level", "warning"]


def start_server(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen:
    """Start `pegboard serve`, its output going to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(server_command(args, port), stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> float:
    """Seconds until /health answers 200; raises if the server exits or never gets there."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"pegboard serve exited with {proc.returncode} during start-up")
        try:
            if httpx2.get(url + "/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"pegboard serve not healthy after {timeout:.0f} s")


def core_child(pid: int) -> int | None:
    """The engine-core child of ``pid`` (the multiprocessing spawn child, not the resource tracker)."""
    children = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(c) for c in path.read_text().split()]
        except OSError:  # a thread that just ended
            continue
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    return None


def rss_mib(pid: int | None) -> float | None:
    """VmRSS of a process in MiB (None when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else None


GAUGES = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
COUNTERS = ("prompt_tokens_total", "generation_tokens_total")


def parse_gauges(text: str, names: tuple[str, ...] = GAUGES) -> dict[str, float]:
    """Values of pegboard:* series (the three gauges by default) from a /metrics page; NaN for one not there."""
    gauges = {}
    for name in names:
        match = re.search(rf"^pegboard:{name}\{{[^}}]*\}} (\S+)$", text, re.M)
        gauges[name] = float(match.group(1)) if match else float("nan")
    return gauges


def stop_server(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[int | None, float]:
    """SIGTERM the server; its exit status (None if it had to be killed) and seconds to exit."""
    started = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout), time.monotonic() - started
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, time.monotonic() - started


async def sample(client: httpx2.AsyncClient, proc: subprocess.Popen, started: float, stats: Stats) -> dict:
    """One monitor sample: RSS of both processes, gauges and token counters, /health; deaths are recorded."""
    core = core_child(proc.pid)
    first_core = stats.samples[0]["core_pid"] if stats.samples else core
    entry: dict[str, Any] = {"t": round(time.monotonic() - started, 1), "http_rss_mib": rss_mib(proc.pid),
                             "core_pid": core, "core_rss_mib": rss_mib(core), "load1": os.getloadavg()[0]}
    try:
        entry["health"] = (await client.get("/health")).status_code
        entry.update(parse_gauges((await client.get("/metrics")).text, GAUGES + COUNTERS))
    except httpx2.HTTPError as exc:
        entry["health"] = type(exc).__name__
    if proc.poll() is not None:
        stats.deaths.append(f"process exited with {proc.returncode} at t={entry['t']} s")
    elif core is None or core != first_core:
        stats.deaths.append(f"the engine-core child is {core}, was {first_core}, at t={entry['t']} s")
    elif entry["health"] != 200:
        stats.deaths.append(f"/health answered {entry['health']} at t={entry['t']} s")
    return entry


async def monitor(url: str, proc: subprocess.Popen, stop: asyncio.Event, started: float, stats: Stats) -> None:
    """Sample every MONITOR_INTERVAL until ``stop``, printing a line a minute."""
    async with httpx2.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            entry = await sample(client, proc, started, stats)
            stats.samples.append(entry)
            if len(stats.samples) % max(1, int(60 / MONITOR_INTERVAL)) == 1:
                print(f"  t={entry['t']:6.0f}s rss http {entry['http_rss_mib']:.0f} MiB, core "
                      f"{entry['core_rss_mib'] or 0:.0f} MiB; running {entry.get('num_requests_running')}, waiting "
                      f"{entry.get('num_requests_waiting')}, kv {entry.get('kv_cache_usage_perc')}; "
                      f"load {entry['load1']:.1f}; requests {sum(sum(c.values()) for c in stats.statuses.values())}",
                      flush=True)
            await asyncio.sleep(MONITOR_INTERVAL)


async def gauges_back_to_zero(url: str, timeout: float = 60.0) -> tuple[dict[str, float], float]:
    """Poll /metrics until the three gauges are 0; the last gauges and seconds waited."""
    started = time.monotonic()
    async with httpx2.AsyncClient(base_url=url, timeout=30) as client:
        while True:
            gauges = parse_gauges((await client.get("/metrics")).text)
            if all(v == 0 for v in gauges.values()) or time.monotonic() - started > timeout:
                return gauges, time.monotonic() - started
            await asyncio.sleep(0.5)
