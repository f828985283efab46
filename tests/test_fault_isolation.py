"""A step that raises fails only its own requests: they end with an error (HTTP 500 in OpenAI's shape), their
blocks are freed, one line is logged, and the engine serves on. A device failure stops the engine, and
``pegboard serve`` then exits non-zero so that a supervisor restarts it.

The failures come from a throwaway sampler that raises when a request carries a marker seed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request

import httpx2
import pytest

from pegboard.core.async_engine import AsyncLLMEngine, EngineDeadError
from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.errors import RequestFailedError
from pegboard.core.plugins import load_board
from pegboard.core.sampling_params import SamplingParams
from pegboard.server.app import build_app
from pegboard.server.uvicorn_server import serving_in_thread

EXPLODING_SAMPLER = '''
from pegboard.core.hookspecs import hookimpl
from pegboard.plugins.default_sampler import make_sampler


class AcceleratorError(RuntimeError):
    """Named like torch's CUDA error: the device is gone."""


def make_exploding_sampler(vocab_size, device, seed):
    """The default sampler, raising while a row's request has seed 666 (a step error), seed 667 and two tokens
    (an error mid-stream) or seed 999 (a device failure)."""
    sampler = make_sampler(vocab_size, device, seed)
    sample = sampler.sample

    def exploding(logits, requests):
        seeds = {r.sampling_params.seed for r in requests}
        if 999 in seeds:
            raise AcceleratorError("CUDA error: an illegal memory access was encountered")
        if 666 in seeds or any(r.sampling_params.seed == 667 and r.num_output_tokens >= 2 for r in requests):
            raise ValueError("boom")
        return sample(logits, requests)

    sampler.sample = exploding
    return sampler


@hookimpl
def register_samplers(register):
    register("exploding", make_exploding_sampler)
'''

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
BAD = GREEDY.clone(seed=666)
DEVICE_FAILURE = GREEDY.clone(seed=999)


@pytest.fixture
def exploding(module_dir) -> str:
    return module_dir("exploding_sampler", EXPLODING_SAMPLER)


def make_engine(model, plugin: str, **options) -> LLMEngine:
    """The tiny random Llama on the CPU, sampling with the exploding sampler unless told otherwise."""
    options = {"sampler": "exploding", **options}
    config = EngineConfig(model=str(model), load_format="dummy", skip_tokenizer_init=True, device="cpu",
                          num_kv_blocks=32, **options)
    return LLMEngine(config, board=load_board([plugin]))


def run(engine: LLMEngine, requests: dict[str, SamplingParams]) -> dict:
    """Step until every request finished: request id -> its final RequestOutput."""
    for request_id, params in requests.items():
        engine.add_request(request_id, [1, 2, 3, int(request_id[-1])], params)
    final = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                final[output.request_id] = output
    return final


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_a_failing_step_ends_its_requests_and_the_engine_serves_on(tiny_llama_dir, exploding, caplog,
                                                                    async_scheduling):
    engine = make_engine(tiny_llama_dir, exploding, async_scheduling=async_scheduling)
    before = run(engine, {"a1": GREEDY, "a2": GREEDY})
    free_blocks = engine.block_manager.num_free_blocks
    with caplog.at_level(logging.ERROR, "pegboard.engine"):
        failed = run(engine, {"b1": BAD})
    [output] = failed.values()
    assert output.finished and output.outputs[0].finish_reason == "error"
    assert "failed" in output.error and "boom" not in output.error  # the client learns no internals
    assert [r.getMessage() for r in caplog.records if r.name == "pegboard.engine"] == [
        "a step of 1 requests failed, ending them: ValueError: boom"]
    assert engine.block_manager.num_free_blocks == free_blocks and not engine.output_processor.groups and not engine.scheduler.requests
    after = run(engine, {"a1": GREEDY, "a2": GREEDY})
    assert [o.outputs[0].token_ids for o in after.values()] == [o.outputs[0].token_ids for o in before.values()]


def test_the_requests_sharing_the_failed_step_fail_with_it(tiny_llama_dir, exploding):
    engine = make_engine(tiny_llama_dir, exploding)
    outputs = run(engine, {"a1": GREEDY.clone(n=2), "b2": BAD})
    assert {rid: [c.finish_reason for c in o.outputs] for rid, o in outputs.items()} == {
        "a1": ["error", "error"], "b2": ["error"]}
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_a_device_failure_stops_the_engine(tiny_llama_dir, exploding):
    engine = make_engine(tiny_llama_dir, exploding)
    engine.add_request("x", [1, 2, 3], DEVICE_FAILURE)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        engine.step()


def test_an_observer_that_raises_is_logged_once_and_steps_go_on(tiny_llama_dir, module_dir, caplog):
    plugin = module_dir("raising_observer", '''
from pegboard.core.hookspecs import hookimpl

@hookimpl
def on_step_end(stats):
    raise KeyError("metrics bug")
''')
    engine = make_engine(tiny_llama_dir, plugin, sampler="default")
    with caplog.at_level(logging.ERROR, "pegboard.engine"):
        outputs = run(engine, {"a1": GREEDY})
    assert outputs["a1"].outputs[0].finish_reason == "length"
    [record] = [r for r in caplog.records if r.name == "pegboard.engine"]
    assert "on_step_end observer raised KeyError" in record.getMessage()


async def collect(engine: AsyncLLMEngine, request_id: str, params: SamplingParams):
    outputs = [output async for output in engine.generate([1, 2, 3], params, request_id)]
    return outputs[-1]


def test_async_engine_answers_the_failed_request_and_keeps_running(tiny_llama_dir, exploding):
    engine = AsyncLLMEngine(make_engine(tiny_llama_dir, exploding))
    try:
        with pytest.raises(RequestFailedError):
            asyncio.run(collect(engine, "bad", BAD))
        assert engine.is_running
        assert asyncio.run(collect(engine, "good", GREEDY)).outputs[0].finish_reason == "length"
    finally:
        engine.shutdown()


def test_async_engine_dies_on_a_device_failure_and_says_so(tiny_llama_dir, exploding):
    engine = AsyncLLMEngine(make_engine(tiny_llama_dir, exploding))
    died: list[BaseException] = []
    engine.on_dead = died.append
    try:
        with pytest.raises(EngineDeadError):
            asyncio.run(collect(engine, "x", DEVICE_FAILURE))
        assert not engine.is_running and len(died) == 1
        with pytest.raises(EngineDeadError):
            asyncio.run(collect(engine, "later", GREEDY))
    finally:
        engine.shutdown()


def test_the_server_answers_500_and_goes_on_serving(tiny_llama_dir, exploding):
    engine = AsyncLLMEngine(make_engine(tiny_llama_dir, exploding))
    body = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0}
    try:
        with serving_in_thread(build_app(engine, ("tiny",))) as url, httpx2.Client(base_url=url) as client:
            failed = client.post("/v1/completions", json={**body, "seed": 666})
            assert failed.status_code == 500
            assert failed.json()["error"]["type"] == "server_error"
            assert failed.json()["error"]["code"] == "engine_step_failed"
            assert client.post("/v1/completions", json={**body, "seed": 666, "stream": True}).status_code == 500
            streamed = client.post("/v1/completions", json={**body, "seed": 667, "stream": True})
            events = [line for line in streamed.text.splitlines() if line]
            assert streamed.status_code == 200 and len(events) == 4  # two tokens, the error, [DONE]
            assert json.loads(events[-2][6:])["error"]["code"] == "engine_step_failed"
            assert events[-1] == "data: [DONE]"
            assert client.get("/health").status_code == 200
            assert client.post("/v1/completions", json=body).json()["choices"][0]["finish_reason"] == "length"
    finally:
        engine.shutdown()


def test_serve_exits_non_zero_after_a_device_failure(tiny_llama_dir, exploding, module_dir, free_port):
    pythonpath = os.pathsep.join(filter(None, [str(module_dir.path), os.environ.get("PYTHONPATH")]))  # no "" entry
    env = {**os.environ, "PYTHONPATH": pythonpath}
    url = f"http://127.0.0.1:{free_port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "pegboard.core.cli", "serve", str(tiny_llama_dir), "--load-format", "dummy",
         "--skip-tokenizer-init", "--device", "cpu", "--host", "127.0.0.1", "--port", str(free_port),
         "--plugin", exploding, "--sampler", "exploding", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not _answers(url + "/health"):
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
            time.sleep(0.1)
        body = json.dumps({"prompt": [1, 2], "max_tokens": 2, "seed": 999}).encode()
        request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=30)
        assert answer.value.code == 503
        assert process.wait(timeout=60) == 1
        assert b"exiting with status 1" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=1).status == 200
    except OSError:
        return False
