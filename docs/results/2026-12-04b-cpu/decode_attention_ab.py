"""Decode attention from memory, two builds of kernels/cpu_decode_attention.cpp alternating in one process: a
commit's (default HEAD) and the working tree's. 30 layers' float16 caches of 4,096 blocks of 16, each call on its own
layer's cache (as in the engine); each row's context drawn from [C/2, C]; ms per layer call, best of 5 rounds.

    python decode_attention_ab.py [COMMIT]      (run from the repository root)
"""
import pathlib, subprocess, sys, tempfile, time

import torch
from torch.utils.cpp_extension import load

BIND = """#include <torch/extension.h>
at::Tensor paged_decode_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, int64_t, double);
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("paged_decode_attention", &paged_decode_attention); }
"""
commit = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
work = pathlib.Path(tempfile.mkdtemp())
(work / "bind.cpp").write_text(BIND)
for name in ("cpu_decode_attention.cpp", "cpu_vector_exp.h"):
    (work / f"old_{name}").write_text(subprocess.check_output(["git", "show", f"{commit}:kernels/{name}"], text=True))
(work / "old_cpu_decode_attention.cpp").write_text(
    (work / "old_cpu_decode_attention.cpp").read_text().replace('"cpu_vector_exp.h"', '"old_cpu_vector_exp.h"'))
flags = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"]
builds = {label: load(name=f"decode_attention_{label}", sources=[str(src), str(work / "bind.cpp")],
                      extra_cflags=flags + [f"-I{pathlib.Path('kernels').resolve()}"], extra_ldflags=["-fopenmp"])
          for label, src in (("old", work / "old_cpu_decode_attention.cpp"),
                             ("new", pathlib.Path("kernels/cpu_decode_attention.cpp").resolve()))}
BLOCK, H, HKV, D, LAYERS, BLOCKS = 16, 9, 3, 64, 30, 4096
caches = [(torch.randn(BLOCKS * BLOCK, HKV, D).half(), torch.randn(BLOCKS * BLOCK, HKV, D).half()) for _ in range(LAYERS)]
print(f"old = {commit}, new = the working tree; load {open('/proc/loadavg').read().split()[0]}")
print("| rows | context C | old ms | new ms | new / old | new GB/s of KV |")
print("|---|---|---|---|---|---|")
for batch, context in [(1, 344), (8, 344), (32, 344), (32, 600), (64, 344), (64, 1024)]:
    per = -(-context // BLOCK)
    tables = torch.randperm(BLOCKS)[: batch * per].view(batch, per).to(torch.int32).contiguous()
    lens = torch.randint(max(1, context // 2), context + 1, (batch,), generator=torch.Generator().manual_seed(batch),
                         dtype=torch.int32)
    q = torch.randn(batch, H, D)
    best, outs = {}, {}
    for _ in range(5):
        for label, ops in builds.items():
            started = time.perf_counter()
            for k, v in caches:
                outs[label] = ops.paged_decode_attention(q, k, v, tables, lens, BLOCK, D ** -0.5)
            best[label] = min(best.get(label, 1e9), (time.perf_counter() - started) / LAYERS)
    assert torch.equal(outs["old"], outs["new"]), "the two builds disagree"
    gb = int(lens.sum()) * HKV * D * 2 * 2 / 1e9
    print(f"| {batch} | {context} | {best['old'] * 1e3:.3f} | {best['new'] * 1e3:.3f} | {best['new'] / best['old']:.2f} "
          f"| {gb / best['new']:.1f} |", flush=True)
