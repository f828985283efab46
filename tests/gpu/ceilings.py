"""Measure this GPU's two ceilings used by the throughput floor: bf16 GEMM TFLOP/s and memory bandwidth."""

from __future__ import annotations

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


if __name__ == "__main__":
    main()
