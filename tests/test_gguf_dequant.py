"""The torch GGUF dequantizers are bit-exact with gguf-py's numpy reference on random blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from pegboard.core.errors import UnsupportedModelError
from pegboard.plugins.gguf_dequant import block_layout, dequantize, supported_type_names

FAST_TYPES = [GGMLQuantizationType[name] for name in supported_type_names()]


@pytest.mark.parametrize("qtype", [*FAST_TYPES, GGMLQuantizationType.Q2_K, GGMLQuantizationType.Q3_K],
                         ids=lambda t: t.name)
def test_matches_gguf_numpy(qtype: GGMLQuantizationType):
    block_size, block_bytes = GGML_QUANT_SIZES[qtype]
    rows, blocks_per_row = 3, 256 // block_size * 2
    raw = np.random.default_rng(int(qtype)).integers(0, 256, rows * blocks_per_row * block_bytes, dtype=np.uint8)
    with np.errstate(all="ignore"):  # random scales include inf and NaN; equal NaNs compare equal below
        expected = quants.dequantize(raw.reshape(rows, -1), qtype).astype(np.float32)
        got = dequantize(torch.from_numpy(raw.copy()), int(qtype), tuple(expected.shape))
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("qtype", FAST_TYPES, ids=lambda t: t.name)
def test_large_cpu_tensors_in_pieces_match(qtype: GGMLQuantizationType, monkeypatch):
    from pegboard.plugins import gguf_dequant

    block_size, block_bytes = GGML_QUANT_SIZES[qtype]
    rows, row_values = 5, 256 * 3
    raw = np.random.default_rng(int(qtype)).integers(0, 256, rows * row_values // block_size * block_bytes,
                                                     dtype=np.uint8)
    with np.errstate(all="ignore"):
        expected = quants.dequantize(raw.reshape(rows, -1), qtype).astype(np.float32)
    monkeypatch.setattr(gguf_dequant, "PIECE_VALUES", 512)  # 7.5 pieces: the last one is short
    got = dequantize(torch.from_numpy(raw.copy()), int(qtype), (rows, row_values))
    np.testing.assert_array_equal(got.numpy(), expected)


def test_covers_the_common_types():
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"} <= set(supported_type_names())


def test_unknown_and_unsupported_types():
    with pytest.raises(UnsupportedModelError, match=r"'w'.*ggml type 99"):
        block_layout(99, "w")
    raw = torch.zeros(40, dtype=torch.uint8)
    with pytest.raises(UnsupportedModelError, match=r"'w'.*Q8_1"):
        dequantize(raw, int(GGMLQuantizationType.Q8_1), (32,), "w")
