"""Guided decoding's DFA walk on the device: each guided row's state stepped by the token just sampled for it, so
a step's mask needs no tokens on the host (async scheduling keeps running ahead).

A grammar is a DFA over bytes (transitions [S, 256] int32, state 0 dead); a token is its bytes ([V, L] uint8,
zero-padded, with [V] lengths). One program per row walks its token's bytes, one transition load per byte.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pegboard.kernels.reference import dfa_walk_ref  # noqa: F401  (the reference, beside the kernel)


@triton.jit
def _dfa_walk_kernel(states_ptr, tokens_ptr, eos_ptr, bytes_ptr, lengths_ptr, transitions_ptr, accepting_ptr,
                     out_ptr, stride_bytes):
    row = tl.program_id(0)
    state = tl.load(states_ptr + row).to(tl.int64)
    token = tl.load(tokens_ptr + row).to(tl.int64)
    length = tl.load(lengths_ptr + token)
    walked = tl.where(length > 0, state, 0)
    for k in range(0, length):
        byte = tl.load(bytes_ptr + token * stride_bytes + k).to(tl.int64)
        walked = tl.load(transitions_ptr + walked * 256 + byte).to(tl.int64)
    ended = (token == tl.load(eos_ptr + row)) & (tl.load(accepting_ptr + state) != 0)
    tl.store(out_ptr + row, tl.where(ended, state, walked).to(out_ptr.dtype.element_ty))


def dfa_walk(states: torch.Tensor, token_ids: torch.Tensor, eos_ids: torch.Tensor, token_bytes: torch.Tensor,
             token_lengths: torch.Tensor, transitions: torch.Tensor, accepting: torch.Tensor) -> torch.Tensor:
    """The states after each row's token (as dfa_walk_ref), in one launch."""
    # states: [R] int32; token_ids, eos_ids: [R] int64; token_bytes: [V, L] uint8 (contiguous); token_lengths: [V]
    # int32; transitions: [S, 256] int32 (contiguous); accepting: [S] bool (read as int8, no copy)
    out = torch.empty_like(states)
    if states.numel():
        _dfa_walk_kernel[(states.numel(),)](states, token_ids, eos_ids, token_bytes, token_lengths, transitions,
                                            accepting.view(torch.int8), out, token_bytes.stride(0), num_warps=1)
    return out
