"""One engine's Prometheus metrics in its own registry (imported only when an engine starts)."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Bucket boundaries as vLLM's, so dashboards built for vllm:* work on pegboard:* unchanged.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


def model_name(engine: Any) -> str:
    """The server's served model name when it set one (``config.extra``), else the name the model was loaded by."""
    served = engine.config.extra.get("served_model_name")
    if isinstance(served, (list, tuple)):
        served = served[0] if served else None
    return served or engine.files.name


def iteration_token_buckets(max_num_batched_tokens: int) -> list[int]:
    """Powers of two up to the step's token budget, and the budget itself."""
    return sorted({*(2 ** k for k in range(max_num_batched_tokens.bit_length())), max_num_batched_tokens})


class EngineMetrics:
    """The ``pegboard:*`` families of one engine, each bound to its ``model_name`` label."""

    def __init__(self, engine: Any) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name(engine)
        self._labels = {"model_name": self.model_name}
        self._live_gauges(weakref.ref(engine))
        self._prompt_tokens = self._counter("pegboard:prompt_tokens", "Prefill tokens computed.")
        self._generation_tokens = self._counter("pegboard:generation_tokens", "Tokens generated.")
        self._preemptions = self._counter("pegboard:num_preemptions", "Requests preempted (their KV freed).")
        self._success_family = Counter("pegboard:request_success", "Requests finished on their own, by reason.",
                                       ["model_name", "finished_reason"], registry=self.registry)
        self._success = {reason: self._success_family.labels(self.model_name, reason) for reason in ("stop", "length")}
        self._ttft = self._histogram("pegboard:time_to_first_token_seconds", "Time from arrival to first token.",
                                     TTFT_BUCKETS)
        self._itl = self._histogram("pegboard:inter_token_latency_seconds", "Time between successive tokens.",
                                    ITL_BUCKETS)
        self._e2e = self._histogram("pegboard:e2e_request_latency_seconds", "Time from arrival to finish.",
                                    REQUEST_LATENCY_BUCKETS)
        self._queue = self._histogram("pegboard:request_queue_time_seconds", "Time from arrival to first scheduled.",
                                      REQUEST_LATENCY_BUCKETS)
        self._iteration_tokens = self._histogram("pegboard:iteration_tokens_total", "Tokens in one engine step.",
                                                 iteration_token_buckets(engine.max_num_batched_tokens))

    def _counter(self, name: str, doc: str) -> Any:
        return Counter(name, doc, ["model_name"], registry=self.registry).labels(**self._labels)

    def _histogram(self, name: str, doc: str, buckets: Any) -> Any:
        return Histogram(name, doc, ["model_name"], registry=self.registry, buckets=buckets).labels(**self._labels)

    def _gauge(self, name: str, doc: str, read: Callable[[], float], **labels: str) -> None:
        family = Gauge(name, doc, [*self._labels, *labels], registry=self.registry)
        family.labels(**self._labels, **labels).set_function(read)

    def _live_gauges(self, engine_ref: weakref.ref) -> None:
        """Gauges read the engine's latest gauges message (sent after every step and every abort) when scraped."""
        def read(attribute: Callable[[Any], float]) -> Callable[[], float]:
            return lambda: 0.0 if (engine := engine_ref()) is None else attribute(engine)

        self._gauge("pegboard:num_requests_running", "Sequences in the running batch.",
                    read(lambda engine: engine.gauges.num_running))
        self._gauge("pegboard:num_requests_waiting", "Sequences waiting to be scheduled.",
                    read(lambda engine: engine.gauges.num_waiting))
        self._gauge("pegboard:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0 to 1).",
                    read(lambda engine: engine.gauges.kv_cache_usage))
        device = _cuda_device(engine_ref())
        if device is not None:
            torch = sys.modules["torch"]
            self._gauge("pegboard:gpu_memory_used_bytes", "GPU memory held by this process's allocator.",
                        lambda: torch.cuda.memory_reserved(device), device=str(device))

    def observe_step(self, stats: Any) -> None:
        """Count one step's tokens and preemptions; observe its TTFTs and inter-token gaps."""
        self._prompt_tokens.inc(stats.num_prompt_tokens)
        self._generation_tokens.inc(stats.num_generation_tokens)
        if stats.num_preempted:
            self._preemptions.inc(stats.num_preempted)
        self._iteration_tokens.observe(stats.num_batched_tokens)
        for seconds in stats.time_to_first_token:
            self._ttft.observe(seconds)
        for seconds in stats.inter_token_latency:
            self._itl.observe(seconds)

    def observe_finished(self, output: Any) -> None:
        """Count each finished sequence by reason; observe the request's end-to-end and queue times."""
        for completion in output.outputs:
            reason = completion.finish_reason
            if reason not in self._success:
                self._success[reason] = self._success_family.labels(self.model_name, reason)
            self._success[reason].inc()
        times = output.metrics
        if times is None:
            return
        if times.finished_time is not None:
            self._e2e.observe(times.finished_time - times.arrival_time)
        if times.first_scheduled_time is not None:
            self._queue.observe(times.first_scheduled_time - times.arrival_time)

    def endpoint(self, request: Any) -> Any:
        """``GET /metrics``: the registry in Prometheus' text format (sync: Starlette runs it in a thread)."""
        from starlette.responses import Response

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _cuda_device(engine: Any) -> Any:
    """The engine's CUDA device, or None on CPU (torch is already imported: the engine loaded a model)."""
    torch = sys.modules.get("torch")
    if torch is None or engine.config.device == "cpu" or not torch.cuda.is_available():
        return None
    return torch.device(engine.config.device if engine.config.device.startswith("cuda") else "cuda")
