"""Token bitmasks for guided decoding: -inf, in place, for every token a row's grammar forbids.

One packed int32 bitmask for the whole batch (bit j of word w allows token 32 w + j), uploaded once a step:
a 49,152-token vocabulary is 6 KB a row, not the 192 KB of a float mask. ``rows`` names the logits rows the
bitmask's rows belong to, so unconstrained rows cost nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pegboard.kernels._utils import check_token_bitmask
from pegboard.kernels.reference import apply_token_bitmask_ref  # noqa: F401  (the reference, beside the kernel)

BLOCK = 1024  # tokens per program (a multiple of 32)


@triton.jit
def _apply_token_bitmask_kernel(logits_ptr, bitmask_ptr, rows_ptr, stride_l, stride_b, V, BLOCK: tl.constexpr):
    mask_row = tl.program_id(0).to(tl.int64)
    row = tl.load(rows_ptr + mask_row)
    tokens = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = tokens < V
    words = tl.load(bitmask_ptr + mask_row * stride_b + tokens // 32, mask=inside, other=-1)
    forbidden = ((words >> (tokens % 32)) & 1) == 0
    tl.store(logits_ptr + row * stride_l + tokens, tl.full([BLOCK], float("-inf"), tl.float32).to(
        logits_ptr.dtype.element_ty), mask=inside & forbidden)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """In place: -inf for every token of logits row rows[i] whose bit in bitmask row i is 0; returns logits."""
    # logits: [N, V] float; bitmask: [R, ceil(V / 32)] int32; rows: [R] int64, distinct
    check_token_bitmask(logits, bitmask, rows)
    if rows.numel() == 0:
        return logits
    _apply_token_bitmask_kernel[(rows.numel(), triton.cdiv(logits.shape[1], BLOCK))](
        logits, bitmask, rows, logits.stride(0), bitmask.stride(0), logits.shape[1], BLOCK=BLOCK, num_warps=4)
    return logits
