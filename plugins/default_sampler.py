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


@hookimpl
def register_samplers(register) -> None:
    register("default", make_sampler)
