"""The prefix-caching block allocator: requests that share a prefix share its KV blocks.

Unit tests drive ``PrefixCachingBlockManager`` by hand the way the scheduler does (match, allocate,
compute, hash); then the scheduler runs many requests with a shared system prompt through a small
pool; then engines with and without prefix caching must generate the same tokens.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from pegboard import LLM
from pegboard.core import prefix_cache
from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import load_board
from pegboard.core.prefix_cache import PrefixCachingBlockManager
from pegboard.core.request import Request, RequestStatus
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.scheduler import Scheduler, fake_model_output
from pegboard.plugins.loader_dummy import DummyLoader

BS = 4  # tokens per block in the unit tests


def make_request(rid: str, tokens: list[int], **params) -> Request:
    return Request(rid, tokens, SamplingParams(**params), max_tokens=8)


def admit(bm: PrefixCachingBlockManager, request: Request) -> int:
    """Match the request's prefix, then compute (and hash) the rest of its tokens; returns the cached count."""
    cached = request.num_computed_tokens = bm.match_prefix(request)
    compute(bm, request, request.num_tokens - cached)
    return cached


def compute(bm: PrefixCachingBlockManager, request: Request, num_tokens: int) -> None:
    """One scheduler step for one request: grow its table, run the 'model', report the computed tokens."""
    assert bm.allocate_slots(request, num_tokens)
    request.num_computed_tokens += num_tokens
    bm.on_tokens_computed(request)


# ---- the manager, by hand --------------------------------------------------------------------------


def test_requests_with_a_shared_prefix_share_its_full_blocks():
    bm = PrefixCachingBlockManager(num_blocks=16, block_size=BS)
    a = make_request("a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # blocks [1 2 3 4] [5 6 7 8] [9 10 . .]
    b = make_request("b", [1, 2, 3, 4, 5, 6, 7, 8, 42, 43, 44])
    c = make_request("c", [1, 2, 3, 4, 99, 6, 7, 8, 9, 10])  # differs in the second block
    assert admit(bm, a) == 0
    assert bm.num_cached_blocks == 2  # the partial third block is not hashed
    assert admit(bm, b) == 8
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert [bm.ref_counts[i] for i in a.block_table] == [2, 2, 1]
    assert admit(bm, c) == 4  # the chain stops at the first miss
    assert c.block_table[0] == a.block_table[0] and c.block_table[1] not in a.block_table
    assert (bm.query_tokens, bm.hit_tokens) == (31, 12)
    assert bm.hit_rate == pytest.approx(12 / 31)


def test_a_hash_hit_is_verified_against_the_cached_tokens(monkeypatch):
    monkeypatch.setattr(prefix_cache, "hash_block", lambda key: 0)  # every block collides
    bm = PrefixCachingBlockManager(num_blocks=16, block_size=BS)
    admit(bm, make_request("a", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    assert admit(bm, make_request("b", [9, 9, 9, 9, 5, 6, 7, 8, 9])) == 0  # same hash, other tokens: a miss
    assert admit(bm, make_request("c", [1, 2, 3, 4, 9, 9, 9, 9, 9])) == 4  # the first block verifies


def test_only_blocks_whose_tokens_are_all_computed_are_cached():
    bm = PrefixCachingBlockManager(num_blocks=16, block_size=BS)
    a = make_request("a", list(range(1, 11)))
    compute(bm, a, 6)  # a prefill chunk: the second block's KV is only half written
    assert bm.num_cached_blocks == 1
    assert bm.match_prefix(make_request("b", list(range(1, 11)))) == 4
    compute(bm, a, 4)
    assert bm.num_cached_blocks == 2


def test_the_last_token_is_always_left_to_compute():
    bm = PrefixCachingBlockManager(num_blocks=16, block_size=BS)
    tokens = list(range(1, 9))  # exactly two full blocks
    admit(bm, make_request("a", tokens))
    assert admit(bm, make_request("same", tokens)) == 4  # not 8: the model must run on token 8 for its logits
    assert admit(bm, make_request("longer", tokens + [9])) == 8


def test_shared_blocks_return_to_the_free_list_when_their_last_user_frees_them():
    bm = PrefixCachingBlockManager(num_blocks=8, block_size=BS)
    a, b = make_request("a", list(range(1, 11))), make_request("b", list(range(1, 11)))
    admit(bm, a)
    admit(bm, b)
    shared = a.block_table[:2]
    bm.free(a)
    assert [bm.ref_counts[i] for i in shared] == [1, 1] and not set(shared) & set(bm.free_block_ids)
    bm.free(b)
    assert bm.num_free_blocks == 8 and sum(bm.ref_counts) == 0
    assert bm.num_cached_blocks == 2  # freed, but still cached (lazy eviction)
    again = make_request("again", list(range(1, 11)))
    assert admit(bm, again) == 8 and again.block_table[:2] == shared


def test_eviction_takes_uncached_blocks_first_then_the_least_recently_freed():
    bm = PrefixCachingBlockManager(num_blocks=4, block_size=BS)
    a = make_request("a", list(range(1, 10)))  # two full blocks and one partial
    admit(bm, a)
    full0, full1, partial = a.block_table
    bm.free(a)  # last block first: the deeper cached block is evicted before the shallower one
    assert list(bm.free_block_ids) == [partial, 3, full1, full0]  # block 3 was never used
    other = make_request("other", list(range(100, 112)))
    admit(bm, other)  # takes the first three: the partial block, the unused one, then evicts full1
    assert bm.num_cached_blocks == 3 + 1  # other's three, and full0
    bm.free(other)
    assert admit(bm, make_request("a-again", list(range(1, 10)))) == 4


def test_a_preempted_request_finds_its_own_blocks_including_generated_tokens():
    bm = PrefixCachingBlockManager(num_blocks=8, block_size=BS)
    r = make_request("r", [1, 2, 3, 4, 5, 6, 7])
    admit(bm, r)
    r.append_token(8)  # generated; its KV is computed in the next step, which fills the second block
    compute(bm, r, 1)
    r.append_token(9)
    old_table = list(r.block_table)
    bm.free(r)  # preemption: blocks freed, the request recomputes from scratch ...
    r.num_computed_tokens = 0
    assert bm.match_prefix(r) == 8  # ... but its first two blocks are still cached
    assert r.block_table == old_table[:2]


def test_prompt_logprobs_requests_compute_every_token_but_publish_their_blocks():
    bm = PrefixCachingBlockManager(num_blocks=16, block_size=BS)
    tokens = list(range(1, 11))
    assert admit(bm, make_request("scored", tokens, prompt_logprobs=1)) == 0
    again = make_request("scored-again", tokens, prompt_logprobs=1)
    assert admit(bm, again) == 0  # every prompt position must run through the model for its logprobs
    assert admit(bm, make_request("plain", tokens)) == 8  # the blocks the scored requests computed are shared
    assert bm.query_tokens == 30 and bm.hit_tokens == 8


def test_a_block_computed_twice_is_cached_once_and_its_copy_is_reused_first():
    bm = PrefixCachingBlockManager(num_blocks=16, block_size=BS)
    tokens = list(range(1, 11))
    first, second = make_request("n#0", tokens), make_request("n#1", tokens)
    assert bm.match_prefix(first) == bm.match_prefix(second) == 0  # n > 1: both start in the same step
    compute(bm, first, 10)
    compute(bm, second, 10)
    assert bm.num_cached_blocks == 2  # the first copy is the one later requests share
    copies = list(second.block_table)
    bm.free(second)
    assert list(bm.free_block_ids)[:3] == copies  # the copies hold nothing reusable: they go first
    assert admit(bm, make_request("later", tokens)) == 8


# ---- the scheduler over a small pool -----------------------------------------------------------------


def run_to_completion(scheduler: Scheduler, max_steps: int = 10_000) -> None:
    """Step like the engine does, with a fake model that 'generates' token 7 every step."""
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            return
        out = scheduler.schedule()
        assert not out.is_empty, "scheduler stalled with unfinished requests"
        scheduler.update_from_output(out, fake_model_output(scheduler, out))
    raise AssertionError("did not finish")


def test_many_requests_with_a_system_prompt_complete_under_a_small_pool():
    bm = PrefixCachingBlockManager(num_blocks=16, block_size=BS)  # 64 slots for 12 requests of ~30 tokens
    scheduler = Scheduler(bm, max_num_seqs=6, max_num_batched_tokens=16)
    system = list(range(100, 120))
    requests = [Request(f"r{i}", system + [i] * (3 + i % 5), SamplingParams(max_tokens=6), max_tokens=6)
                for i in range(12)]
    for r in requests:
        scheduler.add_request(r)
    run_to_completion(scheduler)
    assert all(r.output_token_ids == [7] * 6 for r in requests)
    assert bm.num_free_blocks == bm.num_blocks and sum(bm.ref_counts) == 0
    assert bm.hit_tokens > 0 and sum(r.num_cached_tokens > 0 for r in requests) >= 6


def test_a_waiting_request_that_cannot_start_holds_no_blocks():
    bm = PrefixCachingBlockManager(num_blocks=3, block_size=BS)
    scheduler = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=16)
    a = Request("a", [1, 1, 1, 1, 2], SamplingParams(max_tokens=6), max_tokens=6)
    b = Request("b", [1, 1, 1, 1, 3, 3, 3, 3], SamplingParams(max_tokens=2), max_tokens=2)
    scheduler.add_request(a)
    scheduler.add_request(b)
    run_to_completion(scheduler)  # b, preempted, re-matches two blocks but cannot start; then a is preempted
    assert bm.num_free_blocks == 3


# ---- the engine: the same tokens with and without prefix caching ------------------------------------


class RandomLoader(DummyLoader):
    """The dummy loader with weights large enough (N(0, 0.1)) that every cached token sways the output."""

    def load_weights(self, model, files, config):
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, 0.1, generator=generator)


class RandomWeights:
    @hookimpl
    def register_model_loaders(self, register):
        register("random", RandomLoader())


GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
_request_ids = itertools.count()


def tiny_engine(model_dir, **options) -> LLMEngine:
    config = EngineConfig(model=str(model_dir), load_format="random", skip_tokenizer_init=True, max_model_len=128,
                          **options)
    return LLMEngine(config, board=load_board(plugins=[RandomWeights()]))


def generate(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams = GREEDY) -> list:
    """Step the engine until every prompt finished; the finished RequestOutputs in prompt order."""
    ids = [str(next(_request_ids)) for _ in prompts]
    for request_id, prompt in zip(ids, prompts):
        engine.add_request(request_id, prompt, params)
    finished = {}
    while engine.has_unfinished_requests():
        finished.update((out.request_id, out) for out in engine.step() if out.finished)
    return [finished[request_id] for request_id in ids]


def shared_prefix_prompts() -> list[list[int]]:
    """Five prompts after one 70-token preamble, one of them twice, one extended by a token, and one that
    repeats the preamble's first block (same tokens at another position: not the same KV)."""
    rng = random.Random(0)
    preamble = [rng.randrange(256) for _ in range(70)]
    prompts = [preamble + [rng.randrange(256) for _ in range(5 + 3 * i)] for i in range(5)]
    return prompts + [prompts[0], prompts[0] + [17], preamble[:16] + prompts[0]]


@pytest.mark.parametrize("one_by_one, options, hits", [
    # all start in the first step, before any block is computed: nothing to share
    (False, {"max_num_batched_tokens": 2048}, False),
    (True, {}, True),
    (False, {"max_num_batched_tokens": 24}, True),  # chunked prefill: later requests start after earlier chunks
    (False, {"num_kv_blocks": 10}, True),  # 160 slots for ~700 tokens of work: preemption
], ids=["together", "one-after-another", "chunked-prefill", "preemption"])
def test_prefix_caching_keeps_greedy_outputs_identical(tiny_llama_dir, one_by_one, options, hits):
    prompts = shared_prefix_prompts()
    batches = [[p] for p in prompts] if one_by_one else [prompts]
    plain = tiny_engine(tiny_llama_dir, **options)
    expected = [out for batch in batches for out in generate(plain, batch)]
    engine = tiny_engine(tiny_llama_dir, enable_prefix_caching=True, **options)
    got = [out for batch in batches for out in generate(engine, batch)]
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    bm = engine.block_manager
    assert isinstance(bm, PrefixCachingBlockManager)
    assert bm.num_free_blocks == bm.num_blocks and (bm.hit_tokens > 0) == hits
    if options.get("num_kv_blocks"):
        assert engine.scheduler.num_preemptions_total > 0
    if one_by_one:  # the preamble's 4 full blocks; the prompt that repeats its first block finds only that
        assert [o.num_cached_tokens for o in got] == [0] + [64] * 6 + [16]


def test_n_sequences_share_the_prompt_once_the_first_has_computed_it(tiny_llama_dir):
    prompt = shared_prefix_prompts()[4]  # 87 tokens
    params = SamplingParams(n=3, temperature=0.0, max_tokens=6, ignore_eos=True)
    plain = generate(tiny_engine(tiny_llama_dir, max_num_batched_tokens=32), [prompt], params)[0]
    engine = tiny_engine(tiny_llama_dir, max_num_batched_tokens=32, enable_prefix_caching=True)
    cached = generate(engine, [prompt], params)[0]
    assert [o.token_ids for o in cached.outputs] == [o.token_ids for o in plain.outputs]
    assert engine.block_manager.hit_tokens > 0  # the first sequence's prefill took several steps


@pytest.mark.slow
def test_smollm2_outputs_are_identical_with_prefix_caching(smollm2_gguf):
    preamble = ("You are a careful assistant for a small bakery. Answer in one short sentence. The bakery opens at "
                "seven and closes at six, sells bread, croissants, cakes and coffee, takes orders by phone, and "
                "delivers within the town for a small fee. Cakes need two days' notice. On Sundays it opens at "
                "nine and closes at two. Gluten-free bread is baked on Tuesdays and Fridays. Customers pay by card "
                "or in cash, and regulars collect a stamp for every coffee. ")
    questions = ["When do you open?", "Do you sell coffee?", "Can I order a cake for tomorrow?",
                 "Do you deliver?", "What do you sell?", "When do you close?", "Can I order by phone?",
                 "Is delivery free?"]
    params = SamplingParams(temperature=0.0, max_tokens=16)
    plain = LLM(str(smollm2_gguf), dtype="float32", max_model_len=512, device="cpu")
    tokenizer = plain.get_tokenizer()
    prompts = [{"prompt_token_ids": tokenizer(preamble + q).input_ids} for q in questions]
    assert len(tokenizer(preamble).input_ids) > 100
    expected = plain.generate(prompts, params, use_tqdm=False)
    del plain
    llm = LLM(str(smollm2_gguf), dtype="float32", max_model_len=512, device="cpu", enable_prefix_caching=True)
    got = llm.generate(prompts[:1], params, use_tqdm=False) + llm.generate(prompts[1:], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    assert got[0].num_cached_tokens == 0
    assert all(o.num_cached_tokens >= 96 for o in got[1:])  # the preamble's six full blocks of 16 tokens
