"""Scheduler and block manager, driven by a fake model that 'generates' token 7 every step (no torch)."""

from __future__ import annotations

import pytest

from pegboard.core.block_manager import BlockManager
from pegboard.core.messages import CachedRequestData, NewRequestData, RunnerOutput
from pegboard.core.request import Request, RequestStatus
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.scheduler import Scheduler, fake_model_output


def make_request(rid: str, prompt_len: int, max_tokens: int) -> Request:
    return Request(rid, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens),
                   max_tokens=max_tokens)


def run_to_completion(scheduler: Scheduler, max_steps: int = 10_000) -> list:
    """Step like the engine does; returns every SchedulerOutput. Checks KV bookkeeping each step."""
    outputs = []
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            return outputs
        out = scheduler.schedule()
        assert not out.is_empty, "scheduler stalled with unfinished requests"
        assert out.total_num_scheduled_tokens <= scheduler.max_num_batched_tokens
        assert len(out.num_scheduled_tokens) <= scheduler.max_num_seqs
        bm = scheduler.block_manager
        for request_id in out.num_scheduled_tokens:
            request = scheduler.requests[request_id]  # already advanced past this step's tokens
            assert len(request.block_table) * bm.block_size >= request.num_computed_tokens
        scheduler.update_from_output(out, fake_model_output(scheduler, out))
        outputs.append(out)
    raise AssertionError("did not finish")


def test_block_manager_counts_references_and_frees_everything():
    bm = BlockManager(num_blocks=4, block_size=4)
    r = make_request("a", 5, 1)
    assert bm.allocate_slots(r, 5)  # 5 tokens -> 2 blocks
    assert len(r.block_table) == 2 and bm.num_free_blocks == 2
    assert all(bm.ref_counts[b] == 1 for b in r.block_table)
    r.num_computed_tokens = 5
    assert bm.allocate_slots(r, 3)  # 8 tokens still fit in 2 blocks
    assert bm.allocate_slots(r, 4) and len(r.block_table) == 3
    assert not bm.allocate_slots(make_request("b", 9, 1), 9)  # needs 3, only 1 left
    bm.free(r)
    assert bm.num_free_blocks == 4 and r.block_table == [] and sum(bm.ref_counts) == 0


def test_freed_blocks_are_handed_out_again_first_in_their_order():
    """Recently freed blocks are mapped and likely cached; untouched ones cost a page fault a 4 KiB page on CPU (a
    first-in-first-out list made SmolLM2's batched CPU run write fresh memory for its whole length)."""
    bm = BlockManager(num_blocks=10, block_size=4)
    first = make_request("a", 12, 1)
    assert bm.allocate_slots(first, 12) and first.block_table == [0, 1, 2]
    bm.free(first)
    second = make_request("b", 16, 1)
    assert bm.allocate_slots(second, 16) and second.block_table == [0, 1, 2, 3]


def test_decodes_and_prefills_share_one_token_budget():
    scheduler = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=10)
    scheduler.add_request(make_request("long", 25, 3))
    first = scheduler.schedule()
    assert first.num_scheduled_tokens == {"long": 10}  # chunked prefill: only the budget's worth
    scheduler.add_request(make_request("short", 4, 3))
    second = scheduler.schedule()
    assert second.num_scheduled_tokens == {"long": 10}  # the running request takes the whole budget


def test_a_mixed_step_puts_its_decodes_first():
    proposals = {"guessed": (7, 8)}  # "guessed" verifies two proposed tokens: a row of three, like a prefill chunk
    scheduler = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=64,
                          propose=lambda requests: [proposals.get(r.request_id, ()) for r in requests],
                          num_spec_tokens=2)
    for rid in ("guessed", "plain"):
        scheduler.add_request(make_request(rid, 5, 10))
    prefill = scheduler.schedule()
    scheduler.update_from_output(prefill, RunnerOutput(("guessed", "plain"), ((6,), (6,))))
    scheduler.add_request(make_request("new", 3, 10))
    mixed = scheduler.schedule()  # running order: guessed, plain; then the new request's prompt
    assert list(mixed.num_scheduled_tokens.items()) == [("plain", 1), ("guessed", 3), ("new", 3)]


def test_every_request_completes_under_small_budget_and_few_blocks():
    bm = BlockManager(num_blocks=12, block_size=4)  # 48 token slots for 10 requests of up to 30 tokens
    scheduler = Scheduler(bm, max_num_seqs=6, max_num_batched_tokens=16)
    requests = [make_request(f"r{i}", 5 + 2 * i, 10) for i in range(10)]
    for r in requests:
        scheduler.add_request(r)
    outputs = run_to_completion(scheduler)
    assert all(r.num_output_tokens == 10 and r.status == RequestStatus.FINISHED_LENGTH for r in requests)
    assert scheduler.num_preemptions_total > 0, "the cache is small enough that preemption must happen"
    assert any(out.num_preempted for out in outputs)
    assert bm.num_free_blocks == bm.num_blocks and sum(bm.ref_counts) == 0


def test_preempted_request_recomputes_prompt_and_generated_tokens():
    bm = BlockManager(num_blocks=4, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=64)
    a, b = make_request("a", 6, 8), make_request("b", 6, 8)
    scheduler.add_request(a)
    scheduler.add_request(b)
    run_to_completion(scheduler)
    assert b.num_preemptions > 0 or a.num_preemptions > 0
    assert a.output_token_ids == [7] * 8 and b.output_token_ids == [7] * 8


def test_max_num_seqs_caps_running_requests():
    scheduler = Scheduler(BlockManager(100, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(5):
        scheduler.add_request(make_request(f"r{i}", 3, 2))
    out = scheduler.schedule()
    assert len(out.num_scheduled_tokens) == 2 and scheduler.num_waiting == 3


def test_finish_releases_blocks_of_waiting_and_running_requests():
    bm = BlockManager(10, 4)
    scheduler = Scheduler(bm, max_num_seqs=1, max_num_batched_tokens=100)
    running, waiting = make_request("run", 8, 4), make_request("wait", 8, 4)
    scheduler.add_request(running)
    scheduler.add_request(waiting)
    scheduler.schedule()
    scheduler.finish(running, RequestStatus.FINISHED_ABORTED)
    scheduler.finish(waiting, RequestStatus.FINISHED_ABORTED)
    scheduler.finish(waiting, RequestStatus.FINISHED_ABORTED)  # twice is harmless
    assert not scheduler.has_unfinished_requests() and bm.num_free_blocks == 10


@pytest.mark.parametrize("bad", [dict(num_blocks=0, block_size=4), dict(num_blocks=4, block_size=0)])
def test_block_manager_rejects_empty_pools(bad):
    with pytest.raises(ValueError):
        BlockManager(**bad)


# ---- the messages: diffs keyed by request id ---------------------------------------------------------------


def test_the_worker_gets_a_request_whole_once_then_only_its_new_blocks():
    scheduler = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=6)
    scheduler.add_request(make_request("a", 10, 3))
    first = scheduler.schedule()
    [new] = first.new_requests
    assert new == NewRequestData("a", tuple(range(1, 11)), (), new.sampling_params, None, new.block_ids, 0)
    assert len(new.block_ids) == 2 and first.cached_requests == ()  # 6 tokens in blocks of 4
    second = scheduler.schedule()
    assert second.new_requests == ()
    assert second.cached_requests == (CachedRequestData("a", (scheduler.requests["a"].block_table[2],), 6),)


def test_finished_requests_are_named_in_the_next_step():
    scheduler = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=64)
    scheduler.add_request(make_request("a", 3, 1))
    scheduler.add_request(make_request("b", 3, 5))
    out = scheduler.schedule()
    [done, running] = scheduler.update_from_output(out, RunnerOutput(("a", "b"), ((7,), (7,))))
    assert (done.request_id, done.new_token_ids, done.finish_reason) == ("a", (7,), "length")
    assert (running.request_id, running.finish_reason) == ("b", None)
    assert scheduler.schedule().finished_request_ids == {"a"}
    assert scheduler.schedule().finished_request_ids == frozenset()  # told once


def test_a_request_resumed_after_preemption_is_sent_whole_with_its_tokens():
    bm = BlockManager(num_blocks=3, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=64)
    a, b = make_request("a", 4, 8), make_request("b", 4, 8)
    scheduler.add_request(a)
    scheduler.add_request(b)
    resumed = []
    for _ in range(40):
        out = scheduler.schedule()
        resumed += [r for r in out.new_requests if r.output_token_ids]
        scheduler.update_from_output(out, fake_model_output(scheduler, out))
        if not scheduler.has_unfinished_requests():
            break
    assert resumed and all(r.num_computed_tokens == 0 and set(r.output_token_ids) == {7} for r in resumed)
    assert a.output_token_ids == b.output_token_ids == [7] * 8


def test_proposed_tokens_get_kv_slots_and_rejected_ones_are_rewound():
    proposals = {"a": (7, 8, 9)}
    scheduler = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=64,
                          propose=lambda requests: [proposals.get(r.request_id, ()) for r in requests],
                          num_spec_tokens=3)
    request = make_request("a", 5, 10)
    scheduler.add_request(request)
    prefill = scheduler.schedule()
    scheduler.update_from_output(prefill, RunnerOutput(("a",), ((6,),)))  # the proposer then guesses 7 8 9
    verify = scheduler.schedule()
    assert verify.num_scheduled_tokens == {"a": 4} and verify.spec_token_ids == {"a": (7, 8, 9)}
    assert request.num_computed_tokens == 9  # the 5 + 1 real tokens and the 3 proposals
    # 7 and 8 were right, 9 was not (the model said 4 there): tokens 7 8 4 are accepted, 9's KV is rewound
    [out] = scheduler.update_from_output(verify, RunnerOutput(("a",), ((7, 8, 4),)))
    assert out.new_token_ids == (7, 8, 4) and request.output_token_ids == [6, 7, 8, 4]
    assert request.num_computed_tokens == request.num_tokens - 1 == 8


def test_a_stop_among_accepted_tokens_drops_the_rest():
    scheduler = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=64)
    request = Request("a", [1, 2], SamplingParams(max_tokens=10, stop_token_ids=[8]), max_tokens=10)
    scheduler.add_request(request)
    out = scheduler.schedule()
    [result] = scheduler.update_from_output(out, RunnerOutput(("a",), ((7, 8, 9),)))
    assert result.new_token_ids == (7, 8) and (result.finish_reason, result.stop_reason) == ("stop", 8)
