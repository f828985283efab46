"""Batched sampling math on the device: penalties, min-p, top-k/top-p and the exponential race."""

from __future__ import annotations

import torch

NEG_INF = float("-inf")
RACE_BLOCK = 256  # tokens per block of the two-level exponential race


def apply_penalties(logits: torch.Tensor, output_counts: torch.Tensor, in_prompt: torch.Tensor | None,
                    repetition: torch.Tensor | None, presence: torch.Tensor | None,
                    frequency: torch.Tensor | None) -> torch.Tensor:
    """A penalized copy of ``logits``: repetition over prompt and output (HF/vLLM), presence and frequency
    over output (OpenAI).  A penalty passed as None is off in every row (and needs no passes)."""
    # logits, output_counts (float): [M, V]; in_prompt: [M, V] bool; repetition, presence, frequency: [M]
    in_output = output_counts > 0
    out = logits
    if repetition is not None:
        rep = repetition[:, None]
        out = torch.where(in_output | in_prompt, torch.where(out > 0, out / rep, out * rep), out)
    if frequency is not None:
        out = out.addcmul(frequency[:, None], output_counts, value=-1.0)
    if presence is not None:
        out = torch.where(in_output, out - presence[:, None], out)
    return out


def apply_min_p(logits: torch.Tensor, log_min_p: torch.Tensor) -> None:
    """Drop (in place) tokens less likely than min_p times the row's most likely; ``-inf`` turns a row off."""
    # logits: [R, V]; log_min_p: [R]; p < min_p * p_max  <=>  logit < max_logit + log(min_p)
    threshold = logits.amax(-1, keepdim=True) + log_min_p[:, None]  # [R, 1]
    logits.masked_fill_(logits < threshold, NEG_INF)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor | None, head: int) -> None:
    """Keep (in place) each row's top_k tokens, then the smallest set of those holding top_p of the mass.

    ``head`` (>= every top_k) is how many sorted candidates to look at: ``topk(head)`` when small, a full
    sort when it is the vocabulary size.  Ties with the last kept token are kept too.
    """
    # logits: [M, V]; top_k: [M] int64 in 1..head (V = off); top_p: [M] float in (0, 1] (1 = off)
    vocab = logits.shape[-1]
    if head >= vocab:
        sorted_logits = logits.sort(-1, descending=True).values  # [M, V]
    else:
        sorted_logits = logits.topk(head, -1).values  # [M, head], descending
    keep = top_k  # [M] how many sorted candidates survive
    if top_p is not None:
        positions = torch.arange(sorted_logits.shape[-1], device=logits.device)
        sorted_logits.masked_fill_(positions >= top_k[:, None], NEG_INF)
        probs = sorted_logits.softmax(-1)  # renormalized over the top_k
        mass_before = probs.cumsum(-1) - probs  # [M, head] mass of the more likely tokens
        # the most likely token always stays, also when top_p underflows to 0 or a row's mass is NaN
        nucleus = (mass_before < top_p[:, None]).sum(-1).clamp_(min=1)  # [M]
        keep = torch.where(top_p < 1, torch.minimum(nucleus, top_k), top_k)
    threshold = sorted_logits.gather(-1, (keep - 1)[:, None])  # [M, 1]
    logits.masked_fill_(logits < threshold, NEG_INF)


def race_noise_size(vocab_size: int, block: int = RACE_BLOCK) -> int:
    """How many uniform numbers ``exponential_race`` takes per row: one per block, then one per block entry."""
    return -(-vocab_size // block) + block


def exponential_race(probs: torch.Tensor, uniform: torch.Tensor, block: int = RACE_BLOCK) -> torch.Tensor:
    """Sample each row by two exponential races: a block by its mass, then a token inside that block.

    Each race is argmax(weight / Exp(1)), exact like one race over the whole row, but it takes
    ceil(V / block) + block noise numbers per row instead of V.  ``uniform`` in [0, 1) becomes the
    noise in place; -log(u) lies in (0, inf], so a zero-probability token or block never wins.
    """
    # probs: [R, V]; uniform: [R, race_noise_size(V, block)]
    rows, vocab = probs.shape
    full = vocab // block * block
    mass = probs[:, :full].reshape(rows, -1, block).sum(-1)  # [R, V // block]
    if full < vocab:
        mass = torch.cat([mass, probs[:, full:].sum(-1, keepdim=True)], 1)  # [R, ceil(V / block)]
    noise = uniform.log_().neg_()
    num_blocks = mass.shape[1]
    chosen = (mass / noise[:, :num_blocks]).argmax(-1)  # [R]
    ids = chosen[:, None] * block + torch.arange(block, device=probs.device)  # [R, block]
    inside = probs.gather(1, ids.clamp(max=vocab - 1)).masked_fill_(ids >= vocab, 0.0)  # [R, block]
    winner = (inside / noise[:, num_blocks:]).argmax(-1, keepdim=True)  # [R, 1]
    return ids.gather(1, winner).squeeze(1)  # [R]
