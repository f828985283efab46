"""Triton kernels vs their plain-torch references on random inputs.

Small shapes run everywhere: on CPU under the Triton interpreter (TRITON_INTERPRET=1, set here
before triton is imported), on the GPU natively. Tests marked ``gpu`` use real sizes and skip
without CUDA. Needs the ``triton`` package (the ``gpu`` extra); skipped without it.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels' @triton.jit runs, at import
pytest.importorskip("triton")

from pegboard.kernels.kv_cache_write import kv_cache_write, kv_cache_write_ref  # noqa: E402
from pegboard.kernels.paged_decode_attention import (default_num_splits, paged_decode_attention,  # noqa: E402
                                                     paged_decode_attention_ref)
from pegboard.kernels.paged_prefill_attention import (paged_prefill_attention,  # noqa: E402
                                                      paged_prefill_attention_ref)
from pegboard.kernels.rms_norm import rms_norm, rms_norm_ref  # noqa: E402
from pegboard.kernels.rotary import rotary_embedding, rotary_ref  # noqa: E402
from pegboard.kernels.silu_and_mul import silu_and_mul, silu_and_mul_ref  # noqa: E402
from pegboard.kernels.testing import query_start_loc, random_paged_cache, strided_view  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HEADS = [(4, 4), (8, 2), (16, 2), (8, 1)]  # (H, Hkv): GQA ratios 1, 4, 8 and MQA


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)


# --- paged decode attention -------------------------------------------------------------------

def check_decode(context_lens, num_heads, num_kv_heads, head_dim, dtype, *, block_size=16, num_splits=(None,)):
    torch.manual_seed(len(context_lens) * 1000 + num_heads * 10 + head_dim)
    cache = random_paged_cache(context_lens, num_kv_heads=num_kv_heads, head_dim=head_dim,
                               block_size=block_size, dtype=dtype, device=DEVICE)
    q = strided_view((len(context_lens), num_heads, head_dim), dtype, DEVICE)  # a view, as from a fused QKV
    k_cache, v_cache = cache.k_cache[1], cache.v_cache[1]  # one layer of [L, S, Hkv, D]
    scale = head_dim ** -0.5
    ref = paged_decode_attention_ref(q, k_cache, v_cache, cache.block_tables, cache.context_lens,
                                     block_size=block_size, scale=scale)
    for splits in num_splits:
        out = paged_decode_attention(q, k_cache, v_cache, cache.block_tables, cache.context_lens,
                                     block_size=block_size, scale=scale, num_splits=splits)
        assert out.shape == q.shape and out.dtype == dtype
        assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_heads,num_kv_heads", HEADS)
def test_decode(num_heads, num_kv_heads, head_dim, dtype):
    # ragged: length 1, a multiple of the block size, and lengths that are not
    check_decode([37, 1, 16, 90], num_heads, num_kv_heads, head_dim, dtype, num_splits=(1, 3))


@pytest.mark.parametrize("head_dim,block_size", [(32, 8), (256, 32), (128, 1)])
def test_decode_other_head_dims_and_block_sizes(head_dim, block_size):
    check_decode([5, 70, 33], 8, 2, head_dim, torch.float32, block_size=block_size, num_splits=(None, 2))


def test_decode_more_splits_than_tiles():
    # 7 splits of a 3-token context: most splits are empty and must drop out of the merge.
    check_decode([3, 200, 1], 4, 1, 64, torch.float32, num_splits=(7,))


def test_decode_padded_rows_give_zeros():
    cache = random_paged_cache([20, 0, 9], num_kv_heads=2, head_dim=64, block_size=16, dtype=torch.float32,
                               device=DEVICE)
    q = torch.randn(3, 4, 64, device=DEVICE)
    for splits in (1, 2):
        out = paged_decode_attention(q, cache.k_cache[0], cache.v_cache[0], cache.block_tables, cache.context_lens,
                                     block_size=16, scale=0.125, num_splits=splits)
        assert out[1].abs().max() == 0 and out[0].abs().max() > 0 and torch.isfinite(out).all()


def test_decode_split_heuristic():
    cpu = torch.device("cpu")
    assert default_num_splits(64, 8, 8192, cpu) == 1  # interpreter: one program at a time
    if torch.cuda.is_available():
        assert default_num_splits(1, 8, 8192, DEVICE) > 1  # a lone long sequence spreads over the GPU
        assert default_num_splits(1, 8, 100, DEVICE) == 1  # but never below MIN_TOKENS_PER_SPLIT tokens a split
        assert default_num_splits(256, 8, 8192, DEVICE) == 1  # a big batch fills the GPU by itself


# --- paged prefill attention ------------------------------------------------------------------

def check_prefill(query_lens, cached_lens, num_heads, num_kv_heads, head_dim, dtype, *, block_size=16):
    torch.manual_seed(sum(query_lens) + num_heads * 10 + head_dim)
    context_lens = [q + c for q, c in zip(query_lens, cached_lens)]
    cache = random_paged_cache(context_lens, num_kv_heads=num_kv_heads, head_dim=head_dim,
                               block_size=block_size, dtype=dtype, device=DEVICE)
    q = strided_view((sum(query_lens), num_heads, head_dim), dtype, DEVICE)
    starts = query_start_loc(query_lens, DEVICE)
    k_cache, v_cache = cache.k_cache[1], cache.v_cache[1]
    kwargs = dict(block_size=block_size, scale=head_dim ** -0.5)
    out = paged_prefill_attention(q, k_cache, v_cache, cache.block_tables, starts, cache.context_lens, **kwargs)
    ref = paged_prefill_attention_ref(q, k_cache, v_cache, cache.block_tables, starts, cache.context_lens, **kwargs)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_heads,num_kv_heads", HEADS)
def test_prefill(num_heads, num_kv_heads, head_dim, dtype):
    # a fresh prompt, a chunk after a cached prefix, a decode row and a prefix hit of one block
    check_prefill([45, 19, 1, 3], [0, 50, 70, 16], num_heads, num_kv_heads, head_dim, dtype)


@pytest.mark.parametrize("head_dim,block_size,heads", [(32, 8, (12, 2)), (256, 32, (4, 2)), (128, 1, (7, 7))])
def test_prefill_other_shapes(head_dim, block_size, heads):
    # GQA group 6 (not a power of two), head dims 32/256, block sizes 1/8/32
    check_prefill([33, 2], [5, 40], *heads, head_dim, torch.float32, block_size=block_size)


def test_prefill_long_prompt_spans_many_tiles():
    check_prefill([300], [0], 8, 8, 64, torch.bfloat16)


def test_prefill_with_empty_request_and_explicit_max_query_len():
    cache = random_paged_cache([10, 6], num_kv_heads=2, head_dim=64, block_size=16, dtype=torch.float32,
                               device=DEVICE)
    q = torch.randn(10, 4, 64, device=DEVICE)
    starts = query_start_loc([0, 10], DEVICE)
    lens = torch.tensor([10, 10], dtype=torch.int32, device=DEVICE)  # request 0 has no new tokens this step
    args = (q, cache.k_cache[0], cache.v_cache[0], cache.block_tables, starts, lens)
    out = paged_prefill_attention(*args, block_size=16, scale=0.125, max_query_len=10)
    assert_close(out, paged_prefill_attention_ref(*args, block_size=16, scale=0.125), torch.float32)


# --- KV cache write ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_kv_heads,head_dim", [(2, 64), (8, 128), (3, 80)])
def test_kv_cache_write(num_kv_heads, head_dim, dtype):
    torch.manual_seed(num_kv_heads)
    num_slots, num_tokens = 64, 20
    k = strided_view((num_tokens, num_kv_heads, head_dim), dtype, DEVICE)
    v = strided_view((num_tokens, num_kv_heads, head_dim), dtype, DEVICE)
    slots = torch.randperm(num_slots, device=DEVICE)[:num_tokens]
    slots[[3, 11]] = -1  # padded tokens of a CUDA-graph batch
    caches = torch.randn(2, 2, num_slots, num_kv_heads, head_dim, dtype=dtype, device=DEVICE)
    expected = caches.clone()
    kv_cache_write(k, v, caches[0, 1], caches[1, 1], slots)
    kv_cache_write_ref(k, v, expected[0, 1], expected[1, 1], slots)
    assert torch.equal(caches, expected)  # a copy: bit-exact, other layer untouched


# --- RMSNorm, rotary, SiLU-and-mul ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [64, 100])
def test_rms_norm(hidden, dtype):
    torch.manual_seed(hidden)
    x = strided_view((7, hidden), dtype, DEVICE)
    residual = torch.randn(7, hidden, dtype=dtype, device=DEVICE)
    weight = torch.randn(hidden, dtype=dtype, device=DEVICE)
    for res in (None, residual):
        out, new_res = rms_norm(x, weight, eps=1e-6, residual=res)
        ref_out, ref_res = rms_norm_ref(x, weight, eps=1e-6, residual=res)
        assert_close(out, ref_out, dtype)
        assert_close(new_res, ref_res, dtype)


def test_rms_norm_in_place_and_per_head():
    torch.manual_seed(0)
    x = torch.randn(5, 32, dtype=torch.bfloat16, device=DEVICE)
    residual = torch.randn_like(x)
    weight = torch.randn(32, dtype=torch.bfloat16, device=DEVICE)
    ref_out, ref_res = rms_norm_ref(x, weight, eps=1e-5, residual=residual)
    out, res = rms_norm(x, weight, eps=1e-5, residual=residual, out=x, residual_out=residual)
    assert out is x and res is residual
    assert_close(x, ref_out, torch.bfloat16)
    assert_close(residual, ref_res, torch.bfloat16)
    q = strided_view((6, 4, 64), torch.float32, DEVICE)  # Qwen3 q_norm over a per-head view
    w = torch.randn(64, device=DEVICE)
    assert_close(rms_norm(q, w, eps=1e-6)[0], rms_norm_ref(q, w, eps=1e-6)[0], torch.float32)


def rope_tables(positions: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = torch.arange(positions, dtype=torch.float)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(DEVICE), emb.sin().to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(8, 2, 64), (4, 1, 128), (6, 6, 96)])
def test_rotary(num_heads, num_kv_heads, head_dim, dtype):
    torch.manual_seed(head_dim)
    cos, sin = rope_tables(300, head_dim)
    positions = torch.randint(0, 300, (9,), device=DEVICE)
    q = strided_view((9, num_heads, head_dim), dtype, DEVICE)
    k = strided_view((9, num_kv_heads, head_dim), dtype, DEVICE)
    ref_q, ref_k = rotary_ref(positions, q, k, cos, sin)
    out_q, out_k = rotary_embedding(positions, q, k, cos, sin)
    assert_close(out_q, ref_q, dtype)
    assert_close(out_k, ref_k, dtype)
    rq, rk = rotary_embedding(positions.int(), q, k, cos, sin, inplace=True)
    assert rq is q and rk is k
    assert_close(q, ref_q, dtype)
    assert_close(k, ref_k, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [64, 1500])
def test_silu_and_mul(n, dtype):
    torch.manual_seed(n)
    x = strided_view((5, 2 * n), dtype, DEVICE) * 3
    assert_close(silu_and_mul(x), silu_and_mul_ref(x), dtype)


# --- wrappers reject bad arguments ------------------------------------------------------------

def test_wrappers_reject_bad_arguments():
    cache = random_paged_cache([4], num_kv_heads=2, head_dim=64, block_size=16, dtype=torch.float32, device=DEVICE)
    q = torch.randn(1, 4, 64, device=DEVICE)
    args = (cache.k_cache[0], cache.v_cache[0], cache.block_tables)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        paged_decode_attention(torch.randn(1, 3, 64, device=DEVICE), *args, cache.context_lens,
                               block_size=16, scale=1.0)
    with pytest.raises(ValueError, match="block_tables must be int32"):
        paged_decode_attention(q, *args[:2], args[2].long(), cache.context_lens, block_size=16, scale=1.0)
    with pytest.raises(ValueError, match="dtypes differ"):
        paged_decode_attention(q.half(), *args, cache.context_lens, block_size=16, scale=1.0)
    with pytest.raises(ValueError, match="power of two"):
        paged_decode_attention(torch.randn(1, 4, 48, device=DEVICE), torch.randn(16, 2, 48, device=DEVICE),
                               torch.randn(16, 2, 48, device=DEVICE), *args[2:], cache.context_lens,
                               block_size=16, scale=1.0)
    with pytest.raises(ValueError, match="query_start_loc"):
        paged_prefill_attention(q[0:1], *args, cache.context_lens, cache.context_lens, block_size=16, scale=1.0)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        silu_and_mul(torch.randn(8, 4, device=DEVICE).t())


# --- real sizes on the GPU --------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("batch,max_context", [(64, 2048), (4, 8192)])
def test_decode_real_size(batch, max_context, dtype):
    lens = torch.randint(1, max_context + 1, (batch,)).tolist()
    check_decode(lens, 32, 8, 128, dtype, block_size=16, num_splits=(None, 1, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_real_size(head_dim):
    query_lens = [1024, 512, 1, 1, 700, 2048]
    cached = [0, 1536, 900, 4000, 100, 0]
    check_prefill(query_lens, cached, 32, 8, head_dim, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pointwise_real_size():
    dtype = torch.bfloat16
    x = torch.randn(4096, 4096, dtype=dtype, device=DEVICE)
    residual, weight = torch.randn_like(x), torch.randn(4096, dtype=dtype, device=DEVICE)
    for got, want in zip(rms_norm(x, weight, eps=1e-5, residual=residual),
                         rms_norm_ref(x, weight, eps=1e-5, residual=residual)):
        assert_close(got, want, dtype)
    gate_up = torch.randn(4096, 2 * 14336, dtype=dtype, device=DEVICE)
    assert_close(silu_and_mul(gate_up), silu_and_mul_ref(gate_up), dtype)
    cos, sin = rope_tables(8192, 128)
    positions = torch.randint(0, 8192, (4096,), device=DEVICE)
    qkv = torch.randn(4096, (32 + 8 + 8) * 128, dtype=dtype, device=DEVICE)  # fused QKV: q, k, v are views
    q, k, v = (t.view(4096, -1, 128) for t in qkv.split([4096, 1024, 1024], dim=1))
    for got, want in zip(rotary_embedding(positions, q, k, cos, sin), rotary_ref(positions, q, k, cos, sin)):
        assert_close(got, want, dtype)
    slots = torch.randperm(100_000, device=DEVICE)[:4096]
    caches = torch.randn(2, 100_000, 8, 128, dtype=dtype, device=DEVICE)
    expected = caches.clone()
    kv_cache_write(k, v, caches[0], caches[1], slots)
    kv_cache_write_ref(k, v, expected[0], expected[1], slots)
    assert torch.equal(caches, expected)
