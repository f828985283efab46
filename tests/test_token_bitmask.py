"""The token-bitmask kernel against its torch reference (under the Triton interpreter on CPU, natively on CUDA),
and the packing rule it shares with the grammar processor: bit j of word w allows token 32 w + j."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from pegboard.kernels.reference import apply_token_bitmask_ref, unpack_token_bitmask  # noqa: E402
from pegboard.kernels.token_bitmask import apply_token_bitmask  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_bitmask(rows: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    words = -(-vocab // 32)
    return torch.randint(-2**31, 2**31 - 1, (rows, words), generator=generator, dtype=torch.int64).to(torch.int32)


def test_bit_j_of_word_w_allows_token_32w_plus_j():
    bitmask = torch.zeros(1, 2, dtype=torch.int32)
    bitmask[0, 0] = 1 << 3  # token 3
    bitmask[0, 1] = -2**31  # bit 31 of word 1: token 63 (the sign bit)
    assert unpack_token_bitmask(bitmask, 64).nonzero()[:, 1].tolist() == [3, 63]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("vocab", [32, 100, 1500])
def test_the_kernel_masks_exactly_like_the_reference(dtype, vocab):
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(6, vocab, generator=generator).to(dtype)
    bitmask = random_bitmask(3, vocab, generator)
    rows = torch.tensor([4, 0, 2])
    expected = apply_token_bitmask_ref(logits.clone(), bitmask, rows)
    got = apply_token_bitmask(logits.clone().to(DEVICE), bitmask.to(DEVICE), rows.to(DEVICE)).cpu()
    assert torch.equal(got, expected)
    assert torch.equal(got[[1, 3, 5]], logits[[1, 3, 5]])  # rows without a mask are untouched


def test_no_rows_is_a_no_op():
    logits = torch.randn(2, 64)
    out = apply_token_bitmask(logits.clone().to(DEVICE), torch.zeros(0, 2, dtype=torch.int32, device=DEVICE),
                              torch.zeros(0, dtype=torch.long, device=DEVICE)).cpu()
    assert torch.equal(out, logits)


def test_the_grammar_processor_packs_what_the_kernel_unpacks():
    from pegboard.core.grammar_processor import pack_bits, set_eos_bits

    allowed = torch.zeros(96, dtype=torch.bool)
    allowed[[0, 31, 32, 95]] = True
    words = pack_bits(allowed)
    assert words.dtype == torch.int32 and unpack_token_bitmask(words[None], 96)[0].nonzero()[:, 0].tolist() == [
        0, 31, 32, 95]
    empty = torch.zeros(3, dtype=torch.int32)
    set_eos_bits(empty[None], torch.tensor([95]), torch.tensor([True]))  # token 95, the sign bit of its word
    assert unpack_token_bitmask(empty[None], 96)[0].nonzero()[:, 0].tolist() == [95]
    set_eos_bits(empty[None], torch.tensor([-1]), torch.tensor([False]))  # no EOS: the row stays as it is
    assert unpack_token_bitmask(empty[None], 96)[0].nonzero()[:, 0].tolist() == [95]
    set_eos_bits(empty[None], torch.tensor([95]), torch.tensor([False]))  # the grammar cannot end: EOS forbidden
    assert unpack_token_bitmask(empty[None], 96)[0].nonzero()[:, 0].tolist() == []
