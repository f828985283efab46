"""``pegboard bench serve``: vLLM's serving figures from per-request timings, and a run against a fake server."""

from __future__ import annotations

import asyncio
import io
import json
import math
import socket
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from pegboard.plugins.bench.data import BenchRequest
from pegboard.plugins.bench.serve import arrival_gaps, run_requests
from pegboard.plugins.bench.serve_client import carries_tokens, endpoint_url, request_body, send
from pegboard.plugins.bench.serve_stats import RequestResult, distribution, summarize, tpot
from pegboard.core.cli import main

# ---- the figures ---------------------------------------------------------------------------------------


def test_tpot_is_the_time_after_the_first_token_per_further_token():
    assert tpot(RequestResult(success=True, output_tokens=5, ttft=0.2, latency=1.0)) == pytest.approx(0.2)
    assert tpot(RequestResult(success=True, output_tokens=1, ttft=0.2, latency=0.2)) is None


def test_summary_pools_successful_requests_and_counts_failures():
    results = [
        RequestResult(success=True, prompt_len=10, output_tokens=3, ttft=0.1, latency=0.5, itl=[0.2, 0.2]),
        RequestResult(success=True, prompt_len=20, output_tokens=2, ttft=0.3, latency=0.4, itl=[0.1]),
        RequestResult(success=False, prompt_len=99, error="HTTP 503"),
    ]
    summary = summarize(results, duration=2.0)
    assert (summary["completed"], summary["failed"]) == (2, 1)
    assert (summary["total_input_tokens"], summary["total_output_tokens"]) == (30, 5)
    assert summary["request_throughput"] == 1.0
    assert summary["output_throughput"] == 2.5
    assert summary["total_token_throughput"] == 17.5
    assert summary["ttft_ms"]["mean"] == pytest.approx(200) and summary["ttft_ms"]["median"] == pytest.approx(200)
    assert summary["tpot_ms"]["mean"] == pytest.approx(150)  # per request: 400/2 and 100/1 ms
    assert summary["itl_ms"]["mean"] == pytest.approx(500 / 3)  # the three gaps pooled
    assert summary["itl_ms"]["p99"] == pytest.approx(200)
    assert summary["e2el_ms"]["median"] == pytest.approx(450)


def test_p99_interpolates_like_numpy_and_no_values_give_zeros():
    assert distribution([i / 1000 for i in range(101)])["p99"] == pytest.approx(99)
    assert distribution([]) == {"mean": 0.0, "median": 0.0, "std": 0.0, "p99": 0.0}


# ---- requests ------------------------------------------------------------------------------------------


def test_requests_go_to_the_endpoint_with_fixed_output_lengths():
    assert endpoint_url("http://h:1", "completions") == "http://h:1/v1/completions"
    assert endpoint_url("http://h:1/v1/", "chat") == "http://h:1/v1/chat/completions"
    completion = request_body("completions", "m", [1, 2, 3], 7)
    assert completion["prompt"] == [1, 2, 3] and completion["max_tokens"] == 7
    chat = request_body("chat", "m", "hi", 7)
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and chat["max_completion_tokens"] == 7
    for body in (completion, chat):
        assert body["stream"] and body["stream_options"] == {"include_usage": True}


def test_a_chunk_of_tokens_counts_even_when_its_text_is_empty():
    assert carries_tokens({"choices": [{"text": ""}]})  # a special token, or an id the tokenizer lacks
    assert carries_tokens({"choices": [{"delta": {"content": ""}}]})
    assert not carries_tokens({"choices": [{"delta": {"role": "assistant", "content": ""}}]})  # chat's first chunk
    assert not carries_tokens({"choices": [], "usage": {"completion_tokens": 3}})


def run_schedule(num: int, request_rate: float, max_concurrency: int | None) -> tuple[list[float], int]:
    """Start times of ``num`` requests that each take 20 ms, and the most that were in flight at once."""
    starts: list[float] = []
    in_flight = [0, 0]  # now, most

    async def fake_send(request: BenchRequest) -> RequestResult:
        starts.append(time.perf_counter())
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        await asyncio.sleep(0.02)
        in_flight[0] -= 1
        return RequestResult(success=True)

    requests = [BenchRequest([1], 1)] * num
    asyncio.run(run_requests(requests, fake_send, request_rate=request_rate, max_concurrency=max_concurrency,
                             seed=0))
    return [s - starts[0] for s in starts], in_flight[1]


def test_request_rate_inf_sends_everything_at_once():
    starts, most = run_schedule(16, math.inf, None)
    assert most == 16 and max(starts) < 0.02


def test_max_concurrency_caps_requests_in_flight():
    assert run_schedule(16, math.inf, 4)[1] == 4


def test_a_finite_rate_gives_poisson_arrivals():
    gaps = arrival_gaps(4001, 4.0, seed=1)
    assert gaps[0] == 0 and statistics.mean(gaps[1:]) == pytest.approx(0.25, rel=0.05)  # 1 / rate
    assert statistics.stdev(gaps[1:]) == pytest.approx(0.25, rel=0.1)  # exponential: stdev == mean
    assert arrival_gaps(5, math.inf, seed=1) == [0.0] * 5
    assert arrival_gaps(5, 4.0, seed=1) == arrival_gaps(5, 4.0, seed=1) != arrival_gaps(5, 4.0, seed=2)


# ---- against a fake OpenAI server ----------------------------------------------------------------------


def fake_openai_app(fail_every: int) -> Starlette:
    """Streams one chunk per requested token, then usage and [DONE]; answers 503 to every ``fail_every``-th call."""
    calls = [0]

    async def generate(request: Request):
        calls[0] += 1
        if calls[0] % fail_every == 0:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        body = await request.json()
        chat = "messages" in body
        n = body["max_completion_tokens"] if chat else body["max_tokens"]

        async def events() -> AsyncIterator[str]:
            if chat:
                yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            for _ in range(n):
                await asyncio.sleep(0.002)
                choice = {"index": 0, "delta": {"content": "x"}} if chat else {"index": 0, "text": "x"}
                yield "\n\ndata: " + json.dumps({"choices": [choice]})
            usage = {"prompt_tokens": 5 if chat else len(body["prompt"]), "completion_tokens": n}
            yield "\n\ndata: " + json.dumps({"choices": [], "usage": usage}) + "\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    return Starlette(routes=[Route("/v1/completions", generate, methods=["POST"]),
                             Route("/v1/chat/completions", generate, methods=["POST"]),
                             Route("/v1/models", models)])


@pytest.fixture
def fake_server() -> Iterator[str]:
    """A fake server on a free loopback port (uvicorn in a thread); yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(fake_openai_app(fail_every=4), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def test_bench_serve_against_a_fake_server_counts_tokens_and_failures(fake_server, tiny_llama_dir, tmp_path,
                                                                      capsys):
    assert main(["bench", "serve", "--base-url", fake_server, "--tokenizer", str(tiny_llama_dir),
                 "--dataset-name", "mixed", "--num-prompts", "8", "--min-input-len", "4", "--max-input-len", "12",
                 "--min-output-len", "2", "--max-output-len", "6", "--max-concurrency", "3", "--ignore-eos",
                 "--save-result", "--result-dir", str(tmp_path / "results"), "--result-filename", "serve.json"]) == 0
    printed = capsys.readouterr().out
    assert "Serving Benchmark Result" in printed and "P99 ITL (ms):" in printed and "E2EL" not in printed
    report = json.loads((tmp_path / "results" / "serve.json").read_text())
    assert report["model_id"] == "fake-model"  # from /v1/models
    assert (report["completed"], report["failed"]) == (6, 2)  # after the check request, calls 4 and 8 get 503
    done = [i for i, error in enumerate(report["errors"]) if not error]
    assert report["total_output_tokens"] == sum(report["output_lens"][i] for i in done)
    assert report["total_input_tokens"] == sum(report["input_lens"][i] for i in done)
    assert all(len(report["itls"][i]) == report["output_lens"][i] - 1 for i in done)
    assert report["mean_ttft_ms"] > 0 and report["p99_tpot_ms"] > 0 and "mean_e2el_ms" not in report  # vLLM's keys
    assert "api_key" not in report["settings"]


def test_vllm_bench_serve_flags_pick_the_server_the_figures_and_the_file(fake_server, tiny_chat_model, tmp_path,
                                                                         monkeypatch, capsys):
    port = fake_server.rsplit(":", 1)[1]
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "serve", "--host", "127.0.0.1", "--port", port, "--endpoint", "/v1/chat/completions",
                 "--model", "fake-model", "--tokenizer", str(tiny_chat_model), "--dataset-name", "random",
                 "--random-input-len", "6", "--random-output-len", "3", "--num-prompts", "5", "--request-rate", "50",
                 "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "50,99.9", "--save-result"]) == 0
    printed = capsys.readouterr().out
    assert "Request rate configured (RPS):           50.00" in printed
    assert "P50 TTFT (ms):" in printed and "P99.9 E2EL (ms):" in printed and "TPOT" not in printed
    [saved] = tmp_path.glob("*.json")
    assert saved.name.startswith("openai-50.0qps-fake-model-")  # vLLM's name: {backend}-{rate}qps-{model}-{date}
    report = json.loads(saved.read_text())
    assert report["num_prompts"] == 5 and "p99.9_e2el_ms" in report and report["completed"] == 4


@pytest.mark.parametrize("argv, message", [
    (["--percentile-metrics", "ttft,goodput"], "--percentile-metrics: goodput unknown"),
    (["--metric-percentiles", "101"], "--metric-percentiles must be numbers in"),
    (["--endpoint", "/v1/embeddings"], "--endpoint '/v1/embeddings': the routes are"),
])
def test_bad_report_and_endpoint_flags_are_one_line_errors(argv, message, capsys):
    assert main(["bench", "serve", "--base-url", "http://127.0.0.1:1", *argv]) == 2
    assert message in capsys.readouterr().err


def test_ignore_eos_is_sent_only_when_asked_for():
    assert "ignore_eos" not in request_body("completions", "m", [1], 4)
    assert request_body("completions", "m", [1], 4, ignore_eos=True)["ignore_eos"] is True


@pytest.mark.parametrize("disabled", [False, True])
def test_a_progress_bar_counts_requests_on_a_terminal(fake_server, tiny_llama_dir, monkeypatch, capsys, disabled):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["bench", "serve", "--base-url", fake_server, "--model", "m", "--tokenizer", str(tiny_llama_dir),
                 "--random-input-len", "4", "--random-output-len", "2", "--num-prompts", "3",
                 *(["--disable-tqdm"] if disabled else [])]) == 0
    assert ("requests: 100%" in terminal.getvalue()) == (not disabled)


def test_chat_streams_time_the_first_content_not_the_role_chunk(fake_server):
    async def one() -> RequestResult:
        import httpx2

        async with httpx2.AsyncClient() as client:
            return await send(client, endpoint_url(fake_server, "chat"), request_body("chat", "m", "hi", 4), {}, 2)

    result = asyncio.run(one())
    assert result.success and result.output_tokens == 4 and result.prompt_len == 5  # the server's usage counts
    assert len(result.itl) == 3 and result.ttft > 0
    assert result.latency == pytest.approx(result.ttft + sum(result.itl))  # latency ends at the last content


def test_an_unreachable_server_is_a_clean_error(tiny_llama_dir):
    with pytest.raises(SystemExit, match="could not read the model name .* pass --model"):
        main(["bench", "serve", "--base-url", "http://127.0.0.1:1"])
    with pytest.raises(SystemExit, match="the first request to http://127.0.0.1:1/v1/completions failed"):
        main(["bench", "serve", "--base-url", "http://127.0.0.1:1", "--model", "m", "--tokenizer", str(tiny_llama_dir),
              "--num-prompts", "2", "--random-input-len", "4", "--random-output-len", "2"])
