"""Check and time every Triton kernel against its torch reference at real sizes on a CUDA device.

    python tests/gpu/run_kernels.py [--quick] [--dtype bf16|fp16] [--json out.json]

For each case it prints the max abs error against an fp32 reference, the time per call of the
kernel and of the torch baseline (the same reference in the input dtype: gather + SDPA for
attention, eager ops for the rest), and the kernel's achieved bandwidth or TFLOP/s. It also
checks that decode attention captures in a CUDA graph and replays with new context lengths.
Not a pytest file: run it on the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

try:
    import pegboard  # noqa: F401
except ImportError:  # a bare checkout: the repo root is the package, so expose it as "pegboard" via a symlink
    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _link_dir = tempfile.mkdtemp()
    os.symlink(_root, os.path.join(_link_dir, "pegboard"))
    sys.path.insert(0, _link_dir)

from pegboard.kernels.kv_cache_write import kv_cache_write  # noqa: E402
from pegboard.kernels.paged_decode_attention import default_num_splits, paged_decode_attention  # noqa: E402
from pegboard.kernels.paged_prefill_attention import paged_prefill_attention  # noqa: E402
from pegboard.kernels.reference import (kv_cache_write_ref, paged_decode_attention_ref,  # noqa: E402
                                        paged_prefill_attention_ref, rms_norm_ref, rotary_ref, silu_and_mul_ref)
from pegboard.kernels.rms_norm import rms_norm  # noqa: E402
from pegboard.kernels.rotary import rotary_embedding  # noqa: E402
from pegboard.kernels.silu_and_mul import silu_and_mul  # noqa: E402
from pegboard.kernels.testing import query_start_loc, random_paged_cache  # noqa: E402

H, HKV, D, BLOCK = 32, 8, 128, 16  # Llama-3.1-8B attention shape, 16-token KV blocks
ROWS: list[dict] = []


def bench_ms(fn) -> float:
    """Median time per call in ms (triton.testing.do_bench: L2 flushed between calls)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def report(kernel: str, shape: str, pairs: list[tuple[torch.Tensor, torch.Tensor]], tol: float, ms: float,
           ref_ms: float | None, rate: str, extra: str = "") -> None:
    """Print one row: max abs error over (got, want) pairs (ok if allclose at atol = rtol = tol), times, rate."""
    err = max((got.float() - want.float()).abs().max().item() for got, want in pairs)
    ok = all(torch.allclose(got.float(), want.float(), atol=tol, rtol=tol) for got, want in pairs)
    ref = f"{ref_ms:9.3f}" if ref_ms is not None else "        -"
    speedup = f"{ref_ms / ms:6.1f}x" if ref_ms is not None else "      -"
    print(f"{'ok ' if ok else 'BAD'} {kernel:14s} {shape:34s} err {err:8.2e}  triton {ms:8.3f} ms  torch {ref} ms "
          f"{speedup}  {rate} {extra}", flush=True)
    ROWS.append(dict(kernel=kernel, shape=shape, max_err=err, tol=tol, ok=ok, triton_ms=ms, torch_ms=ref_ms,
                     rate=rate, extra=extra))


def run_decode(batch: int, ctx: int, dtype: torch.dtype, *, ragged: bool = False) -> None:
    torch.manual_seed(batch + ctx)
    lens = torch.randint(1, ctx + 1, (batch,)).tolist() if ragged else [ctx] * batch
    cache = random_paged_cache(lens, num_kv_heads=HKV, head_dim=D, block_size=BLOCK, dtype=dtype, device="cuda",
                               num_layers=1, extra_table_width=0)
    q = torch.randn(batch, H, D, dtype=dtype, device="cuda")
    args = (q, cache.k_cache[0], cache.v_cache[0], cache.block_tables, cache.context_lens)
    kw = dict(block_size=BLOCK, scale=D ** -0.5)
    out = paged_decode_attention(*args, **kw)
    ref = paged_decode_attention_ref(*args, **kw)
    ms = bench_ms(lambda: paged_decode_attention(*args, **kw))
    ms_one = bench_ms(lambda: paged_decode_attention(*args, **kw, num_splits=1))
    ref_ms = bench_ms(lambda: paged_decode_attention_ref(*args, **kw, compute_dtype=dtype))
    kv_bytes = 2 * sum(lens) * HKV * D * q.element_size()
    splits = default_num_splits(batch, HKV, cache.block_tables.shape[1] * BLOCK, q.device)
    shape = f"B={batch} ctx={'<=' if ragged else ''}{ctx}"
    report("decode", shape, [(out, ref)], 2e-2, ms, ref_ms, f"{kv_bytes / ms / 1e6:7.0f} GB/s",
           f"(splits {splits}; 1 split: {ms_one:.3f} ms)")
    del cache


def run_prefill(query_lens: list[int], cached: list[int], dtype: torch.dtype) -> None:
    torch.manual_seed(sum(query_lens))
    ctx = [q + c for q, c in zip(query_lens, cached)]
    cache = random_paged_cache(ctx, num_kv_heads=HKV, head_dim=D, block_size=BLOCK, dtype=dtype, device="cuda",
                               num_layers=1, extra_table_width=0)
    q = torch.randn(sum(query_lens), H, D, dtype=dtype, device="cuda")
    starts = query_start_loc(query_lens, "cuda")
    args = (q, cache.k_cache[0], cache.v_cache[0], cache.block_tables, starts, cache.context_lens)
    kw = dict(block_size=BLOCK, scale=D ** -0.5)
    out = paged_prefill_attention(*args, **kw, max_query_len=max(query_lens))
    ref = paged_prefill_attention_ref(*args, **kw)
    ms = bench_ms(lambda: paged_prefill_attention(*args, **kw, max_query_len=max(query_lens)))
    ref_ms = bench_ms(lambda: paged_prefill_attention_ref(*args, **kw, compute_dtype=dtype))
    visible = sum(sum(range(c - n + 1, c + 1)) for n, c in zip(query_lens, ctx))  # causal (query, key) pairs
    tflops = 4 * H * D * visible / ms / 1e9
    extra = ""
    if not any(cached):  # dense flash SDPA on the same prompts: what torch's best kernel does without paging
        dense = [(torch.randn(1, H, n, D, dtype=dtype, device="cuda"), torch.randn(1, HKV, n, D, dtype=dtype,
                                                                                  device="cuda")) for n in query_lens]
        sdpa = torch.nn.functional.scaled_dot_product_attention
        dense_ms = bench_ms(lambda: [sdpa(x, kv, kv, is_causal=True, enable_gqa=True) for x, kv in dense])
        extra = f"(dense torch SDPA {dense_ms:.3f} ms)"
    shape = f"q={'+'.join(map(str, query_lens))} cached={max(cached)}"
    report("prefill", shape, [(out, ref)], 2e-2, ms, ref_ms, f"{tflops:7.1f} TFLOP/s", extra)
    del cache


def run_pointwise(tokens: int, dtype: torch.dtype) -> None:
    hidden, inter = 4096, 14336
    x = torch.randn(tokens, hidden, dtype=dtype, device="cuda")
    res, w = torch.randn_like(x), torch.randn(hidden, dtype=dtype, device="cuda")
    out = rms_norm(x, w, eps=1e-5, residual=res)
    ref = rms_norm_ref(x, w, eps=1e-5, residual=res)
    ms = bench_ms(lambda: rms_norm(x, w, eps=1e-5, residual=res))
    ref_ms = bench_ms(lambda: rms_norm_ref(x, w, eps=1e-5, residual=res))
    report("rms_norm+res", f"T={tokens} N={hidden}", list(zip(out, ref)), 2e-2, ms, ref_ms,
           f"{4 * x.nbytes / ms / 1e6:7.0f} GB/s")

    gate_up = torch.randn(tokens, 2 * inter, dtype=dtype, device="cuda")
    pairs = [(silu_and_mul(gate_up), silu_and_mul_ref(gate_up))]
    ms = bench_ms(lambda: silu_and_mul(gate_up))
    ref_ms = bench_ms(lambda: silu_and_mul_ref(gate_up))
    report("silu_and_mul", f"T={tokens} N={inter}", pairs, 2e-2, ms, ref_ms,
           f"{1.5 * gate_up.nbytes / ms / 1e6:7.0f} GB/s")

    qkv = torch.randn(tokens, (H + 2 * HKV) * D, dtype=dtype, device="cuda")
    q, k, v = (t.view(tokens, -1, D) for t in qkv.split([H * D, HKV * D, HKV * D], dim=1))
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device="cuda", dtype=torch.float) / D))
    emb = torch.arange(8192, device="cuda", dtype=torch.float)[:, None] * inv_freq[None, :]
    cos, sin = torch.cat((emb, emb), -1).cos(), torch.cat((emb, emb), -1).sin()
    pos = torch.randint(0, 8192, (tokens,), device="cuda")
    got, want = rotary_embedding(pos, q, k, cos, sin), rotary_ref(pos, q, k, cos, sin)
    ms = bench_ms(lambda: rotary_embedding(pos, q, k, cos, sin, inplace=True))
    ref_ms = bench_ms(lambda: rotary_ref(pos, q, k, cos, sin))
    moved = 2 * (q.numel() + k.numel()) * q.element_size()
    report("rotary", f"T={tokens} H={H} Hkv={HKV}", list(zip(got, want)), 2e-2, ms, ref_ms,
           f"{moved / ms / 1e6:7.0f} GB/s", "(in place)")

    num_slots = 65536 * BLOCK // 16
    caches = torch.randn(2, num_slots, HKV, D, dtype=dtype, device="cuda")
    expected = caches.clone()
    slots = torch.randperm(num_slots, device="cuda")[:tokens]
    kv_cache_write(k, v, caches[0], caches[1], slots)
    kv_cache_write_ref(k, v, expected[0], expected[1], slots)
    pairs = [(caches.clone(), expected)]
    ms = bench_ms(lambda: kv_cache_write(k, v, caches[0], caches[1], slots))
    ref_ms = bench_ms(lambda: (caches[0].index_copy_(0, slots, k), caches[1].index_copy_(0, slots, v)))
    report("kv_cache_write", f"T={tokens} Hkv={HKV}", pairs, 0.0, ms, ref_ms,
           f"{4 * k.numel() * k.element_size() / ms / 1e6:7.0f} GB/s", "(torch: index_copy_)")


def check_decode_cuda_graph(dtype: torch.dtype) -> None:
    """Capture decode attention once, then replay it with new context lengths written in place."""
    batch, ctx = 32, 1024
    cache = random_paged_cache([ctx] * batch, num_kv_heads=HKV, head_dim=D, block_size=BLOCK, dtype=dtype,
                               device="cuda", num_layers=1, extra_table_width=0)
    q = torch.randn(batch, H, D, dtype=dtype, device="cuda")
    out = torch.empty_like(q)
    args = (q, cache.k_cache[0], cache.v_cache[0], cache.block_tables, cache.context_lens)
    kw = dict(block_size=BLOCK, scale=D ** -0.5)
    paged_decode_attention(*args, **kw, out=out)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_decode_attention(*args, **kw, out=out)
    cache.context_lens.copy_(torch.randint(0, ctx + 1, (batch,), dtype=torch.int32))
    graph.replay()
    report("decode (graph)", f"B={batch} ctx<={ctx}, replayed", [(out, paged_decode_attention_ref(*args, **kw))],
           2e-2, float("nan"), None, "", "(captured once, new context lengths written before replay)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller cases")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--json", help="write the rows as JSON to this path")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 2
    import triton

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, triton {triton.__version__}; "
          f"H={H} Hkv={HKV} D={D} block={BLOCK} {args.dtype}", flush=True)

    decode = [(64, 512), (64, 2048), (256, 2048), (8, 8192)] if args.quick else \
        [(64, 512), (64, 2048), (64, 8192), (128, 1024), (256, 512), (256, 2048), (256, 8192), (8, 8192), (1, 8192)]
    for batch, ctx in decode:
        run_decode(batch, ctx, dtype)
    run_decode(128, 4096, dtype, ragged=True)

    prefill = [([1024] * 4, [0] * 4), ([512, 512], [4096, 1536])] if args.quick else \
        [([1024] * 8, [0] * 8), ([2048] * 4, [0] * 4), ([8192], [0]), ([512] * 4, [4096, 1536, 0, 7000]),
         ([1000, 1, 1, 1, 300], [0, 2000, 4000, 100, 64])]
    for query_lens, cached in prefill:
        run_prefill(query_lens, cached, dtype)

    run_pointwise(2048 if args.quick else 8192, dtype)
    check_decode_cuda_graph(dtype)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=props.name, dtype=args.dtype, rows=ROWS), f, indent=1)
    bad = [r for r in ROWS if not r["ok"]]
    print(f"{len(ROWS) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
