"""Benchmark prompt generation: lengths in range, deterministic by seed, no special tokens."""

from __future__ import annotations

import pytest

from pegboard.plugins.bench.data import mixed_requests, ordinary_token_ids, random_requests, tokenizer_special_ids

SPECIAL = {0, 1, 2, 7}
VOCAB = ordinary_token_ids(50, SPECIAL)


def mixed(seed: int = 0, num: int = 40):
    return mixed_requests(VOCAB, num, min_input_len=3, max_input_len=20, min_output_len=5, max_output_len=9,
                          seed=seed)


def test_mixed_lengths_are_in_range():
    requests = mixed()
    assert len(requests) == 40
    assert all(3 <= r.input_len <= 20 and 5 <= r.output_len <= 9 for r in requests)
    assert len({r.input_len for r in requests}) > 1  # lengths actually vary


def test_random_dataset_has_fixed_lengths():
    requests = random_requests(VOCAB, 5, input_len=12, output_len=4, seed=3)
    assert [(r.input_len, r.output_len) for r in requests] == [(12, 4)] * 5


def test_same_seed_same_prompts_other_seed_other_prompts():
    assert mixed(seed=1) == mixed(seed=1)
    assert mixed(seed=1) != mixed(seed=2)


def test_no_special_tokens():
    assert set(VOCAB) == set(range(50)) - SPECIAL
    used = {t for r in mixed(num=200) for t in r.prompt_token_ids}
    assert not used & SPECIAL and used <= set(range(50))


def test_tokenizer_special_ids_include_added_tokens():
    class Tokenizer:
        all_special_ids = [1, 2]
        added_tokens_decoder = {0: "<unk>", 5: "<|im_start|>"}

    assert tokenizer_special_ids(Tokenizer()) == {0, 1, 2, 5}


def test_bad_range_is_rejected():
    with pytest.raises(ValueError, match="input lengths"):
        mixed_requests(VOCAB, 1, min_input_len=9, max_input_len=3, min_output_len=1, max_output_len=1, seed=0)


def test_random_prompts_are_runs_of_consecutive_ordinary_ids_as_vllm_makes_them():
    requests = random_requests(VOCAB, 50, input_len=10, output_len=8, seed=5, range_ratio=0.5, prefix_len=3)
    prefix = requests[0].prompt_token_ids[:3]
    for request in requests:
        assert request.prompt_token_ids[:3] == prefix  # one shared random prefix
        run = [VOCAB.index(t) for t in request.prompt_token_ids[3:]]
        assert all((b - a) % len(VOCAB) == 1 for a, b in zip(run, run[1:]))  # consecutive, wrapping
        assert 5 <= request.input_len - 3 <= 15 and 4 <= request.output_len <= 12  # [floor(L/2), ceil(3L/2)]
    assert len({r.input_len for r in requests}) > 1
    with pytest.raises(ValueError, match="range ratio must be in"):
        random_requests(VOCAB, 1, input_len=4, output_len=4, seed=0, range_ratio=1.0)
