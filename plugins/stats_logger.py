"""Built-in plugin: ``pegboard serve`` logs the engine's throughput and load every 10 s while it steps, as vLLM's
server does; ``--disable-log-stats`` turns it off. The server asks for it with ``config.extra["log_stats"]``;
offline engines (``LLM``, ``generate``) log none, as in vLLM."""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from pegboard.core.hookspecs import hookimpl

logger = logging.getLogger("pegboard.stats")

INTERVAL_SECONDS = 10.0  # vLLM's VLLM_LOG_STATS_INTERVAL default
OPTION = "log_stats"  # EngineConfig.extra key pegboard serve sets (core/settings.py SERVER_OPTIONS)


@dataclass
class StatsLog:
    """Tokens counted since the last line; a line once ``interval`` seconds have passed."""

    interval: float = INTERVAL_SECONDS
    since: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    generation_tokens: int = 0

    def observe(self, stats: Any, now: float | None = None) -> str | None:
        """Count one step; the line to log when the interval is over, else None."""
        self.prompt_tokens += stats.num_prompt_tokens
        self.generation_tokens += stats.num_generation_tokens
        now = time.monotonic() if now is None else now
        elapsed = now - self.since
        if elapsed < self.interval:
            return None
        line = (f"Avg prompt throughput: {self.prompt_tokens / elapsed:.1f} tokens/s, "
                f"Avg generation throughput: {self.generation_tokens / elapsed:.1f} tokens/s, "
                f"Running: {stats.num_running} reqs, Waiting: {stats.num_waiting} reqs, "
                f"KV cache usage: {100 * stats.kv_cache_usage:.1f}%")
        self.since, self.prompt_tokens, self.generation_tokens = now, 0, 0
        return line


_by_engine: weakref.WeakKeyDictionary[Any, StatsLog] = weakref.WeakKeyDictionary()


@hookimpl
def on_engine_start(engine: Any) -> None:
    if engine.config.extra.get(OPTION):  # pegboard serve without --disable-log-stats
        _by_engine[engine] = StatsLog()


@hookimpl
def on_step_end(stats: Any, engine: Any) -> None:
    log = _by_engine.get(engine)
    if log is not None and (line := log.observe(stats)) is not None:
        logger.info(line)
