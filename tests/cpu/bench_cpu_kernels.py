"""The packed GGUF-block kernel (kernels/cpu_gguf_matmul.py) against float32 F.linear, and against the bfloat16
GEMM that larger batches take where the CPU multiplies bfloat16 natively (core/cpu_weights.py:
prefill_gemm_dtype), on SmolLM2's shapes, per row count: what sets ``PACKED_MAX_ROWS`` in core/cpu_weights.py.

    python tests/cpu/bench_cpu_kernels.py [--rows 1 2 4 8 16 32 64] [--repeat 5] [--threads N]

For each row count M, one pass over 30 layers' weights (qkv 960x576, o 576x576, gate_up 3072x576, down
576x1536; Q4_1 blocks against their float32 values), so the weights stream from memory as in a decode step
rather than from cache, and the LM head (49152x576; Q8_0, the tied embedding's type). The two alternate in
this one process; each figure is the best of ``--repeat``, with the 1-minute load average beside it.
"""

from __future__ import annotations

import argparse
import time

LAYER_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
LAYERS = 30
HEAD = (49152, 576)


def random_packed(ggml_type: int, rows: int, cols: int):
    import torch

    from pegboard.kernels.cpu_gguf_matmul import Q4_1, pack_gguf_rows

    block_bytes = 20 if ggml_type == Q4_1 else 34
    n = rows * cols // 32
    blocks = torch.randint(0, 256, (n, block_bytes), dtype=torch.uint8)
    blocks[:, 0:2] = (torch.rand(n) * 0.02).half().view(torch.uint8).view(-1, 2)
    if ggml_type == Q4_1:
        blocks[:, 2:4] = (-torch.rand(n) * 0.1).half().view(torch.uint8).view(-1, 2)
    return pack_gguf_rows(blocks.reshape(-1), ggml_type, (rows, cols))


def best_ms(calls, repeat: int) -> float:
    for call in calls:
        call()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for call in calls:
            call()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 24, 32, 64])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from pegboard.core.cpu_weights import prefill_gemm_dtype
    from pegboard.kernels.cpu_gguf_matmul import Q4_1, Q8_0, dequantize_packed, packed_matmul

    if args.threads:
        torch.set_num_threads(args.threads)
    packed = [random_packed(Q4_1, n, k) for _ in range(LAYERS) for n, k in LAYER_SHAPES]
    floats = [dequantize_packed(w) for w in packed]
    head = random_packed(Q8_0, *HEAD)
    head_float = dequantize_packed(head)
    gemm_dtype = prefill_gemm_dtype()
    copies = [w.to(gemm_dtype) for w in floats]  # the engine's prompt-GEMM copies (PackedCPUScheme.prefill_weight)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, prompt GEMMs in {gemm_dtype}")
    print("| rows | layers fp32 ms | layers packed ms | layers prompt-GEMM ms | head fp32 ms | head packed ms | load |")
    print("|---|---|---|---|---|---|---|")
    for m in args.rows:
        x = {k: torch.randn(m, k) for k in (576, 1536)}
        fp32 = best_ms([lambda w=w: F.linear(x[w.shape[1]], w) for w in floats], args.repeat)
        q4 = best_ms([lambda w=w: packed_matmul(x[w.shape[1]], w) for w in packed], args.repeat)
        gemm = best_ms([lambda w=w: F.linear(x[w.shape[1]].to(gemm_dtype), w).float() for w in copies], args.repeat)
        hf = best_ms([lambda: F.linear(x[576], head_float)], args.repeat)
        hq = best_ms([lambda: packed_matmul(x[576], head)], args.repeat)
        load = open("/proc/loadavg").read().split()[0]
        print(f"| {m} | {fp32:.2f} | {q4:.2f} | {gemm:.2f} | {hf:.2f} | {hq:.2f} | {load} |", flush=True)


if __name__ == "__main__":
    main()
