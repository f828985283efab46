"""Built-in plugin: Prometheus metrics (``pegboard:*``) of each engine, served at ``GET /metrics``.

Every engine gets its own ``CollectorRegistry`` (two engines in one process never collide); the
observer hooks name their engine, so each figure lands in its own engine's registry.
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


def metrics_of(engine: Any) -> EngineMetrics | None:
    """The metrics of an ``LLMEngine`` (or of the ``AsyncLLMEngine`` around one), if it started with this plugin."""
    return _by_engine.get(getattr(engine, "engine", engine))


@hookimpl
def on_engine_start(engine: Any) -> None:
    try:
        from pegboard.plugins.prometheus_engine_metrics import EngineMetrics
    except ImportError as exc:  # a bare install (no server): `pegboard[server]` brings prometheus_client
        logger.debug("no Prometheus metrics for this engine: %s", exc)
        return
    _by_engine[engine] = EngineMetrics(engine)


@hookimpl
def on_step_end(stats: Any, engine: Any) -> None:
    metrics = _by_engine.get(engine)
    if metrics is not None:
        metrics.observe_step(stats)


@hookimpl
def on_request_finished(output: Any, engine: Any) -> None:
    metrics = _by_engine.get(engine)
    if metrics is not None:
        metrics.observe_finished(output)


@hookimpl
def register_routes(app: Any, engine: Any) -> None:
    metrics = metrics_of(engine)
    if metrics is not None:
        app.add_route("/metrics", metrics.endpoint, methods=["GET"], include_in_schema=False)
