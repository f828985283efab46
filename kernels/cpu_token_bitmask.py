"""The token bitmask applied on the CPU, in place, with integer operations on the logits' bits.

Each bitmask word becomes 32 "keep" words at once (shift bit j to the sign, then an arithmetic shift right:
all ones where token 32 w + j is allowed, zeros where not), and each logit's bits become
``((bits ^ NEG_INF) & keep) ^ NEG_INF``: unchanged where kept, -inf where not. Three in-place passes that
vectorise, where the reference's gather, masked_fill and scatter (and torch's bool masked_fill_) do not;
bit-equal to ``apply_token_bitmask_ref`` (``tests/test_token_bitmask.py``; timings:
``tests/cpu/bench_token_bitmask.py``). Only the named rows are touched. It runs on one intra-op thread:
memory-bound work whose OpenMP teams stall when the cores are shared (core/cpu_threads.py).
"""

from __future__ import annotations

import torch

from pegboard.core.cpu_threads import one_cpu_thread
from pegboard.kernels._utils import check_token_bitmask

_SHIFTS = 31 - torch.arange(32, dtype=torch.int32)  # bit j of a word to bit 31
_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def keep_words(bitmask: torch.Tensor, vocab_size: int, dtype: torch.dtype) -> torch.Tensor:
    """[R, W] int32 bitmask -> [R, V] integers of the logits' width: all ones where allowed, 0 where not."""
    keep = torch.bitwise_left_shift(bitmask.unsqueeze(-1), _SHIFTS)  # [R, W, 32]: bit j at the sign
    keep >>= 31  # arithmetic: -1 where the bit was set
    keep = keep.view(bitmask.shape[0], -1)[:, :vocab_size]
    return keep if dtype == torch.int32 else keep.to(dtype)


def apply_token_bitmask_cpu(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """In place: -inf for every token of logits row rows[i] whose bit in bitmask row i is 0; returns logits."""
    # logits: [N, V] float; bitmask: [R, ceil(V / 32)] int32; rows: [R] int64, distinct
    check_token_bitmask(logits, bitmask, rows)
    if rows.numel() == 0:
        return logits
    with one_cpu_thread():
        _apply(logits, bitmask, rows.tolist())
    return logits


def _apply(logits: torch.Tensor, bitmask: torch.Tensor, indices: list[int]) -> None:
    """-inf into the forbidden tokens of logits rows ``indices`` (bitmask row i for logits row indices[i])."""
    int_dtype = _SAME_WIDTH_INT[logits.dtype]
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype).view(int_dtype).item()
    keep = keep_words(bitmask, logits.shape[1], int_dtype)
    first = indices[0]
    if indices == list(range(first, first + len(indices))):  # consecutive rows (all of them, or one): one view
        targets = [(logits[first:first + len(indices)], keep)]
    else:
        targets = [(logits[row], keep[i]) for i, row in enumerate(indices)]
    for target, kept in targets:
        bits = target.view(int_dtype)
        bits ^= neg_inf
        bits &= kept
        bits ^= neg_inf
