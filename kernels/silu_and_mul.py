"""SwiGLU activation over a fused gate/up projection: out = silu(x[:, :N]) * x[:, N:].

silu is computed in fp32 and rounded to x's dtype before the product (as torch's F.silu(gate) * up).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pegboard.kernels._utils import check, check_float, check_last_dim_contiguous, check_same_device, next_power_of_2
from pegboard.kernels.reference import silu_and_mul_ref  # noqa: F401  (the reference, beside the kernel)

MAX_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + N + cols, mask=mask, other=0.0).to(tl.float32)
    act = (gate * tl.sigmoid(gate)).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up of a fused [T, 2N] gate/up tensor -> [T, N]."""
    # x: [T, 2N] (rows may be strided); out: [T, N]
    check(x.dim() == 2 and x.shape[1] % 2 == 0, f"x must be [T, 2N], got {tuple(x.shape)}")
    check_float("x", x)
    check_last_dim_contiguous("x", x)
    num_rows, n = x.shape[0], x.shape[1] // 2
    if out is None:
        out = torch.empty((num_rows, n), dtype=x.dtype, device=x.device)
    check(out.shape == (num_rows, n) and out.dtype == x.dtype, f"out must be [{num_rows}, {n}] {x.dtype}")
    check_last_dim_contiguous("out", out)
    check_same_device(x=x, out=out)
    if num_rows == 0 or n == 0:
        return out
    block = min(MAX_BLOCK, next_power_of_2(n))
    _silu_and_mul_kernel[(num_rows, triton.cdiv(n, block))](
        x, out, x.stride(0), out.stride(0), n, BLOCK=block, num_warps=4 if block >= 512 else 1)
    return out
