"""kernels/cpu_rms_norm.cpp: the packed CPU path's one-pass RMSNorm, residual added first. The sum is x + residual
exactly; the normed rows match F.rms_norm to float32 rounding (the mean's sum runs in another order)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pegboard.kernels.cpu_build import compiled_ops
from pegboard.plugins.llama_model import RMSNorm


@pytest.mark.parametrize("rows, dim", [(1, 576), (5, 576), (40, 960), (3, 50)])  # 50: a tail past 16 lanes
def test_normed_rows_match_torch_and_the_sum_is_exact(rows, dim):
    x, residual, weight = torch.randn(rows, dim), torch.randn(rows, dim), torch.randn(dim)
    normed, total = compiled_ops().add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(total, x + residual)
    torch.testing.assert_close(normed, F.rms_norm(x + residual, (dim,), weight, 1e-5), rtol=1e-5, atol=1e-6)


def test_without_a_residual_the_sum_is_x_itself():
    x, weight = torch.randn(2, 64), torch.randn(64)
    normed, total = compiled_ops().add_rms_norm(x, None, weight, 1e-6)
    assert total is x or total.data_ptr() == x.data_ptr()
    torch.testing.assert_close(normed, F.rms_norm(x, (64,), weight, 1e-6), rtol=1e-5, atol=1e-6)


def test_the_model_norm_takes_the_kernel_once_it_is_given_and_returns_what_torch_does():
    norm = RMSNorm(96, eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    x, residual = torch.randn(4, 96), torch.randn(4, 96)
    want_normed, want_sum = norm(x, residual)
    norm.fused_add_norm = compiled_ops().add_rms_norm
    normed, total = norm(x, residual)
    assert torch.equal(total, want_sum)
    torch.testing.assert_close(normed, want_normed, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_refused_by_name():
    with pytest.raises(RuntimeError, match="weight"):
        compiled_ops().add_rms_norm(torch.randn(2, 8), None, torch.randn(9), 1e-5)
    with pytest.raises(RuntimeError, match="residual"):
        compiled_ops().add_rms_norm(torch.randn(2, 8), torch.randn(2, 9), torch.randn(8), 1e-5)


def test_a_residual_the_kernel_cannot_take_goes_through_torchs_steps():
    norm = RMSNorm(32, eps=1e-5)
    x, residual = torch.randn(4, 32), torch.randn(32, 4).t()  # a transposed view: not contiguous
    want_normed, want_sum = norm(x, residual)
    norm.fused_add_norm = compiled_ops().add_rms_norm
    normed, total = norm(x, residual)
    assert torch.equal(normed, want_normed) and torch.equal(total, want_sum)
