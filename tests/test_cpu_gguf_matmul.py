"""The CPU kernel over packed GGUF blocks (kernels/cpu_gguf_matmul.py) against plain torch.

Its dequantized weights are bit-equal to the loader's float32 ones (plugins/gguf_dequant.py), and its
products equal ``x @ W.T`` up to float32 summation order, for every row count (tiles of 4 weight rows by
2 rows of x, and their edges) and for Q4_0, Q4_1 and Q8_0.
"""

from __future__ import annotations

import pytest
import torch

from pegboard.kernels.cpu_gguf_matmul import (Q4_0, Q4_1, Q8_0, concat_packed, dequantize_packed, pack_gguf_rows,
                                              packed_matmul)
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


@pytest.mark.parametrize("ggml_type", [Q4_0, Q4_1, Q8_0], ids=["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 17])
def test_kernel_equals_float32_matmul(ggml_type, rows):
    n, k = 70, 192  # 70 output rows: 17 tiles of 4 and 2 single rows
    raw = random_blocks(ggml_type, n, k, seed=rows)
    weight = dequantize(raw, ggml_type, (n, k))
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(1))
    out = packed_matmul(x, pack_gguf_rows(raw, ggml_type, (n, k)))
    torch.testing.assert_close(out, x @ weight.T, rtol=1e-5, atol=1e-5)


def test_stacked_shards_multiply_like_the_stacked_matrix():
    parts = [random_blocks(Q4_1, n, 64, seed=n) for n in (8, 4, 4)]  # q, k, v of a small layer
    packed = concat_packed([pack_gguf_rows(p, Q4_1, (n, 64)) for p, n in zip(parts, (8, 4, 4))])
    whole = torch.cat([dequantize(p, Q4_1, (n, 64)) for p, n in zip(parts, (8, 4, 4))])
    x = torch.randn(3, 64)
    torch.testing.assert_close(packed_matmul(x, packed), x @ whole.T, rtol=1e-5, atol=1e-5)


def test_a_width_that_is_not_whole_blocks_is_refused():
    with pytest.raises(ValueError, match="no packed CPU kernel"):
        pack_gguf_rows(torch.zeros(20 * 4, dtype=torch.uint8), Q4_1, (4, 20))
