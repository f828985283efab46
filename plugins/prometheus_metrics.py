"""Built-in plugin: Prometheus metrics (``pegboard:*``) of each engine, served at ``GET /metrics``.

Every engine gets its own ``CollectorRegistry`` (two engines in one process never collide). The
observer hooks receive no engine, so step and request figures go to the most recently started engine
that is still alive: exact with one engine per process, as a server has.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from pegboard.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from pegboard.plugins.prometheus_engine_metrics import EngineMetrics

logger = logging.getLogger("pegboard.metrics")

# LLMEngine -> its metrics; EngineMetrics holds the engine only weakly, so engines still get collected.
_by_engine: weakref.WeakKeyDictionary[Any, EngineMetrics] = weakref.WeakKeyDictionary()
_newest: weakref.ref | None = None  # the engine that observer hooks report to


def metrics_of(engine: Any) -> EngineMetrics | None:
    """The metrics of an ``LLMEngine`` (or of the ``AsyncLLMEngine`` around one), if it started with this plugin."""
    return _by_engine.get(getattr(engine, "engine", engine))


def _current() -> EngineMetrics | None:
    engine = _newest() if _newest is not None else None
    return None if engine is None else _by_engine.get(engine)


@hookimpl
def on_engine_start(engine: Any) -> None:
    global _newest
    try:
        from pegboard.plugins.prometheus_engine_metrics import EngineMetrics
    except ImportError as exc:  # a bare install (no server): `pegboard[server]` brings prometheus_client
        logger.debug("no Prometheus metrics for this engine: %s", exc)
        return
    _by_engine[engine] = EngineMetrics(engine)
    _newest = weakref.ref(engine)


@hookimpl
def on_step_end(stats: Any) -> None:
    metrics = _current()
    if metrics is not None:
        metrics.observe_step(stats)


@hookimpl
def on_request_finished(output: Any) -> None:
    metrics = _current()
    if metrics is not None:
        metrics.observe_finished(output)


@hookimpl
def register_routes(app: Any, engine: Any) -> None:
    metrics = metrics_of(engine)
    if metrics is not None:
        app.add_route("/metrics", metrics.endpoint, methods=["GET"], include_in_schema=False)
