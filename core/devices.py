"""Which torch device and dtype an engine runs in, from its config's names."""

from __future__ import annotations

from typing import Any

import torch

from pegboard.core.errors import InvalidParameterError

_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError("device 'cuda' was asked for but no CUDA device is available", param="device")
    return device


def resolve_dtype(name: str, hf_config: Any, device: torch.device) -> torch.dtype:
    """``auto`` -> float32 on CPU; on GPU the checkpoint's half type (bfloat16 for float32 checkpoints)."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cpu":
        return torch.float32
    stored = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    return torch.float16 if stored in (torch.float16, "float16") else torch.bfloat16
