"""The packed CPU path's decode attention (kernels/cpu_decode_attention.cpp) against SDPA over each batch's
contexts gathered into a padded tensor (the torch backend's other decode path), on SmolLM2's heads (9 query heads,
3 KV heads, head size 64) in a paged cache of scattered 16-token blocks, float32 and float16 (the packed path's
default ``kv_cache_dtype``); ms per layer call, best of ``--repeat``, all alternating in this one process.
``--cold``: every call reads its own layer's cache, 30 layers of 4,096 blocks taken in turn, so the rows come from
memory as in the engine (one cache of the batch's own size stays in L3 between calls).

    python tests/cpu/bench_cpu_decode_attention.py [--batch 1 8 32 64] [--context 128 400 1024] [--repeat 20] [--cold]
"""

from __future__ import annotations

import argparse
import time

BLOCK, HEADS, KV_HEADS, HEAD_DIM = 16, 9, 3, 64
COLD_LAYERS, COLD_BLOCKS = 30, 4096


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
    parser.add_argument("--cold", action="store_true", help="a cache per layer, 30 layers in turn (rows from memory)")
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
            cache_blocks = COLD_BLOCKS if args.cold else batch * per_request + 1
            layers = [(torch.randn(cache_blocks * BLOCK, KV_HEADS, HEAD_DIM),
                       torch.randn(cache_blocks * BLOCK, KV_HEADS, HEAD_DIM))
                      for _ in range(COLD_LAYERS if args.cold else 1)]
            halves = [(k.half(), v.half()) for k, v in layers]
            blocks = torch.randperm(cache_blocks)[: batch * per_request].view(batch, per_request)
            q = torch.randn(batch, HEADS, HEAD_DIM)
            tables = blocks.to(torch.int32).contiguous()
            lens = torch.full((batch,), context, dtype=torch.int32)
            slots = (blocks[:, :, None] * BLOCK + torch.arange(BLOCK)).view(batch, -1)[:, :context]

            def paged(caches):
                for k_cache, v_cache in caches:
                    ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, BLOCK, HEAD_DIM ** -0.5)

            def gathered():
                for k_cache, v_cache in layers:
                    k = k_cache[slots].transpose(1, 2)
                    v = v_cache[slots].transpose(1, 2)
                    F.scaled_dot_product_attention(q[:, :, None], k, v, scale=HEAD_DIM ** -0.5, enable_gqa=True)

            cpp = best_ms(lambda: paged(layers), args.repeat) / len(layers)
            half = best_ms(lambda: paged(halves), args.repeat) / len(layers)
            sdpa = best_ms(gathered, args.repeat) / len(layers)
            load = open("/proc/loadavg").read().split()[0]
            print(f"| {batch} | {context} | {cpp:.3f} | {half:.3f} | {sdpa:.3f} | {load} |", flush=True)


if __name__ == "__main__":
    main()
