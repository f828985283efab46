"""Logprobs of chosen tokens plus the top k, in the layout samplers and the runner share."""

from __future__ import annotations

import torch


def top_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logprobs of ``token_ids`` (column 0) and of each row's top ``k`` tokens (columns 1..k), and ranks.

    Logprobs are log_softmax(logits); a rank is 1 + the number of tokens with a strictly greater logit.
    """
    # logits: [P, V]; token_ids: [P]
    lse = logits.logsumexp(-1, keepdim=True)  # [P, 1]
    chosen = logits.gather(-1, token_ids[:, None])  # [P, 1]
    ranks = (logits > chosen).sum(-1) + 1  # [P]
    top_values, top_ids = logits.topk(k, -1)  # [P, k]
    logprobs = torch.cat([chosen, top_values], 1) - lse  # [P, 1 + k]
    ids = torch.cat([token_ids[:, None], top_ids], 1)  # [P, 1 + k]
    return logprobs, ids, ranks
