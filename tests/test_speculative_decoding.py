"""Speculative decoding through the step contract: a proposer plugin guesses k tokens, the step computes their
KV slots and verifies them, the scheduler keeps what was accepted and rewinds the rest. Greedy output is exactly
the output without speculation, whatever the proposer says; a good proposer needs fewer steps."""

from __future__ import annotations

import pytest

from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import load_board
from pegboard.core.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
PROMPTS = [[3, 4, 5, 3, 4, 5, 3, 4], [9, 9, 9, 9], [10, 20, 30, 40, 50], [7, 1, 7, 1, 7]]


class ScriptedProposer:
    """Proposes what ``script`` says comes next for each request: a throwaway proposer of the tests."""

    script: dict[tuple[int, ...], list[int]] = {}  # the tokens of a whole expected sequence, by its prompt
    wrong = False  # propose tokens that are never right

    def __init__(self, *, config, num_speculative_tokens):
        self.k = num_speculative_tokens
        self.calls = 0

    def propose(self, requests):
        self.calls += 1
        drafts = []
        for request in requests:
            tokens = request.all_token_ids
            expected = self.script.get(tuple(request.prompt_token_ids), [])
            done = len(tokens) - request.num_prompt_tokens
            draft = expected[done:done + self.k]
            drafts.append([(t + 1) % 256 for t in draft] if self.wrong else draft)
        return drafts


class Counter:
    """Sums what the steps proposed and accepted, and counts the steps."""

    def __init__(self):
        self.proposed = self.accepted = self.steps = 0

    @hookimpl
    def on_step_end(self, stats):
        self.proposed += stats.num_spec_proposed
        self.accepted += stats.num_spec_accepted
        self.steps += 1


class Plugin:
    @hookimpl
    def register_proposers(self, register):
        register("scripted", ScriptedProposer)


def engine(model, *plugins, **options) -> LLMEngine:
    options = {"num_kv_blocks": 64, **options}
    config = EngineConfig(model=str(model), load_format="dummy", skip_tokenizer_init=True, device="cpu", **options)
    return LLMEngine(config, board=load_board(plugins=[Plugin(), *plugins]))


def generate(engine: LLMEngine, params: SamplingParams = GREEDY) -> list[list[int]]:
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, params)
    final = {}
    while engine.has_unfinished_requests():
        final.update((o.request_id, o.outputs[0].token_ids) for o in engine.step() if o.finished)
    return [final[str(i)] for i in range(len(PROMPTS))]


@pytest.fixture
def expected(tiny_llama_dir):
    """The outputs without speculation, also the scripted proposer's script."""
    outputs = generate(engine(tiny_llama_dir))
    ScriptedProposer.script = {tuple(p): o for p, o in zip(PROMPTS, outputs)}
    ScriptedProposer.wrong = False
    return outputs


@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_right_proposer_keeps_the_output_and_saves_steps(tiny_llama_dir, expected, k):
    counter = Counter()
    spec = engine(tiny_llama_dir, counter, speculative_model="scripted", num_speculative_tokens=k)
    assert generate(spec) == expected
    assert counter.proposed > 0 and counter.accepted == counter.proposed  # every guess was right
    assert counter.steps <= 1 + -(-40 // (k + 1)) + 1  # prefill, then k + 1 tokens a step (one step may be short)


def test_a_wrong_proposer_is_rewound_and_changes_nothing(tiny_llama_dir, expected):
    ScriptedProposer.wrong = True
    counter = Counter()
    spec = engine(tiny_llama_dir, counter, speculative_model="scripted", num_speculative_tokens=3)
    assert generate(spec) == expected
    assert counter.proposed > 0 and counter.accepted == 0
    assert spec.block_manager.num_free_blocks == spec.block_manager.num_blocks


def test_speculation_under_preemption_and_chunked_prefill(tiny_llama_dir, expected):
    counter = Counter()
    spec = engine(tiny_llama_dir, counter, speculative_model="scripted", num_speculative_tokens=4,
                  num_kv_blocks=16, block_size=4, max_num_batched_tokens=16, max_model_len=64)
    assert generate(spec) == expected
    assert spec.scheduler.num_preemptions_total > 0 and counter.accepted > 0


def test_stops_and_lengths_cut_the_accepted_tokens(tiny_llama_dir, expected):
    stop = expected[2][5]
    params = SamplingParams(temperature=0.0, max_tokens=7, stop_token_ids=[stop])
    plain = generate(engine(tiny_llama_dir), params)
    spec = engine(tiny_llama_dir, speculative_model="scripted", num_speculative_tokens=5)
    assert generate(spec, params) == plain
    assert all(len(tokens) <= 7 for tokens in plain) and plain[2][-1] == stop


def test_the_built_in_ngram_proposer_keeps_greedy_output(tiny_llama_dir, expected):
    counter = Counter()
    spec = engine(tiny_llama_dir, counter, speculative_model="[ngram]", num_speculative_tokens=3)
    assert generate(spec) == expected
    assert counter.proposed > 0  # the prompts repeat themselves


def test_seeded_sampling_with_proposals_stays_in_range_and_reproducible(tiny_llama_dir, expected):
    params = SamplingParams(temperature=0.8, seed=1, max_tokens=20)
    runs = [generate(engine(tiny_llama_dir, speculative_model="[ngram]", num_speculative_tokens=2), params)
            for _ in range(2)]
    assert runs[0] == runs[1] and all(len(t) <= 20 and all(0 <= x < 256 for x in t) for t in runs[0])


def test_speculation_needs_a_token_count(tiny_llama_dir):
    with pytest.raises(Exception, match="num_speculative_tokens"):
        engine(tiny_llama_dir, speculative_model="scripted")
