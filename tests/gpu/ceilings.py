"""Measure this GPU's two ceilings used by the throughput floor: bf16 GEMM TFLOP/s and memory bandwidth.

    python tests/gpu/ceilings.py [ceilings.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def timed(fn, repeats: int = 20) -> float:
    """Median seconds per call, by CUDA events."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def main() -> None:
    n = 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    tflops = 2 * n**3 / timed(lambda: a @ b) / 1e12
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    tbps = 2 * src.numel() / timed(lambda: dst.copy_(src)) / 1e12  # bytes read + written
    print(f"ceilings on {torch.cuda.get_device_name()}: bf16 GEMM {tflops:.0f} TFLOP/s (8192^3), "
          f"device copy {tbps:.2f} TB/s (read + write)", flush=True)
    if len(sys.argv) > 1:  # where to keep them for floor.py
        Path(sys.argv[1]).write_text(json.dumps({"device": torch.cuda.get_device_name(), "gemm_tflops": tflops,
                                                 "copy_tbps": tbps}) + "\n")


if __name__ == "__main__":
    main()
