"""Plain-torch references for every kernel in pegboard.kernels (no triton import): the tests' ground truth.

Attention references compute in ``compute_dtype`` (fp32 by default) and return the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def paged_slots(block_table: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """Cache slots of positions 0..length-1 of one request: [length] int64."""
    pos = torch.arange(length, device=block_table.device)
    return block_table.long()[pos // block_size] * block_size + pos % block_size


def paged_decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, context_lens: torch.Tensor, *, block_size: int,
                               scale: float, compute_dtype: torch.dtype = torch.float32,
                               max_tokens_per_chunk: int = 1 << 18) -> torch.Tensor:
    """Decode attention by gathering each context (padded to the longest) and one masked SDPA per batch chunk."""
    # q: [B, H, D]; caches: [S, Hkv, D]; block_tables: [B, max_blocks]; context_lens: [B] -> [B, H, D]
    batch = q.shape[0]
    out = torch.zeros_like(q)
    lens = context_lens.long()
    max_len = int(lens.max()) if batch else 0
    if max_len == 0:
        return out
    pos = torch.arange(max_len, device=q.device)
    blocks = block_tables.long().gather(1, (pos // block_size).clamp(max=block_tables.shape[1] - 1).expand(batch, -1))
    slots = blocks * block_size + pos % block_size  # [B, L]; padding positions point at some slot, masked below
    rows = max(1, max_tokens_per_chunk // max_len)
    for i in range(0, batch, rows):
        j = min(i + rows, batch)
        live = lens[i:j] > 0
        k = k_cache[slots[i:j]].to(compute_dtype).transpose(1, 2)  # [b, Hkv, L, D]
        v = v_cache[slots[i:j]].to(compute_dtype).transpose(1, 2)
        mask = (pos[None, :] < lens[i:j, None])[:, None, None, :]  # [b, 1, 1, L]
        o = F.scaled_dot_product_attention(q[i:j].to(compute_dtype).unsqueeze(2), k, v, attn_mask=mask,
                                           scale=scale, enable_gqa=True).squeeze(2)  # [b, H, D]
        out[i:j] = torch.where(live[:, None, None], o, 0).to(q.dtype)
    return out


def paged_prefill_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                                context_lens: torch.Tensor, *, block_size: int, scale: float,
                                compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Causal varlen attention of each request's new tokens (the last q_len of its context), one SDPA per request."""
    # q: [T, H, D]; caches: [S, Hkv, D]; query_start_loc: [B+1]; context_lens: [B] (incl. new tokens) -> [T, H, D]
    out = torch.zeros_like(q)
    starts = query_start_loc.tolist()
    for b, ctx in enumerate(context_lens.tolist()):
        s, e = starts[b], starts[b + 1]
        if e == s:
            continue
        slots = paged_slots(block_tables[b], ctx, block_size)
        k = k_cache[slots].to(compute_dtype).transpose(0, 1)  # [Hkv, ctx, D]
        v = v_cache[slots].to(compute_dtype).transpose(0, 1)
        q_pos = torch.arange(ctx - (e - s), ctx, device=q.device)
        mask = torch.arange(ctx, device=q.device)[None, :] <= q_pos[:, None]  # [q, ctx]
        o = F.scaled_dot_product_attention(q[s:e].to(compute_dtype).transpose(0, 1), k, v, attn_mask=mask,
                                           scale=scale, enable_gqa=True)  # [H, q, D]
        out[s:e] = o.transpose(0, 1).to(q.dtype)
    return out


def kv_cache_write_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    """k_cache[slot_mapping[t]] = k[t] (same for v), skipping slot -1."""
    keep = slot_mapping >= 0
    k_cache[slot_mapping[keep]] = k[keep]
    v_cache[slot_mapping[keep]] = v[keep]


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, *, eps: float,
                 residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's RMSNorm: x (+ residual) in x's dtype, normalised in fp32 -> (normed, new residual)."""
    if residual is not None:
        x = x + residual
    residual = x
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * h.to(x.dtype)).to(x.dtype), residual


def rotary_ref(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half rotary embedding from [P, D] cos/sin tables (the model's formula)."""
    c = cos[positions].unsqueeze(1).to(q.dtype)  # [T, 1, D]
    s = sin[positions].unsqueeze(1).to(q.dtype)

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :N]) * x[..., N:]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def unpack_token_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, ceil(V / 32)] int32 words (bit j of word w: token 32 w + j is allowed) -> [R, V] bool."""
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask[:, :, None] >> shifts) & 1  # [R, W, 32]
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask_ref(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """In place: -inf for every token of logits row rows[i] whose bit in bitmask row i is 0; returns logits."""
    # logits: [N, V]; bitmask: [R, ceil(V / 32)] int32; rows: [R] int64 (distinct)
    allowed = unpack_token_bitmask(bitmask, logits.shape[1])  # [R, V]
    logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
    return logits


def dfa_walk_ref(states: torch.Tensor, token_ids: torch.Tensor, eos_ids: torch.Tensor, token_bytes: torch.Tensor,
                 token_lengths: torch.Tensor, transitions: torch.Tensor, accepting: torch.Tensor) -> torch.Tensor:
    """Each DFA state stepped by its token's bytes (state 0 is dead; an empty token leads there); a token equal
    to the row's EOS id (-1: none) in an accepting state leaves the state as it was."""
    # states, token_ids, eos_ids: [R]; token_bytes: [V, L] uint8; token_lengths: [V]; transitions: [S, 256]
    lengths = token_lengths[token_ids].long()
    walked = torch.where(lengths > 0, states.long(), 0)
    pieces = token_bytes[token_ids].long()
    for k in range(int(lengths.max()) if lengths.numel() else 0):
        walked = torch.where(lengths > k, transitions[walked, pieces[:, k]].long(), walked)
    ended = (token_ids == eos_ids) & accepting[states.long()]
    return torch.where(ended, states.long(), walked).to(states.dtype)
