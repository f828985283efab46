"""The default sampler: greedy and random choice, filters, penalties, bias, min_tokens, seeds, logprobs."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import torch

from pegboard.core.plugins import load_board
from pegboard.core.request import Request
from pegboard.core.sampling_params import SamplingParams
from pegboard.plugins import default_sampler
from pegboard.core.logprobs import top_logprobs
from pegboard.plugins.default_sampler import make_sampler
from pegboard.plugins.sampling_ops import exponential_race, race_noise_size

V = 32
CPU = torch.device("cpu")
# A crafted distribution over 8 tokens, most likely first.
PROBS = torch.tensor([0.4, 0.3, 0.2, 0.04, 0.03, 0.02, 0.006, 0.004])


def request(rid: str = "r", prompt: tuple[int, ...] = (1, 2), eos: int | None = None,
            output: tuple[int, ...] = (), **params) -> Request:
    """A request with the given SamplingParams and, optionally, tokens it has already generated."""
    req = Request(rid, list(prompt), SamplingParams(max_tokens=64, **params), eos_token_id=eos, max_tokens=64)
    for token in output:
        req.append_token(token)
    return req


def sampler(seed: int = 0, vocab_size: int = V):
    return make_sampler(vocab_size=vocab_size, device=CPU, seed=seed)


def random_logits(n: int, vocab_size: int = V, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, vocab_size, generator=torch.Generator().manual_seed(seed)) * 3


def draws(logits_row: torch.Tensor, n: int, **params) -> Counter:
    """How often each token is chosen when n identical unseeded requests sample one row in one batch."""
    sp = SamplingParams(**params)
    requests = [Request(f"r{i}", [1, 2], sp, max_tokens=64) for i in range(n)]
    tokens = sampler(vocab_size=logits_row.numel()).sample(logits_row.expand(n, -1), requests).token_ids
    return Counter(tokens.tolist())


# --- the plugin -----------------------------------------------------------------------------------------

def test_plugin_registers_a_factory_and_imports_no_torch():
    board = load_board([default_sampler], builtins=False, entry_point_plugins=False, strict=True)
    assert board.samplers.get("default") is make_sampler
    code = "import sys, pegboard.plugins.default_sampler; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- greedy and random ----------------------------------------------------------------------------------

def test_greedy_takes_the_argmax():
    logits = random_logits(8)
    out = sampler().sample(logits, [request(f"r{i}", temperature=0.0) for i in range(8)])
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.logprobs is None and out.logprob_token_ids is None and out.ranks is None


def test_an_empty_batch_gives_empty_outputs():
    out = sampler().sample(torch.empty(0, V), [])
    assert out.token_ids.shape == (0,) and out.logprobs is None


def test_a_mixed_batch_samples_random_rows_and_keeps_greedy_rows_greedy():
    logits = torch.full((4, V), -10.0)
    logits[:, 3] = logits[:, 4] = 5.0  # two equally likely tokens
    logits[:, 4] += 1e-3  # token 4 is the argmax
    s = sampler()
    seen: list[set[int]] = [set() for _ in range(4)]
    for _ in range(50):
        requests = [request("g0", temperature=0.0), request("s1"), request("g2", temperature=0.0), request("s3")]
        for row, token in enumerate(s.sample(logits, requests).token_ids.tolist()):
            seen[row].add(token)
    assert seen[0] == seen[2] == {4}
    assert seen[1] == seen[3] == {3, 4}


def test_top_k_one_is_greedy():
    logits = random_logits(16)
    requests = [request(f"r{i}", temperature=1.5, top_k=1) for i in range(16)]
    assert torch.equal(sampler().sample(logits, requests).token_ids, logits.argmax(-1))


@pytest.mark.parametrize("params, allowed", [
    (dict(top_k=2), {0, 1}),
    (dict(top_p=0.6), {0, 1}),  # mass before token 2 is 0.7
    (dict(top_p=0.85), {0, 1, 2}),  # mass before token 3 is 0.9
    (dict(top_k=3, top_p=0.5), {0, 1}),  # top_p over the renormalized top 3: 0.44, 0.33, 0.22
    (dict(min_p=0.2), {0, 1, 2}),  # keeps p >= 0.08
    (dict(min_p=0.06), {0, 1, 2, 3, 4}),  # keeps p >= 0.024
])
def test_filters_never_pick_excluded_tokens(params, allowed):
    assert set(draws(PROBS.log(), 2000, **params)) == allowed


def test_filters_of_neighbours_do_not_leak():
    """One batch mixing every filter: each row keeps exactly its own allowed set."""
    cases = [(dict(top_k=2), {0, 1}), (dict(top_p=0.85), {0, 1, 2}), (dict(min_p=0.06), {0, 1, 2, 3, 4}),
             (dict(temperature=0.0), {0}), (dict(), set(range(8)))]
    copies = 3000
    requests = [request(f"{c}-{i}", **params) for c, (params, _) in enumerate(cases) for i in range(copies)]
    logits = torch.full((len(requests), 8), 0.0) + PROBS.log()
    tokens = sampler().sample(logits, requests).token_ids.view(len(cases), copies)
    for row_tokens, (params, allowed) in zip(tokens.tolist(), cases):
        assert set(row_tokens) == allowed, params


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_draws_follow_softmax_of_scaled_logits(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 20000
    counts = draws(logits, n, temperature=temperature)
    expected = torch.softmax(logits / temperature, -1) * n
    observed = torch.tensor([counts[t] for t in range(5)], dtype=torch.float32)
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 18.5  # chi-square, 4 degrees of freedom, p = 0.001


def test_the_two_level_race_samples_across_blocks_and_the_ragged_tail():
    vocab, n = 700, 20000  # blocks of 256: two full ones and a tail of 188
    probs = torch.zeros(vocab)
    probs[[5, 300, 600, 699]] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    uniform = torch.rand(n, race_noise_size(vocab), generator=torch.Generator().manual_seed(0))
    tokens = exponential_race(probs.expand(n, -1).clone(), uniform)
    counts = Counter(tokens.tolist())
    assert set(counts) == {5, 300, 600, 699}
    expected = probs[[5, 300, 600, 699]] * n
    observed = torch.tensor([counts[t] for t in (5, 300, 600, 699)], dtype=torch.float32)
    assert ((observed - expected) ** 2 / expected).sum().item() < 16.3  # chi-square, 3 dof, p = 0.001


# --- logits processing: penalties, bias, min_tokens ----------------------------------------------------

def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.zeros(2, 8)
    logits[0, :6] = torch.tensor([1.0, 2.0, -2.0, 3.0, -4.0, 5.0])
    logits[1] = logits[0]
    requests = [request("p", prompt=(1, 2), output=(3, 4), repetition_penalty=2.0), request("plain")]
    processed = sampler(vocab_size=8).processed_logits(logits, requests)
    assert processed[0, :6].tolist() == [1.0, 1.0, -4.0, 1.5, -8.0, 5.0]
    assert torch.equal(processed[1], logits[1])  # the neighbour with default settings is untouched


def test_presence_and_frequency_penalties_count_output_tokens_only():
    logits = torch.zeros(1, 8)
    requests = [request("p", prompt=(5, 5), output=(3, 3, 4), presence_penalty=0.5, frequency_penalty=0.25)]
    processed = sampler(vocab_size=8).processed_logits(logits, requests)
    expected = torch.zeros(8)
    expected[3] = -(0.5 + 2 * 0.25)
    expected[4] = -(0.5 + 1 * 0.25)
    assert torch.allclose(processed[0], expected)


def test_each_row_gets_only_its_own_penalties():
    logits = torch.tensor([[2.0, -2.0, 2.0, 0.0]]).expand(3, -1)
    requests = [request("rep", prompt=(0,), output=(1,), repetition_penalty=2.0),
                request("freq", prompt=(0,), output=(1,), frequency_penalty=1.0),
                request("plain", prompt=(0,), output=(1,))]
    processed = sampler(vocab_size=4).processed_logits(logits, requests)
    assert processed.tolist() == [[1.0, -4.0, 2.0, 0.0], [2.0, -3.0, 2.0, 0.0], [2.0, -2.0, 2.0, 0.0]]


def test_penalty_counts_follow_new_tokens_and_restart_after_free():
    logits = torch.zeros(1, 8)
    s = sampler(vocab_size=8)
    req = request("p", output=(3,), frequency_penalty=1.0)
    assert s.processed_logits(logits, [req])[0, 3] == -1.0
    req.append_token(3)
    req.append_token(6)
    processed = s.processed_logits(logits, [req])
    assert processed[0, 3] == -2.0 and processed[0, 6] == -1.0
    s.free(["p"])
    assert s.processed_logits(logits, [request("p", output=(6,), frequency_penalty=1.0)])[0, 3] == 0.0


def test_logit_bias_forces_and_bans_tokens():
    logits = random_logits(2)
    best = logits.argmax(-1).tolist()
    requests = [request("force", logit_bias={7: 100.0}), request("ban", temperature=0.0, logit_bias={best[1]: -100.0})]
    tokens = sampler().sample(logits, requests).token_ids.tolist()
    assert tokens[0] == 7
    assert tokens[1] == logits[1].topk(2).indices[1].item()


def test_min_tokens_bans_eos_and_stop_ids_until_reached():
    logits = torch.tensor([[0.0, 9.0, 8.0, 7.0]])  # eos = 1, stop id = 2
    s = sampler(vocab_size=4)

    def greedy_choice(output: tuple[int, ...], **params) -> int:
        req = request("m", eos=1, output=output, temperature=0.0, stop_token_ids=[2], **params)
        return s.sample(logits, [req]).token_ids.item()

    assert greedy_choice((), min_tokens=2) == 3
    assert greedy_choice((3,), min_tokens=2) == 3
    assert greedy_choice((3, 3), min_tokens=2) == 1
    assert greedy_choice((), min_tokens=2, ignore_eos=True) == 1  # as in vLLM: an ignored eos is no stop token


def test_processing_leaves_the_given_logits_alone_and_copies_only_when_needed():
    logits = random_logits(3)
    before = logits.clone()
    s = sampler()
    plain = [request(f"r{i}") for i in range(3)]
    assert s.processed_logits(logits, plain) is logits
    busy = [request("a", repetition_penalty=1.5, output=(1,)), request("b", logit_bias={0: 3.0}),
            request("c", eos=0, min_tokens=1, top_p=0.5, min_p=0.1, seed=1)]
    s.sample(logits, busy)
    assert torch.equal(logits, before)


# --- seeds ---------------------------------------------------------------------------------------------

def run_steps(s, batch_of_step, steps: int = 12) -> list[int]:
    """Sample ``steps`` steps; each step's batch comes from batch_of_step(step); returns row 'seeded' tokens."""
    tokens = []
    for step in range(steps):
        requests = batch_of_step(step)
        logits = random_logits(len(requests), seed=step)
        row = [r.request_id for r in requests].index("seeded")
        logits[row] = random_logits(1, seed=1000 + step)[0]  # the seeded row sees the same logits every run
        tokens.append(s.sample(logits, requests).token_ids[row].item())
    return tokens


def test_seeded_requests_repeat_across_samplers_and_batches():
    seeded = dict(temperature=1.2, top_p=0.95, seed=42)
    alone = run_steps(sampler(seed=0), lambda step: [request("seeded", **seeded)])
    again = run_steps(sampler(seed=999), lambda step: [request("seeded", **seeded)])
    crowded = run_steps(sampler(seed=1), lambda step: [
        request(f"x{step}", temperature=0.7), request(f"g{step}", temperature=0.0),
        request("seeded", **seeded), request(f"k{step}", top_k=3, seed=step), request(f"y{step}", min_p=0.2)])
    other_seed = run_steps(sampler(seed=0), lambda step: [request("seeded", **{**seeded, "seed": 43})])
    assert alone == again == crowded
    assert alone != other_seed


def test_unseeded_rows_repeat_for_the_same_sampler_seed():
    logits = random_logits(6)
    requests = [request(f"r{i}") for i in range(6)]
    first = [sampler(seed=5).sample(logits, requests).token_ids for _ in range(2)]
    assert torch.equal(first[0], first[1])


def test_free_drops_generators():
    s = sampler()
    logits = random_logits(1)
    first = s.sample(logits, [request("s", seed=3)]).token_ids.item()
    assert "s" in s.request_generators
    s.free(["s"])
    assert "s" not in s.request_generators
    assert s.sample(logits, [request("s", seed=3)]).token_ids.item() == first  # a fresh generator


# --- logprobs ------------------------------------------------------------------------------------------

def test_logprobs_are_of_the_raw_logits_sampled_token_first_then_top_k():
    logits = random_logits(3)
    requests = [request("a", logprobs=2, temperature=0.5, repetition_penalty=1.3, output=(4,)),
                request("b", temperature=0.0, logprobs=0), request("c")]
    out = sampler().sample(logits, requests)
    reference = torch.log_softmax(logits, -1)
    assert out.logprobs.shape == out.logprob_token_ids.shape == (3, 3)  # K = 2 for every row
    assert torch.equal(out.logprob_token_ids[:, 0], out.token_ids)
    assert torch.equal(out.logprob_token_ids[:, 1:], reference.topk(2).indices)
    assert torch.allclose(out.logprobs, reference.gather(1, out.logprob_token_ids), atol=1e-5)
    chosen = reference.gather(1, out.token_ids[:, None])
    assert torch.equal(out.ranks, (reference > chosen).sum(-1) + 1)
    assert out.ranks[1] == 1  # the greedy row took the top token


def test_top_logprobs_for_prompt_positions():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]).log_softmax(-1)
    lp, ids, ranks = top_logprobs(logits, torch.tensor([1, 1]), 0)
    assert lp.shape == ids.shape == (2, 1)
    assert ids[:, 0].tolist() == [1, 1] and ranks.tolist() == [3, 2]
    assert torch.allclose(lp[:, 0], logits[:, 1])
