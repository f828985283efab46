"""Async scheduling: the engine launches step k+1 before it collects step k's tokens. The tokens a request
gets must be exactly those of the synchronous engine, whatever stops, preempts or aborts it meanwhile.

On CUDA it is on by default; these tests force it on the CPU, where the code path is the same.
"""

from __future__ import annotations

import re

import pytest

from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.llm import LLM
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_params import StructuredOutputsParams

PROMPTS = ["Hello there", "The quick brown fox jumps over the lazy dog " * 2, "a", "Tell me a story about Pegboard",
           "0123456789" * 4, "Why?", "x y z", "Once upon a time, in a land far away, there lived"]


def mixed_params(host_history: bool) -> list[SamplingParams]:
    """One of each kind of request: greedy, seeded sampling and filters, stops, logprobs, n=2; with
    ``host_history`` also penalties, prompt logprobs and a grammar (which make each step wait for the previous one)."""
    params = [
        SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=20),
        SamplingParams(temperature=0.0, max_tokens=30),  # may meet EOS (token 2) early
        SamplingParams(temperature=1.0, top_k=5, seed=3, max_tokens=25, stop=["e", "z"]),
        SamplingParams(temperature=0.0, max_tokens=16, logprobs=3),
        SamplingParams(temperature=0.7, seed=11, n=2, max_tokens=10, min_tokens=4, stop_token_ids=[5, 6]),
        SamplingParams(temperature=0.0, max_tokens=14),
        SamplingParams(temperature=0.9, seed=5, max_tokens=1),
    ]
    if host_history:
        params[4] = params[4].clone(prompt_logprobs=2)
        params[6] = params[6].clone(repetition_penalty=1.3, frequency_penalty=0.5)
        params[1] = params[1].clone(structured_outputs=StructuredOutputsParams(regex="[a-z ]{3,40}"))
    return params


def summary(outputs) -> list:
    return [[(c.token_ids, c.text, c.finish_reason, c.stop_reason, c.logprobs) for c in o.outputs]
            + [o.prompt_logprobs] for o in outputs]


def tiny_llm(model, async_scheduling: bool, **kwargs) -> LLM:
    return LLM(model=str(model), load_format="dummy", device="cpu", async_scheduling=async_scheduling, **kwargs)


@pytest.mark.parametrize("host_history", [False, True], ids=["overlapped", "with-penalties"])
@pytest.mark.parametrize("limits", [
    {},
    {"num_kv_blocks": 32, "block_size": 4, "max_model_len": 128, "max_num_batched_tokens": 48},  # chunks, preemption
], ids=["roomy", "tight"])
def test_async_outputs_equal_synchronous_outputs(tiny_chat_model, limits, host_history):
    sync = tiny_llm(tiny_chat_model, False, **limits)
    expected = summary(sync.generate(PROMPTS, mixed_params(host_history), use_tqdm=False))
    llm = tiny_llm(tiny_chat_model, True, **limits)
    assert llm.engine.core._overlap
    outputs = llm.generate(PROMPTS, mixed_params(host_history), use_tqdm=False)
    assert summary(outputs) == expected
    if host_history:  # the guided request kept to its regex while its steps waited for the previous tokens
        assert re.fullmatch("[a-z ]{3,40}", outputs[1].outputs[0].text)
    if limits:
        assert llm.engine.scheduler.num_preemptions_total > 0
    blocks = llm.engine.block_manager
    assert blocks.num_free_blocks == blocks.num_blocks  # extra steps of stopped requests gave back their blocks


def test_async_prefix_caching_hashes_blocks_once_their_tokens_arrive(tiny_chat_model):
    """A second turn (prompt + first answer + more) finds the first answer's blocks cached, as in sync mode."""
    shared = "You are a helpful assistant. Answer briefly and precisely. "
    prompts = [shared + q for q in ("Why is the sky blue?", "What is 2+2?", "Name a colour.", "Hi")]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    limits = {"enable_prefix_caching": True, "block_size": 4, "max_num_batched_tokens": 64}

    def two_turns(async_scheduling: bool) -> tuple[list, list[int]]:
        llm = tiny_llm(tiny_chat_model, async_scheduling, **limits)
        first = llm.generate(prompts, params, use_tqdm=False)
        follow_ups = [{"prompt_token_ids": o.prompt_token_ids + o.outputs[0].token_ids + [10, 11]} for o in first]
        second = llm.generate(follow_ups, params, use_tqdm=False)
        return summary(first) + summary(second), [o.num_cached_tokens for o in second]

    outputs, cached = two_turns(True)
    assert (outputs, cached) == two_turns(False)
    assert all(n >= len(shared) + 40 - 4 for n in cached)  # the answers' blocks were reused


def engine(model, **kwargs) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model), load_format="dummy", device="cpu", async_scheduling=True,
                                  **kwargs))


def test_a_step_returns_the_tokens_of_the_step_launched_before_it(tiny_chat_model):
    eng = engine(tiny_chat_model)
    eng.add_request("r", [10, 11, 12], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    assert eng.step() == []  # the prefill is launched; its token is still in flight
    assert eng.has_unfinished_requests()
    lengths = [len(o.outputs[0].token_ids) for _ in range(3) for o in eng.step()]
    assert lengths == [1, 2, 3]
    assert not eng.has_unfinished_requests()


def test_a_request_aborted_while_its_step_runs_gets_no_more_tokens(tiny_chat_model):
    eng = engine(tiny_chat_model)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    eng.add_request("kept", [1, 2, 3, 4], params)
    eng.add_request("dropped", [5, 6, 7], params)
    eng.step()
    eng.step()  # "dropped" now has a token in flight
    eng.abort_request("dropped")
    finished = {}
    while eng.has_unfinished_requests():
        for output in eng.step():
            assert output.request_id == "kept"
            finished[output.request_id] = output
    assert len(finished["kept"].outputs[0].token_ids) == 8
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


def test_penalties_make_each_step_wait_for_the_previous_tokens(tiny_chat_model):
    eng = engine(tiny_chat_model)
    eng.add_request("p", [1, 2, 3], SamplingParams(temperature=0.0, max_tokens=4, presence_penalty=1.0))
    eng.step()
    assert eng.core._in_flight is not None
    counts = eng.executor.runner.sampler.counts
    assert counts.counted["p"] == 0
    eng.step()  # the next step waits for the prefill's token before it samples: the penalty counts it
    assert counts.counted["p"] == 1


def test_async_scheduling_is_off_by_default_on_the_cpu(tiny_chat_model):
    eng = LLMEngine(EngineConfig(model=str(tiny_chat_model), load_format="dummy", device="cpu"))
    assert not eng.core._overlap


def finish(eng: LLMEngine, request_id: str, prompt: list[int], params: SamplingParams) -> list[int]:
    """Add one request and step until nothing is left; its token ids."""
    eng.add_request(request_id, prompt, params)
    final = []
    while eng.has_unfinished_requests():
        final += [o.outputs[0].token_ids for o in eng.step() if o.finished]
    return final[0]


def test_a_request_id_used_again_after_it_finished_starts_afresh(tiny_chat_model):
    """A request that stops on a token ends while the next step is in flight; the worker still forgets it (with
    no step left to carry the news), so the id's next request starts with nothing of the old one."""
    eng = engine(tiny_chat_model)
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    probe = finish(eng, "probe", [1, 2, 3], greedy)
    stopping = greedy.clone(stop_token_ids=[probe[2]])
    for _ in range(2):
        assert finish(eng, "r", [1, 2, 3], stopping) == probe[:3]
        assert eng.executor.runner.batch.requests == {}


class Recorder:
    """A logits processor that follows every request and records the tokens it is told each one accepted."""

    follows_tokens = True

    def __init__(self, *, vocab_size, device, config):
        self.accepted: dict[str, list[int]] = {}

    def add_request(self, request_id, params, prompt_token_ids):
        self.accepted[request_id] = []
        return True

    def accept_tokens(self, request_id, token_ids):
        self.accepted[request_id].extend(token_ids)

    def remove_request(self, request_id):
        pass

    def apply(self, logits, request_ids):
        return logits


def test_an_id_taken_again_while_its_last_step_runs_gets_none_of_that_steps_tokens(tiny_chat_model):
    """The engine core and its worker keep a step's tokens from a newer request with the same id: the scheduler
    applies a step only to requests that were there when it was planned, the worker only to its own state.
    (The front end also gives a reused id a fresh core id.)"""
    from pegboard.core.hookspecs import hookimpl
    from pegboard.core.messages import EngineCoreRequest
    from pegboard.core.plugins import load_board

    class Plugin:
        @hookimpl
        def register_logits_processors(self, register):
            register("recorder", Recorder)

    eng = LLMEngine(EngineConfig(model=str(tiny_chat_model), load_format="dummy", device="cpu", async_scheduling=True),
                    board=load_board(plugins=[Plugin()]))
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    probe = finish(eng, "probe", [1, 2, 3], greedy)
    request = EngineCoreRequest("r", (1, 2, 3), greedy.clone(stop_token_ids=[probe[2]]), None, 0.0)
    core = eng.core
    core.add_request(request)
    while not any(o.finished for o in core.step().outputs):
        pass
    assert core._in_flight is not None  # the first "r"'s next step still runs: its token is on its way
    core.add_request(request)  # the id again, at once
    tokens = []
    while core.has_unfinished_requests():
        tokens += [t for o in core.step().outputs for t in o.new_token_ids]
    [recorder] = eng.executor.runner.logits_processors.processors[:1]  # (the grammar processor comes last)
    assert tokens == probe[:3] and recorder.accepted["r"] == tokens
