"""Triton compiles after the engine's warm-up, logged as warnings: each one stalled the step that met it.

Triton compiles a kernel once per argument specialization (constexprs, dtypes, integer arguments equal to 1 or
divisible by 16, pointers aligned to 16 bytes or not). Warm-up (the profile run and graph capture) should meet
every variant serving will; a variant first met under load costs that step a compile of up to a second, which
shows as a P99 time-to-first-token outlier. This watch names the kernel and its signature when that happens.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

logger = logging.getLogger("pegboard.kernels")


class CompileWatch:
    """Triton's JIT cache-miss and post-compile hooks, chained in front of any hooks already installed."""

    def __init__(self) -> None:
        self.warmed_up = False
        self.late_compiles: list[tuple[str, float]] = []  # (kernel signature, seconds), after warm-up
        self._started: dict[str, float] = {}
        self._previous: tuple[Callable[..., Any] | None, Callable[..., Any] | None] = (None, None)

    def install(self, runtime: Any) -> None:
        """Hook into ``triton.knobs.runtime`` (once)."""
        self._previous = (runtime.jit_cache_hook, runtime.jit_post_compile_hook)
        runtime.jit_cache_hook = self.on_cache_miss
        runtime.jit_post_compile_hook = self.on_compiled

    def on_cache_miss(self, **kwargs: Any) -> bool | None:
        """A kernel variant not in this process's cache is about to be built (compiled or read from disk)."""
        self._started[kwargs.get("repr", "?")] = time.perf_counter()
        previous = self._previous[0]
        return previous(**kwargs) if previous else None  # True from a hook would skip the compile: only theirs

    def on_compiled(self, **kwargs: Any) -> bool | None:
        """The variant is built: after warm-up, say which kernel stalled a step and for how long."""
        signature = kwargs.get("repr", "?")
        seconds = time.perf_counter() - self._started.pop(signature, time.perf_counter())
        if self.warmed_up:
            self.late_compiles.append((signature, seconds))
            logger.warning("Triton built a kernel variant after warm-up (%.2f s, a stalled step): %s",
                           seconds, signature)
        previous = self._previous[1]
        return previous(**kwargs) if previous else None


_watch: CompileWatch | None = None


def watch_triton_compiles() -> CompileWatch | None:
    """Start watching (idempotent); None where this Triton has no JIT hooks."""
    global _watch
    if _watch is None:
        import triton

        runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
        if runtime is None or not hasattr(runtime, "jit_post_compile_hook"):
            logger.debug("triton %s has no JIT hooks: compiles after warm-up are not logged", triton.__version__)
            return None
        _watch = CompileWatch()
        _watch.install(runtime)
    return _watch
