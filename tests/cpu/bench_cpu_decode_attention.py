"""The packed CPU path's decode attention (kernels/cpu_decode_attention.cpp) against SDPA over each batch's
contexts gathered into a padded tensor (the torch backend's other decode path), on SmolLM2's heads (9 query heads,
3 KV heads, head size 64) in a paged cache of scattered 16-token blocks, float32 and float16 (the packed path's
default ``kv_cache_dtype``); ms per layer call, best of ``--repeat``, all alternating in this one process.

    python tests/cpu/bench_cpu_decode_attention.py [--batch 1 8 32 64] [--context 128 400 1024] [--repeat 20]
"""

from __future__ import annotations

import argparse
import time

BLOCK, HEADS, KV_HEADS, HEAD_DIM = 16, 9, 3, 64


def best_ms(call, repeat: int) -> float:
    call()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--context", type=int, nargs="+", default=[128, 400, 1024])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from pegboard.kernels.cpu_build import compiled_ops

    ops = compiled_ops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| batch | context | C++ paged, float32 cache ms | C++ paged, float16 cache ms | SDPA over a padded gather "
          "(float32) ms | load |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch:
        for context in args.context:
            per_request = -(-context // BLOCK)
            blocks = torch.randperm(batch * per_request + 1)[: batch * per_request].view(batch, per_request)
            cache_slots = (batch * per_request + 1) * BLOCK
            k_cache = torch.randn(cache_slots, KV_HEADS, HEAD_DIM)
            v_cache = torch.randn(cache_slots, KV_HEADS, HEAD_DIM)
            k_half, v_half = k_cache.half(), v_cache.half()
            q = torch.randn(batch, HEADS, HEAD_DIM)
            tables = blocks.to(torch.int32).contiguous()
            lens = torch.full((batch,), context, dtype=torch.int32)
            slots = (blocks[:, :, None] * BLOCK + torch.arange(BLOCK)).view(batch, -1)[:, :context]

            def paged(k_cache=k_cache, v_cache=v_cache):
                ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, BLOCK, HEAD_DIM ** -0.5)

            def gathered():
                k = k_cache[slots].transpose(1, 2)
                v = v_cache[slots].transpose(1, 2)
                F.scaled_dot_product_attention(q[:, :, None], k, v, scale=HEAD_DIM ** -0.5, enable_gqa=True)

            cpp = best_ms(paged, args.repeat)
            half = best_ms(lambda: paged(k_half, v_half), args.repeat)
            sdpa = best_ms(gathered, args.repeat)
            load = open("/proc/loadavg").read().split()[0]
            print(f"| {batch} | {context} | {cpp:.3f} | {half:.3f} | {sdpa:.3f} | {load} |", flush=True)


if __name__ == "__main__":
    main()
