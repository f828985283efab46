"""The CPU kernels over packed GGUF blocks (kernels/cpu_gguf_matmul.py) against plain torch.

The packed weights dequantize bit-equal to the loader's float32 ones (plugins/gguf_dequant.py). The integer kernel
computes what ``packed_matmul_ref`` computes (x quantized to 16 bits per block, exact integer sums), within 1e-4
of ``x @ W.T``, for row counts inside and across its groups of 4 rows of x, output rows that leave a tile of 16
part empty, Q4_0, Q4_1 and Q8_0, and widths of 3 and 18 blocks (96, 576).
"""

from __future__ import annotations

import pytest
import torch

from pegboard.kernels.cpu_gguf_matmul import (Q4_0, Q4_1, Q8_0, concat_packed, dequantize_packed, pack_gguf_rows,
                                              packed_matmul, packed_matmul_ref)
from pegboard.plugins.gguf_dequant import dequantize

BLOCK_BYTES = {Q4_0: 18, Q4_1: 20, Q8_0: 34}


def random_blocks(ggml_type: int, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Flat GGUF bytes of a [rows, cols] tensor: random quants under real-sized fp16 scales (and mins)."""
    g = torch.Generator().manual_seed(seed)
    n_blocks = rows * cols // 32
    blocks = torch.randint(0, 256, (n_blocks, BLOCK_BYTES[ggml_type]), dtype=torch.uint8, generator=g)
    blocks[:, 0:2] = (torch.rand(n_blocks, generator=g) * 0.02).half().view(torch.uint8).view(-1, 2)
    if ggml_type == Q4_1:
        blocks[:, 2:4] = (-torch.rand(n_blocks, generator=g) * 0.1).half().view(torch.uint8).view(-1, 2)
    return blocks.reshape(-1)


@pytest.mark.parametrize("ggml_type", [Q4_0, Q4_1, Q8_0], ids=["Q4_0", "Q4_1", "Q8_0"])
def test_packed_weights_dequantize_bit_equal_to_the_loader(ggml_type):
    raw = random_blocks(ggml_type, 40, 96)
    packed = pack_gguf_rows(raw, ggml_type, (40, 96))
    assert torch.equal(dequantize_packed(packed), dequantize(raw, ggml_type, (40, 96)))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("ggml_type", [Q4_0, Q4_1, Q8_0], ids=["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("k", [96, 576])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 17, 65])
def test_the_kernel_equals_its_reference_and_the_float32_matmul(ggml_type, k, rows):
    n = 70  # 70 output rows: 4 tiles of 16 and one with 6 rows and 10 of zero padding
    raw = random_blocks(ggml_type, n, k, seed=rows)
    weight = dequantize(raw, ggml_type, (n, k))
    packed = pack_gguf_rows(raw, ggml_type, (n, k))
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(1))
    out = packed_matmul(x, packed)
    assert relative_error(out, packed_matmul_ref(x, packed)) < 1e-5  # 16-bit x: the reference's arithmetic
    assert relative_error(out, x @ weight.T) < 1e-4  # and close to float32's


def test_stacked_shards_multiply_like_the_stacked_matrix():
    parts = [random_blocks(Q4_1, n, 64, seed=n) for n in (8, 4, 4)]  # q, k, v of a small layer
    packed = concat_packed([pack_gguf_rows(p, Q4_1, (n, 64)) for p, n in zip(parts, (8, 4, 4))])
    whole = torch.cat([dequantize(p, Q4_1, (n, 64)) for p, n in zip(parts, (8, 4, 4))])
    for rows in (3, 9):  # one group of rows of x, and two and a part
        x = torch.randn(rows, 64)
        assert relative_error(packed_matmul(x, packed), x @ whole.T) < 1e-4


def test_a_width_that_is_not_whole_blocks_is_refused():
    with pytest.raises(ValueError, match="no packed CPU kernel"):
        pack_gguf_rows(torch.zeros(20 * 4, dtype=torch.uint8), Q4_1, (4, 20))
