"""The logits processor: -inf for the banned token ids of every request in the batch."""

from __future__ import annotations

import torch

from pegboard.core.errors import InvalidParameterError


class BanTokens:
    """Called once per step with the logits of the rows to sample ([N, V]) and their requests."""

    def __init__(self, token_ids: list[int], *, vocab_size: int, device: torch.device | str) -> None:
        bad = [t for t in token_ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidParameterError(f"ban_token_ids {bad} are outside the vocabulary [0, {vocab_size})",
                                        param="ban_token_ids")
        self.token_ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long, device=device)

    def __call__(self, logits: torch.Tensor, requests: list) -> torch.Tensor:
        if len(self.token_ids):
            logits[:, self.token_ids] = float("-inf")
        return logits
