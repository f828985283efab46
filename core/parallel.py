"""Where this worker sits in the tensor-parallel group: the collectives the parallel layers call, and how a
rank copies its part of a whole checkpoint tensor.

With ``tp_size == 1`` (the default) every layer holds whole weights and no collective is ever called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pegboard.core.errors import UnsupportedModelError


@dataclass(frozen=True)
class ParallelContext:
    """This worker's tensor-parallel rank and size, and the process group the collectives run over."""

    tp_size: int = 1
    tp_rank: int = 0
    group: Any = None  # a torch.distributed ProcessGroup (None: the default group)

    def __post_init__(self) -> None:
        if self.tp_size < 1 or not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tensor-parallel rank {self.tp_rank} is not in a group of {self.tp_size}")

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the group, in place."""
        torch.distributed.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's ``x`` side by side along the last dim, in rank order: [N, n] -> [N, tp_size * n]."""
        parts = [torch.empty_like(x) for _ in range(self.tp_size)]
        torch.distributed.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


def divide(total: int, parts: int, what: str) -> int:
    """``total / parts`` when it divides evenly, else an error naming ``what``."""
    if total % parts:
        raise UnsupportedModelError(f"{what} ({total}) does not split into {parts} tensor-parallel parts")
    return total // parts


def copy_part(dst: torch.Tensor, loaded: torch.Tensor, parts: dict[int, tuple[int, int]]) -> None:
    """Copy into ``dst`` the part of the whole ``loaded`` at ``start`` along each cut dim ({dim: (start, full)})."""
    expected = tuple(parts[d][1] if d in parts else size for d, size in enumerate(dst.shape))
    if tuple(loaded.shape) != expected:
        raise ValueError(f"has shape {tuple(loaded.shape)}, expected {expected}")
    for dim, (start, _) in parts.items():
        loaded = loaded.narrow(dim, start, dst.shape[dim])
    dst.copy_(loaded)
