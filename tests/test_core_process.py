"""The engine core in its own process: the same tokens as in-process, a front end that holds no model, and a
core that dies makes requests fail at once (and ``pegboard serve`` exit non-zero), never hang."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time

import httpx2
import pytest

from pegboard.core.async_engine import AsyncLLMEngine, EngineDeadError
from pegboard.core.config import EngineConfig
from pegboard.core.core_client import CoreProcessClient
from pegboard.core.engine import LLMEngine
from pegboard.core.messages import EngineCoreRequest
from pegboard.core.sampling_params import SamplingParams
from pegboard.server.app import build_app
from pegboard.server.uvicorn_server import serving_in_thread

PROMPTS = ["Hello there", "The quick brown fox jumps over the lazy dog " * 2, "a", "Tell me a story about Pegboard",
           "0123456789" * 4, "Why?", "x y z", "Once upon a time, in a land far away, there lived"]
PARAMS = [
    SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
    SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=20),
    SamplingParams(temperature=0.0, max_tokens=30, prompt_logprobs=2),
    SamplingParams(temperature=1.0, top_k=5, seed=3, max_tokens=25, stop=["e", "z"]),
    SamplingParams(temperature=0.0, max_tokens=16, logprobs=3),
    SamplingParams(temperature=0.7, seed=11, n=2, max_tokens=10, min_tokens=4, stop_token_ids=[5, 6]),
    SamplingParams(temperature=0.0, max_tokens=14, repetition_penalty=1.3, frequency_penalty=0.5),
    SamplingParams(temperature=0.9, seed=5, max_tokens=1),
]
TIGHT = {"num_kv_blocks": 32, "block_size": 4, "max_model_len": 128, "max_num_batched_tokens": 48}


def config(model, **options) -> EngineConfig:
    return EngineConfig(model=str(model), load_format="dummy", device="cpu", **options)


def run(engine: LLMEngine, abort: str | None = None) -> dict:
    """Every prompt with its params; ``abort`` is aborted after its first output. Final outputs by id."""
    for i, (prompt, params) in enumerate(zip(PROMPTS, PARAMS)):
        engine.add_request(str(i), prompt, params)
    final = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.request_id == abort:
                engine.abort_request(abort)
            elif output.finished:
                final[output.request_id] = output
    return final


def summary(outputs: dict) -> dict:
    return {rid: ([(c.token_ids, c.text, c.finish_reason, c.stop_reason, c.logprobs) for c in o.outputs],
                  o.prompt_logprobs, o.num_cached_tokens) for rid, o in outputs.items()}


@pytest.mark.parametrize("options", [{}, TIGHT], ids=["roomy", "tight"])
def test_a_core_process_gives_the_tokens_of_the_in_process_core(tiny_chat_model, options):
    expected = summary(run(LLMEngine(config(tiny_chat_model, **options))))
    client = CoreProcessClient(config(tiny_chat_model, **options))
    try:
        engine = LLMEngine(config(tiny_chat_model, **options), core=client)
        assert summary(run(engine)) == expected
        if options:
            assert engine.gauges == (0, 0, 0.0) or engine.gauges.num_running == 0
        aborted = run(engine, abort="3")
        assert "3" not in aborted and summary(aborted) == {k: v for k, v in expected.items() if k != "3"}
        assert not engine.has_unfinished_requests() and engine.gauges.num_running == 0
    finally:
        client.shutdown()
    assert client.process.exitcode == 0


def test_the_front_end_process_holds_no_model(tiny_chat_model, tmp_path):
    script = tmp_path / "front_end.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        from pegboard.core.async_engine import AsyncLLMEngine
        from pegboard.core.config import EngineConfig
        from pegboard.core.sampling_params import SamplingParams

        async def main(engine):
            return [o async for o in engine.generate("Hi", SamplingParams(max_tokens=4, temperature=0), "r")][-1]

        if __name__ == "__main__":  # the core process is spawned: it imports this file again
            engine = AsyncLLMEngine.from_config(EngineConfig(model={str(tiny_chat_model)!r}, load_format="dummy",
                                                             device="cpu"), core_process=True)
            output = asyncio.run(main(engine))
            engine.shutdown()
            model_modules = [m for m in ("pegboard.core.model_runner", "pegboard.plugins.llama_model",
                                         "pegboard.core.engine_core") if m in sys.modules]
            print(len(output.outputs[0].token_ids), model_modules)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "4 []"


def test_killing_the_core_fails_requests_at_once(tiny_llama_dir):
    engine = AsyncLLMEngine.from_config(config(tiny_llama_dir, skip_tokenizer_init=True), core_process=True)
    died = []
    engine.on_dead = died.append
    body = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 200, "ignore_eos": True, "stream": True}
    try:
        with serving_in_thread(build_app(engine, ("tiny",))) as url, httpx2.Client(base_url=url, timeout=60) as client:
            with client.stream("POST", "/v1/completions", json=body) as stream:
                lines = stream.iter_lines()
                assert next(lines).startswith("data: {")  # streaming has begun
                engine.engine.core.process.kill()
                started = time.monotonic()
                rest = [line for line in lines if line]
            assert time.monotonic() - started < 10
            assert json.loads(rest[-2][6:])["error"]["code"] == "engine_dead" and rest[-1] == "data: [DONE]"
            assert client.get("/health").status_code == 503
            assert client.post("/v1/completions", json={**body, "stream": False}).status_code == 503
        assert len(died) == 1
    finally:
        engine.shutdown()


def test_a_core_that_cannot_start_says_why(tiny_llama_dir):
    with pytest.raises(Exception, match="the engine core failed to start: .*max_model_len"):
        CoreProcessClient(config(tiny_llama_dir, skip_tokenizer_init=True, max_model_len=10**6))


def test_async_engine_over_a_core_process_streams(tiny_llama_dir):
    engine = AsyncLLMEngine.from_config(config(tiny_llama_dir, skip_tokenizer_init=True), core_process=True)

    async def both():
        async def one(rid):
            return [o async for o in engine.generate([1, 2, int(rid)], SamplingParams(max_tokens=5, temperature=0),
                                                      rid)]
        return await asyncio.gather(one("3"), one("4"))

    try:
        first, second = asyncio.run(both())
        assert [len(o.outputs[0].token_ids) for o in first] == [1, 2, 3, 4, 5]
        assert second[-1].finished and len(second[-1].outputs[0].token_ids) == 5
    finally:
        engine.shutdown()
    with pytest.raises(EngineDeadError):
        asyncio.run(anext(engine.generate([1], SamplingParams(), "late").__aiter__()))


def test_shutdown_is_prompt_while_the_core_is_blocked_writing_outputs_nobody_reads(tiny_llama_dir):
    client = CoreProcessClient(config(tiny_llama_dir, skip_tokenizer_init=True, max_num_seqs=64))
    params = SamplingParams(max_tokens=2000, ignore_eos=True, temperature=0.0, logprobs=5)
    for i in range(64):
        client.add_request(EngineCoreRequest(str(i), (1, 2, 3), params, None, time.monotonic()))
    time.sleep(3)  # the core fills the pipe with steps' outputs and blocks in send()
    started = time.monotonic()
    client.shutdown()
    assert time.monotonic() - started < 5 and client.process.exitcode is not None
