"""Host-to-device upload of a step's integer lists: one packed copy, from pinned memory on CUDA."""

from __future__ import annotations

from itertools import chain
from typing import Sequence

import numpy as np
import torch


def padded_rows(rows: list[list[int]], width: int, dtype: type = np.int64) -> np.ndarray:
    """``rows`` as a [len(rows), width] array, each row zero-padded at its end (no per-element Python loop)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    out = np.zeros((len(rows), width), dtype=dtype)
    out[np.arange(width) < lengths[:, None]] = np.fromiter(chain.from_iterable(rows), dtype=dtype,
                                                           count=int(lengths.sum()))
    return out


class HostStaging:
    """Packs several int lists (or arrays) into one tensor and copies it to the device in one transfer.

    The values are written straight into the packed host tensor by numpy (torch.tensor of a Python list is
    several times slower). On CUDA the packed tensor lives in pinned memory from torch's caching host
    allocator, which keeps a buffer out of reuse until the copy that reads it has finished: with the next step
    prepared while the device still runs this one, a single reused buffer could be overwritten before its copy
    happened.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype
        self._pinned = device.type == "cuda"

    def upload(self, *values: Sequence[int] | np.ndarray) -> list[torch.Tensor]:
        """The lists (arrays: flattened) as device tensors (views of one packed tensor)."""
        sizes = [v.size if isinstance(v, np.ndarray) else len(v) for v in values]
        flat = torch.empty(sum(sizes), dtype=self.dtype, pin_memory=self._pinned)
        host, offset = flat.numpy(), 0
        for v, size in zip(values, sizes):
            if size:
                host[offset:offset + size] = v.reshape(-1) if isinstance(v, np.ndarray) else v
                offset += size
        packed = flat.to(self.device, non_blocking=True) if self._pinned else flat
        return list(packed.split(sizes))
