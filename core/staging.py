"""Host-to-device upload of a step's integer lists: one packed copy, from pinned memory on CUDA."""

from __future__ import annotations

import torch


class HostStaging:
    """Packs several int lists into one tensor and copies it to the device in one transfer.

    On CUDA the packed tensor lives in pinned memory from torch's caching host allocator, which keeps a
    buffer out of reuse until the copy that reads it has finished: with the next step prepared while the
    device still runs this one, a single reused buffer could be overwritten before its copy happened.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype
        self._pinned = device.type == "cuda"

    def upload(self, *lists: list[int]) -> list[torch.Tensor]:
        """The lists as device tensors (views of one packed tensor)."""
        sizes = [len(values) for values in lists]
        flat = torch.tensor([v for values in lists for v in values], dtype=self.dtype, pin_memory=self._pinned)
        packed = flat.to(self.device, non_blocking=True) if self._pinned else flat
        return list(packed.split(sizes))
