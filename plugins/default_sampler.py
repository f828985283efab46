"""Built-in plugin: the default sampler, registered as a factory so torch is imported only when it is built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pegboard.core.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch

    from pegboard.plugins.sampling import Sampler


def make_sampler(vocab_size: int, device: torch.device | str, seed: int) -> Sampler:
    """Build the default Sampler (plugins/sampling.py, and torch with it, are imported only now)."""
    from pegboard.plugins.sampling import Sampler

    return Sampler(vocab_size, device, seed)


def top_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logprobs [P, 1+k], token ids [P, 1+k] and ranks [P] of ``token_ids`` then the top k (for prompt logprobs)."""
    from pegboard.plugins.sampling_ops import top_logprobs as compute

    return compute(logits, token_ids, k)


@hookimpl
def register_samplers(register) -> None:
    register("default", make_sampler)
