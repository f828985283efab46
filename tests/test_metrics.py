"""The Prometheus metrics plugin: each engine's steps and finished requests become ``pegboard:*`` series
at ``GET /metrics``, labelled by model name."""

from __future__ import annotations

import subprocess
import sys
import timeit
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine, StepStats
from pegboard.core.outputs import RequestOutput
from pegboard.core.sampling_params import SamplingParams
from pegboard.plugins.prometheus_engine_metrics import model_name
from pegboard.plugins.prometheus_metrics import metrics_of

Samples = dict[tuple[str, frozenset], float]

METRICS = [
    "pegboard:num_requests_running", "pegboard:num_requests_waiting", "pegboard:kv_cache_usage_perc",
    "pegboard:prompt_tokens_total", "pegboard:generation_tokens_total", "pegboard:request_success_total",
    "pegboard:num_preemptions_total", "pegboard:time_to_first_token_seconds_count",
    "pegboard:inter_token_latency_seconds_count", "pegboard:e2e_request_latency_seconds_count",
    "pegboard:request_queue_time_seconds_count", "pegboard:iteration_tokens_total_count",
]


def start_engine(tiny_llama_dir, served_model_name: str = "tiny") -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(tiny_llama_dir), load_format="dummy", skip_tokenizer_init=True,
                                  num_kv_blocks=32, extra={"served_model_name": served_model_name}))


def run(engine: LLMEngine, requests: list[tuple[list[int], SamplingParams]]) -> list[RequestOutput]:
    """Step the engine until every request finished; their final outputs."""
    for i, (prompt, params) in enumerate(requests):
        engine.add_request(f"r{i}", prompt, params)
    finished = {}
    while engine.has_unfinished_requests():
        finished.update((o.request_id, o) for o in engine.step() if o.finished)
    return [finished[f"r{i}"] for i in range(len(requests))]


def scrape(engine: LLMEngine) -> Samples:
    """GET /metrics from a Starlette app whose routes the board's plugins added, as the server does."""
    app = Starlette()
    async_engine = AsyncLLMEngine(engine)
    try:
        engine.board.pm.hook.register_routes(app=app, engine=async_engine)
        response = TestClient(app).get("/metrics")
    finally:
        async_engine.shutdown()
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset({"model_name": "tiny", **labels}.items()))]


def test_every_metric_is_exposed_with_the_model_name_label(tiny_llama_dir):
    samples = scrape(start_engine(tiny_llama_dir))
    for name in METRICS:
        labelled = [labels for sample, labels in samples if sample == name]
        assert labelled and all(("model_name", "tiny") in labels for labels in labelled), name
    assert "pegboard:gpu_memory_used_bytes" not in {name for name, _ in samples}  # only where CUDA runs


def test_counts_add_up_after_requests_finish(tiny_llama_dir):
    engine = start_engine(tiny_llama_dir)
    outputs = run(engine, [
        ([1, 2, 3, 4, 5], SamplingParams(max_tokens=4, ignore_eos=True)),
        ([6, 7, 8, 9, 10, 11, 12, 13, 14], SamplingParams(max_tokens=6, ignore_eos=True)),
        ([15, 16, 17], SamplingParams(max_tokens=8, stop_token_ids=list(range(256)))),  # stops at its first token
    ])
    prompt_tokens, generated = 17, 4 + 6 + 1
    assert sum(len(o.outputs[0].token_ids) for o in outputs) == generated
    samples = scrape(engine)

    assert value(samples, "pegboard:prompt_tokens_total") == prompt_tokens
    assert value(samples, "pegboard:generation_tokens_total") == generated
    assert value(samples, "pegboard:request_success_total", finished_reason="length") == 2
    assert value(samples, "pegboard:request_success_total", finished_reason="stop") == 1
    assert value(samples, "pegboard:num_preemptions_total") == 0
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert value(samples, f"pegboard:{histogram}_count") == 3, histogram
    assert value(samples, "pegboard:inter_token_latency_seconds_count") == generated - 3  # gaps after the first
    # every prompt token is computed once, and every sampled token but the last is fed back in
    assert value(samples, "pegboard:iteration_tokens_total_sum") == prompt_tokens + generated - 3
    for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert value(samples, f"pegboard:{gauge}") == 0, gauge


def test_gauges_are_read_when_scraped_so_aborts_show_at_once(tiny_llama_dir):
    engine = start_engine(tiny_llama_dir)
    engine.add_request("a", [1, 2, 3], SamplingParams(max_tokens=50, ignore_eos=True))
    engine.add_request("b", [4, 5, 6], SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    during = scrape(engine)
    assert value(during, "pegboard:num_requests_running") == 2
    assert value(during, "pegboard:kv_cache_usage_perc") == 2 / 32
    engine.abort_request("a")
    engine.abort_request("b")
    after = scrape(engine)  # no step ran since the aborts
    assert value(after, "pegboard:num_requests_running") == 0
    assert value(after, "pegboard:kv_cache_usage_perc") == 0
    assert ("pegboard:request_success_total", frozenset({"model_name": "tiny", "finished_reason": "abort"}.items())) \
        not in after  # aborted requests are not successes


def test_two_engines_in_one_process_keep_separate_registries(tiny_llama_dir):
    first, second = start_engine(tiny_llama_dir, "first"), start_engine(tiny_llama_dir, "second")
    assert metrics_of(first).registry is not metrics_of(second).registry
    assert metrics_of(first).model_name == "first" and metrics_of(second).model_name == "second"
    run(first, [([1, 2, 3], SamplingParams(max_tokens=5, ignore_eos=True))])  # the older engine does the work
    first_samples, second_samples = scrape(first), scrape(second)
    tokens = "pegboard:generation_tokens_total"
    assert first_samples[(tokens, frozenset({"model_name": "first"}.items()))] == 5
    assert second_samples[(tokens, frozenset({"model_name": "second"}.items()))] == 0


def test_the_step_observer_is_cheap(tiny_llama_dir):
    """A busy decode step (64 sequences) costs the observer well under a millisecond."""
    metrics = metrics_of(start_engine(tiny_llama_dir))
    stats = StepStats(step_time=0.01, num_running=64, num_waiting=0, kv_cache_usage=0.5, num_prompt_tokens=0,
                      num_generation_tokens=64, num_preempted=0, num_batched_tokens=64,
                      inter_token_latency=[0.01] * 64)
    seconds = min(timeit.repeat(lambda: metrics.observe_step(stats), number=200, repeat=3)) / 200
    assert seconds < 1e-3


def test_importing_the_plugin_imports_neither_torch_nor_prometheus_client():
    code = ("import sys, pegboard.plugins.prometheus_metrics\n"
            "print(sorted({'torch', 'prometheus_client'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("served, expected", [(None, "model-dir"), ("chat", "chat"), (["a", "b"], "a")])
def test_the_model_name_label_prefers_the_served_model_name(served, expected):
    engine = SimpleNamespace(config=SimpleNamespace(extra={"served_model_name": served}),
                             files=SimpleNamespace(name="model-dir"))
    assert model_name(engine) == expected
