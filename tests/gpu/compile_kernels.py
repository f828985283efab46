"""Compile every kernel for a CUDA target on a machine without a GPU and print its resource usage.

    python tests/gpu/compile_kernels.py [--arch 90]

Swaps triton's active driver for a stub that names the target, turns each launch into a
compile-only warmup (CPU tensors stand in for CUDA ones; nothing runs), then lists registers,
spill stack and shared memory from cuobjdump. Catches compile errors and register spills before
any GPU time is spent. Uses triton internals (checked with triton 3.6 and 3.9).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

try:
    import pegboard  # noqa: F401
except ImportError:  # a bare checkout: the repo root is the package, so expose it as "pegboard" via a symlink
    _link_dir = tempfile.mkdtemp()
    os.symlink(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
               os.path.join(_link_dir, "pegboard"))
    sys.path.insert(0, _link_dir)

COMPILED: list[tuple[str, dict, object]] = []


class StubDriver:
    """Just enough of a driver for JITFunction.run to compile for `arch`."""

    def __init__(self, arch: int) -> None:
        self.arch = arch

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def install(arch: int) -> None:
    driver.set_active(StubDriver(arch))
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        COMPILED.append((self.fn.__name__, {k: v for k, v in kwargs.items() if k.isupper()}, kernel))
        return kernel

    JITFunction.run = compile_only


def launch_everything() -> None:
    import pegboard.kernels.paged_decode_attention as decode
    import pegboard.kernels.paged_prefill_attention as prefill
    from pegboard.kernels.kv_cache_write import kv_cache_write
    from pegboard.kernels.rms_norm import rms_norm
    from pegboard.kernels.rotary import rotary_embedding
    from pegboard.kernels.silu_and_mul import silu_and_mul

    gpu_dot = lambda dtype, device: dtype == torch.float32  # noqa: E731  (what CUDA tensors would get)
    decode.dot_in_fp32 = prefill.dot_in_fp32 = gpu_dot
    for dtype in (torch.bfloat16, torch.float32):
        shapes = ((32, 8, 128), (32, 8, 64), (16, 2, 256), (32, 32, 128), (32, 1, 128), (28, 4, 128))
        for heads, kv_heads, dim in shapes:  # (H, Hkv, D)
            k_cache = torch.randn(64, kv_heads, dim, dtype=dtype)
            tables, lens = torch.zeros(2, 4, dtype=torch.int32), torch.tensor([5, 9], dtype=torch.int32)
            q = torch.randn(2, heads, dim, dtype=dtype)
            for splits in (1, 4):
                decode.paged_decode_attention(q, k_cache, k_cache, tables, lens, block_size=16, scale=0.1,
                                              num_splits=splits)
            starts = torch.tensor([0, 5, 14], dtype=torch.int32)
            prefill.paged_prefill_attention(torch.randn(14, heads, dim, dtype=dtype), k_cache, k_cache, tables, starts,
                                            lens, block_size=16, scale=0.1, max_query_len=9)
        k = torch.randn(7, 8, 128, dtype=dtype)
        cache = torch.randn(64, 8, 128, dtype=dtype)
        kv_cache_write(k, k, cache, cache, torch.arange(7))
        x, w = torch.randn(7, 4096, dtype=dtype), torch.randn(4096, dtype=dtype)
        rms_norm(x, w, eps=1e-5, residual=x.clone())
        rms_norm(torch.randn(7, 4, 128, dtype=dtype), torch.randn(128, dtype=dtype), eps=1e-5)
        rotary_embedding(torch.arange(7), torch.randn(7, 32, 128, dtype=dtype), k, torch.randn(16, 128),
                         torch.randn(16, 128))
        silu_and_mul(torch.randn(7, 2 * 14336, dtype=dtype))


def resource_usage(cubin: bytes) -> str:
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    line = next((ln for ln in text.splitlines() if "REG:" in ln), "")
    return " ".join(w for w in line.split() if w.startswith(("REG:", "STACK:")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90 = H100/H200)")
    arch = parser.parse_args().arch
    install(arch)
    launch_everything()
    shown = set()
    keys = ("GROUP", "BLOCK_G", "HEADS", "HEAD_DIM", "BLOCK_M", "BLOCK_N", "DIRECT", "DOT_FP32", "N", "BLOCK")
    for name, consts, kernel in COMPILED:
        brief = {k: v for k, v in consts.items() if k in keys}
        key = (name, tuple(brief.items()))
        if key in shown:
            continue
        shown.add(key)
        meta, usage = kernel.metadata, resource_usage(kernel.asm["cubin"])
        print(f"{name:22s} {str(brief):95s} warps={meta.num_warps} smem={meta.shared:6d} {usage}")
    print(f"triton {triton.__version__}: {len(COMPILED)} launches compiled for sm_{arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
