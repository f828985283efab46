"""The CPU token-bitmask apply (integer bit operations on the logits, in place) against the torch reference:
bit-equal logits for every dtype, for consecutive and scattered rows, vocabularies that are not a multiple of 32,
bitmasks with spare words, and logits that are already -inf, +inf or NaN."""

from __future__ import annotations

import pytest
import torch

from pegboard.kernels.cpu_token_bitmask import apply_token_bitmask_cpu
from pegboard.kernels.reference import apply_token_bitmask_ref


def random_bitmask(rows: int, words: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(-2**31, 2**31 - 1, (rows, words), generator=generator, dtype=torch.int64).to(torch.int32)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    width = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[a.dtype]
    return a.dtype == b.dtype and torch.equal(a.view(width), b.view(width))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("vocab, spare_words", [(32, 0), (100, 0), (1500, 2), (49152, 0)])
@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4, 5], [2, 3, 4], [5], [4, 0, 2], []], ids=str)
def test_the_cpu_apply_gives_the_references_logits(dtype, vocab, spare_words, rows):
    generator = torch.Generator().manual_seed(vocab + len(rows))
    logits = torch.randn(6, vocab, generator=generator).to(dtype)
    logits[:, :3] = torch.tensor([float("-inf"), float("inf"), float("nan")], dtype=dtype)
    bitmask = random_bitmask(len(rows), -(-vocab // 32) + spare_words, generator)
    rows = torch.tensor(rows, dtype=torch.long)
    # (the reference cannot reshape zero rows: no rows leave the logits as they are)
    expected = apply_token_bitmask_ref(logits.clone(), bitmask, rows) if len(rows) else logits
    got = logits.clone()
    assert apply_token_bitmask_cpu(got, bitmask, rows) is got  # in place
    assert same_bits(got, expected)
    untouched = [r for r in range(6) if r not in rows.tolist()]
    assert same_bits(got[untouched], logits[untouched])


def test_all_and_no_bits_set():
    logits = torch.randn(2, 64)
    bitmask = torch.tensor([[-1, -1], [0, 0]], dtype=torch.int32)
    got = apply_token_bitmask_cpu(logits.clone(), bitmask, torch.tensor([0, 1]))
    assert torch.equal(got[0], logits[0]) and bool((got[1] == float("-inf")).all())


def test_a_bad_bitmask_is_refused_by_name():
    with pytest.raises(ValueError, match="bitmask must be int32"):
        apply_token_bitmask_cpu(torch.zeros(1, 64), torch.zeros(1, 1, dtype=torch.int32), torch.tensor([0]))
