"""HostStaging packs a step's integer lists into one upload; every view keeps its values and starts on a 16-byte
boundary, so a Triton kernel meets one pointer alignment whatever the step's sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pegboard.core.staging import ALIGN_BYTES, HostStaging, padded_rows


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("sizes", [(1, 2, 3), (5, 0, 7, 1), (4, 4), (3,), (0, 0)])
def test_every_view_holds_its_values_and_starts_aligned(dtype, sizes):
    values = [list(range(10 * i, 10 * i + n)) for i, n in enumerate(sizes)]
    views = HostStaging(torch.device("cpu"), dtype).upload(*values)
    assert [v.tolist() for v in views] == values
    assert all(v.dtype == dtype for v in views)
    assert all(v.data_ptr() % ALIGN_BYTES == 0 for v in views if v.numel())


def test_arrays_are_flattened_row_major():
    table = padded_rows([[1, 2, 3], [4]], width=3)
    lens, flat = HostStaging(torch.device("cpu"), torch.int32).upload([3, 1], table)
    assert lens.tolist() == [3, 1]
    assert flat.view(2, 3).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert flat.data_ptr() % ALIGN_BYTES == 0


def test_padded_rows_zero_fills_each_row_end():
    assert padded_rows([[7], [], [1, 2]], width=2).tolist() == [[7, 0], [0, 0], [1, 2]]
    assert padded_rows([[7]], width=1, dtype=np.int32).dtype == np.int32
