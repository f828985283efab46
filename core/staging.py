"""Host-to-device upload of a step's integer lists: one packed copy, from pinned memory on CUDA."""

from __future__ import annotations

from itertools import chain
from typing import Sequence

import numpy as np
import torch

ALIGN_BYTES = 16  # every view's start: the alignment Triton specializes pointer arguments on


def padded_rows(rows: list[list[int]], width: int, dtype: type = np.int64) -> np.ndarray:
    """``rows`` as a [len(rows), width] array, each row zero-padded at its end (no per-element Python loop)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    out = np.zeros((len(rows), width), dtype=dtype)
    out[np.arange(width) < lengths[:, None]] = np.fromiter(chain.from_iterable(rows), dtype=dtype,
                                                           count=int(lengths.sum()))
    return out


class HostStaging:
    """Packs several int lists (or arrays) into one tensor and copies it to the device in one transfer.

    Every view starts on a 16-byte boundary: Triton compiles a kernel once per pointer alignment it meets
    (16-byte aligned or not), so views at offsets that follow the step's sizes would compile new variants in
    the middle of serving.

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
        self._align = max(1, ALIGN_BYTES // torch.empty((), dtype=dtype).element_size())  # elements per 16 bytes

    def upload(self, *values: Sequence[int] | np.ndarray) -> list[torch.Tensor]:
        """The lists (arrays: flattened) as device tensors (views of one packed tensor)."""
        sizes = [v.size if isinstance(v, np.ndarray) else len(v) for v in values]
        starts, end = [], 0
        for size in sizes:
            starts.append(end)
            end += -(-size // self._align) * self._align
        flat = torch.empty(end, dtype=self.dtype, pin_memory=self._pinned)
        host = flat.numpy()
        for v, size, start in zip(values, sizes, starts):
            if size:
                host[start:start + size] = v.reshape(-1) if isinstance(v, np.ndarray) else v
        packed = flat.to(self.device, non_blocking=True) if self._pinned else flat
        return [packed[start:start + size] for start, size in zip(starts, sizes)]
