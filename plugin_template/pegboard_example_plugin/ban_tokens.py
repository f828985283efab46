"""The logits processor: -inf for the banned token ids of every request in the batch (docs/hooks.md has the
LogitsProcessor interface: a request lifecycle, then apply() on each step's rows)."""

from __future__ import annotations

import torch

from typing import Sequence

from pegboard.core.errors import InvalidParameterError
from pegboard.core.sampling_params import SamplingParams


class BanTokens:
    """Bans the same token ids in every request: it follows all of them, and needs none of their tokens."""

    follows_tokens = False  # apply() does not read the tokens requests generate

    def __init__(self, token_ids: list[int], *, vocab_size: int, device: torch.device | str) -> None:
        bad = [t for t in token_ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidParameterError(f"ban_token_ids {bad} are outside the vocabulary [0, {vocab_size})",
                                        param="ban_token_ids")
        self.token_ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long, device=device)

    def add_request(self, request_id: str, params: SamplingParams, prompt_token_ids: Sequence[int]) -> bool:
        """Follow every request when there is anything to ban."""
        return len(self.token_ids) > 0

    def accept_tokens(self, request_id: str, token_ids: Sequence[int]) -> None:
        """Nothing to track: the bans never change."""

    def remove_request(self, request_id: str) -> None:
        """Nothing to forget."""

    def apply(self, logits: torch.Tensor, request_ids: Sequence[str]) -> torch.Tensor:
        """-inf for the banned tokens in every row ([N, V]) of the step."""
        logits[:, self.token_ids] = float("-inf")
        return logits
