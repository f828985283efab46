"""30 SmolLM2 layers (Q4_1) per row count: float32 F.linear, the float kernel, the integer kernel (ms, best of 5); ran at
0da9ecc: the float kernel and packed_linear's row threshold were removed after it, so it runs on that tree only.

    python docs/results/2026-12-02e-cpu/kernel_rows.py
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests/cpu"))
from bench_cpu_kernels import LAYER_SHAPES, LAYERS, best_ms, random_packed  # noqa: E402
from pegboard.kernels.cpu_build import compiled_ops  # noqa: E402
from pegboard.kernels.cpu_gguf_matmul import Q4_1, dequantize_packed  # noqa: E402
ops = compiled_ops()
packed = [random_packed(Q4_1, n, k) for _ in range(LAYERS) for n, k in LAYER_SHAPES]
floats = [dequantize_packed(w) for w in packed]
for w in packed: w.tensors
print("| rows | fp32 | float kernel | dot kernel | GOP/s dot |")
for m in [1, 4, 16, 64, 128, 256]:
    x = {k: torch.randn(m, k) for k in (576, 1536)}
    fp = best_ms([lambda w=w: F.linear(x[w.shape[1]], w) for w in floats], 5)
    fk = best_ms([lambda w=w: ops.packed_linear(x[w.shape[1]], w.tensors, None, 0) for w in packed], 5)
    dk = best_ms([lambda w=w: ops.packed_linear(x[w.shape[1]], w.tensors, None, 100000) for w in packed], 5)
    flops = 2 * m * sum(n * k for n, k in LAYER_SHAPES) * LAYERS
    print(f"| {m} | {fp:.2f} | {fk:.2f} | {dk:.2f} | {flops/dk/1e6:.0f} | {open('/proc/loadavg').read().split()[0]}", flush=True)
