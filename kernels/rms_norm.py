"""Fused RMSNorm with optional residual add, rounding exactly where the model's torch RMSNorm does.

One program per row: x (+ residual) is summed in fp32 and rounded to x's dtype (that rounded sum is
the new residual), normalised in fp32, rounded to x's dtype, then multiplied by the weight.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pegboard.kernels._utils import check, check_float, check_last_dim_contiguous, check_same_device, next_power_of_2
from pegboard.kernels.reference import rms_norm_ref  # noqa: F401  (the reference, beside the kernel)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, inner, eps,
    sx0, sx1, sr0, sr1, so0, so1, sro0, sro1,
    N: tl.constexpr, BLOCK_N: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    i, j = row // inner, row % inner  # rows are [outer, inner] (inner = 1 for a 2-D input)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(x_ptr + i * sx0 + j * sx1 + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(res_ptr + i * sr0 + j * sr1 + cols, mask=mask, other=0.0).to(tl.float32))
        x = x.to(res_out_ptr.dtype.element_ty)  # x + residual rounds to x's dtype, as in torch
        tl.store(res_out_ptr + i * sro0 + j * sro1 + cols, x, mask=mask)
    h = x.to(tl.float32)
    h = h * tl.rsqrt(tl.sum(h * h, 0) / N + eps)
    h = h.to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + i * so0 + j * so1 + cols, (w * h).to(out_ptr.dtype.element_ty), mask=mask)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """A 2-D or 3-D tensor as a [outer, inner, N] view."""
    return t.unsqueeze(1) if t.dim() == 2 else t


def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float, residual: torch.Tensor | None = None,
             out: torch.Tensor | None = None,
             residual_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x (+ residual): returns (weight * normed, new residual); new residual is x without one."""
    # x: [T, N] or [T, H, N] (any outer strides, e.g. per-head q/k views); weight: [N];
    # residual: like x. out / residual_out may alias x / residual (in place).
    check(x.dim() in (2, 3), f"x must be [T, N] or [T, H, N], got {tuple(x.shape)}")
    n = x.shape[-1]
    check_float("x", x)
    check(weight.shape == (n,) and weight.is_contiguous(),
          f"weight must be contiguous [{n}], got {tuple(weight.shape)}")
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    check(out.shape == x.shape and out.dtype == x.dtype, f"out must be {tuple(x.shape)} {x.dtype}")
    tensors = {"x": x, "out": out}
    if residual is not None:
        check(residual.shape == x.shape and residual.dtype == x.dtype,
              f"residual must be {tuple(x.shape)} {x.dtype}, got {tuple(residual.shape)} {residual.dtype}")
        if residual_out is None:
            residual_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        check(residual_out.shape == x.shape and residual_out.dtype == x.dtype,
              f"residual_out must be {tuple(x.shape)} {x.dtype}")
        tensors.update(residual=residual, residual_out=residual_out)
    for name, t in tensors.items():
        check_last_dim_contiguous(name, t)
    check_same_device(weight=weight, **tensors)
    if x.numel() == 0:
        return out, (residual_out if residual is not None else x)

    rows = {name: _as_rows(t) for name, t in tensors.items()}
    x3, out3 = rows["x"], rows["out"]
    res3, res_out3 = rows.get("residual", x3), rows.get("residual_out", x3)
    block_n = next_power_of_2(n)
    _rms_norm_kernel[(x3.shape[0] * x3.shape[1],)](
        x3, res3, weight, out3, res_out3, x3.shape[1], eps,
        x3.stride(0), x3.stride(1), res3.stride(0), res3.stride(1), out3.stride(0), out3.stride(1),
        res_out3.stride(0), res_out3.stride(1),
        N=n, BLOCK_N=block_n, HAS_RESIDUAL=residual is not None,
        num_warps=min(max(block_n // 256, 1), 16))
    return out, (residual_out if residual is not None else x)
