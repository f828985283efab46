"""Intra-op thread settings for CPU work (torch imported on use)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def one_cpu_thread(device: Any = "cpu") -> Iterator[None]:
    """Run memory-bound CPU work (dequantizing, packing) with one intra-op thread: OpenMP teams stall when cores
    are shared (measured on a busy 2-core VM: dequantizing 0.5 s with one thread, 2.5-10 s with two; packing
    SmolLM2's GGUF blocks 0.3-0.45 s against 6.5-7.2 s)."""
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
