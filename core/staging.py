"""Host-to-device upload of a step's integer lists: one packed copy, from pinned memory on CUDA."""

from __future__ import annotations

import torch


class HostStaging:
    """Packs several int lists into one tensor and copies it to the device in one transfer.

    On CUDA the host side is a reusable pinned buffer and the copy is asynchronous; reuse is safe
    because the engine synchronises with the device once per step, before the next upload.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype
        self._pinned = device.type == "cuda"
        self._host = torch.empty(0, dtype=dtype)

    def upload(self, *lists: list[int]) -> list[torch.Tensor]:
        """The lists as device tensors (views of one packed tensor)."""
        sizes = [len(values) for values in lists]
        flat = torch.tensor([v for values in lists for v in values], dtype=self.dtype)
        if self._pinned:
            if self._host.numel() < flat.numel():
                self._host = torch.empty(max(flat.numel(), 2 * self._host.numel()), dtype=self.dtype,
                                         pin_memory=True)
            staged = self._host[:flat.numel()]
            staged.copy_(flat)
            packed = staged.to(self.device, non_blocking=True)
        else:
            packed = flat.to(self.device)
        return list(packed.split(sizes))
