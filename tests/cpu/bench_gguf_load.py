"""GGUF load time on the packaged SmolLM2 Q4_1 file: a tokenizer alone (a front end), then parse, config, tokenizer,
weights, a whole LLM() start;
and the torch dequantizers against the gguf package's numpy ones, per ggml type.

    python tests/cpu/bench_gguf_load.py [--repeat 3] [--before REV] [--no-engine] [--no-dequant]

``--before REV`` also times the loader as it was at git revision REV (its plugins/gguf_*.py and
loader_gguf.py, imported under other module names and registered as load format "gguf-before") in this
same process, alternating with this tree's, so a ratio compares like with like. Every figure is the best
of ``--repeat`` runs after one untimed warm-up, each from a cold parse cache (the file itself stays in
the page cache); the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = ("gguf_file", "gguf_metadata", "gguf_dequant", "loader_gguf")
BEFORE_PACKAGE = "_gguf_before"


def load_before(rev: str) -> types.ModuleType:
    """The GGUF modules of git revision ``rev`` as package ``_gguf_before``; returns its loader_gguf."""
    package = types.ModuleType(BEFORE_PACKAGE)
    package.__path__ = []
    sys.modules[BEFORE_PACKAGE] = package
    for name in MODULES:  # all registered before any runs: they import each other
        module = types.ModuleType(f"{BEFORE_PACKAGE}.{name}")
        module.__file__ = f"{rev}:plugins/{name}.py"
        sys.modules[module.__name__] = module
        setattr(package, name, module)
    for name in MODULES:
        module = sys.modules[f"{BEFORE_PACKAGE}.{name}"]
        exec(compile(_source(rev, name), module.__file__, "exec"), module.__dict__)
    return sys.modules[f"{BEFORE_PACKAGE}.loader_gguf"]


def _source(rev: str, name: str) -> str:
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:plugins/{name}.py"], check=True,
                            capture_output=True, text=True).stdout
    for other in MODULES:
        source = source.replace(f"pegboard.plugins.{other}", f"{BEFORE_PACKAGE}.{other}")
    return source


def file_module(loader_module: types.ModuleType) -> types.ModuleType:
    """The gguf_file module beside ``loader_module`` (this tree's or the other revision's)."""
    return importlib.import_module(loader_module.__name__.rsplit(".", 1)[0] + ".gguf_file")


def clear_cache(loader_module: types.ModuleType) -> None:
    file_module(loader_module)._parse_cached.cache_clear()
    gc.collect()


def time_loader(loader_module: types.ModuleType, files) -> dict[str, float]:
    """Seconds for each step from a cold parse cache (the first step also parses the file)."""
    loader = loader_module.GGUFLoader()
    clear_cache(loader_module)
    mark = time.perf_counter()
    loader.load_tokenizer(files)  # what a front end over a core process does: the tokenizer, nothing else
    times = {"front-end tokenizer": time.perf_counter() - mark}
    clear_cache(loader_module)
    started = time.perf_counter()
    file_module(loader_module).open_gguf(files.path)
    times["parse"] = time.perf_counter() - started
    mark = time.perf_counter()
    config = loader.load_config(files)
    times["config"] = time.perf_counter() - mark
    mark = time.perf_counter()
    loader.load_tokenizer(files)
    times["tokenizer after parse"] = time.perf_counter() - mark
    mark = time.perf_counter()
    count = sum(1 for _ in loader.iter_weights(files, config))
    times["weights"] = time.perf_counter() - mark
    times["loader total"] = time.perf_counter() - started  # parse, config, tokenizer, weights
    assert count == 272, count
    return times


def time_engine(load_format: str, loader_module: types.ModuleType, path: Path, board) -> dict[str, float]:
    """Wall seconds of LLM(...) on CPU (fp32, max_model_len 1024, in-process core), from a cold parse cache."""
    from pegboard import LLM

    clear_cache(loader_module)
    started = time.perf_counter()
    llm = LLM(str(path), dtype="float32", max_model_len=1024, device="cpu", load_format=load_format, board=board)
    times = {"LLM() start": time.perf_counter() - started}
    del llm
    gc.collect()
    return times


# where each block type keeps its fp16 scales (d, and dmin where it has one)
_SCALE_OFFSETS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(ggml_type: int, rows: int, columns: int) -> "torch.Tensor":
    """Bytes of ``rows x columns`` values: normal floats for float types, else random quants under fp16
    scales of a real model's size (random scale bytes would be NaN, inf or subnormal, which skews timings)."""
    import numpy as np
    import torch
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from pegboard.plugins.gguf_dequant import _FLOATS

    rng = np.random.default_rng(ggml_type)
    if ggml_type in _FLOATS:
        values = torch.from_numpy(rng.standard_normal(rows * columns).astype(np.float32))
        return values.to(_FLOATS[ggml_type]).view(torch.uint8)
    qtype = GGMLQuantizationType(ggml_type)
    block_size, block_bytes = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows * columns // block_size, block_bytes), dtype=np.uint8)
    for offset in _SCALE_OFFSETS[qtype.name]:
        scales = rng.uniform(1e-3, 1e-2, (len(blocks), 1)).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8)
    return torch.from_numpy(blocks.reshape(-1))


def bench_dequant(path: Path, repeat: int) -> None:
    """Per ggml type: the torch dequantizer (one intra-op thread, as the loader runs it) against
    gguf.quants.dequantize, tensor by tensor as the loader goes (each result dropped before the next), on
    the file's tensors of that type and on one 4096x4096 tensor of random values (``random_blocks``)."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, quants

    from pegboard.plugins.gguf_dequant import _FLOATS, _TORCH_DEQUANT, dequantize
    from pegboard.plugins.gguf_file import open_gguf

    def with_numpy(raw: "torch.Tensor", ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
        with np.errstate(all="ignore"):
            blocks = raw.numpy().reshape(math.prod(shape[:-1]), -1)
            return quants.dequantize(blocks, GGMLQuantizationType(ggml_type)).astype(np.float32).reshape(shape)

    def best_of_both(raws, ggml_type) -> tuple[float, float]:
        """Best seconds of (torch, numpy), the two alternating so a change of load hits both."""
        best = [float("inf"), float("inf")]
        for _ in range(repeat):
            for i, convert in enumerate((dequantize, with_numpy)):
                started = time.perf_counter()
                for raw, shape in raws:
                    convert(raw, ggml_type, shape)
                best[i] = min(best[i], time.perf_counter() - started)
        return best[0], best[1]

    gguf = open_gguf(path)
    print(f"\ndequantize, best of {repeat} (torch on 1 thread) | values | torch ms | numpy ms | numpy / torch | "
          f"bit-equal")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for ggml_type in sorted([*_FLOATS, *_TORCH_DEQUANT]):
            qtype = GGMLQuantizationType(ggml_type)
            in_file = [(gguf.raw(info), info.shape) for info in gguf.tensors.values() if info.ggml_type == ggml_type]
            cases = {f"file, {len(in_file)} tensors": in_file} if in_file else {}
            cases["random 4096x4096"] = [(random_blocks(ggml_type, 4096, 4096), (4096, 4096))]
            for where, raws in cases.items():
                equal = all(np.array_equal(dequantize(raw, ggml_type, shape).numpy(),
                                           with_numpy(raw, ggml_type, shape), equal_nan=True) for raw, shape in raws)
                with_torch, numpy_time = best_of_both(raws, ggml_type)
                count = sum(math.prod(shape) for _, shape in raws)
                print(f"{qtype.name:>5} ({where:>17}) | {count:>11,} | {with_torch * 1e3:8.1f} | "
                      f"{numpy_time * 1e3:8.1f} | {numpy_time / with_torch:13.1f} | {equal}")
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", metavar="REV", help="also time the GGUF loader of this git revision")
    parser.add_argument("--no-engine", action="store_true", help="skip the whole LLM() start")
    parser.add_argument("--no-dequant", action="store_true", help="skip the dequantizer comparison")
    args = parser.parse_args()

    import torch  # the engine has torch and transformers imported before it loads a model
    import transformers

    from pegboard.core.model_files import ModelFiles
    from pegboard.core.plugins import load_board
    from pegboard.plugins import loader_gguf
    from pegboard.plugins.sources import packaged_model_path

    path = packaged_model_path("smollm2")
    files = ModelFiles(str(path), "gguf", "smollm2")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "plugins/gguf_file.py",
                            "plugins/gguf_metadata.py", "plugins/gguf_dequant.py", "plugins/loader_gguf.py"],
                           capture_output=True, text=True).stdout.strip()
    print(f"{path.name}; commit {commit}{' + uncommitted GGUF changes' if dirty else ''}; {os.cpu_count()} cores; "
          f"torch {torch.__version__}, transformers {transformers.__version__}; "
          f"load average {os.getloadavg()[0]:.2f} at start")

    variants = {"this tree": ("gguf", loader_gguf)}
    board = load_board()
    if args.before:
        before = load_before(args.before)
        board.model_loaders.register("gguf-before", before.GGUFLoader(), owner="bench")
        variants = {f"before ({args.before})": ("gguf-before", before), **variants}

    for load_format, module in variants.values():  # once untimed: first imports and first-call caches
        time_loader(module, files)
        if not args.no_engine:
            time_engine(load_format, module, path, board)
    best: dict[str, dict[str, float]] = {name: {} for name in variants}
    for _ in range(args.repeat):  # alternate the variants so load changes hit both alike
        for name, (load_format, module) in variants.items():
            times = time_loader(module, files)
            if not args.no_engine:
                times.update(time_engine(load_format, module, path, board))
            for step, seconds in times.items():
                best[name][step] = min(best[name].get(step, float("inf")), seconds)
    print(f"\nbest of {args.repeat} (s), load average {os.getloadavg()[0]:.2f} now")
    steps = list(next(iter(best.values())))
    print(f"{'step':>21} | " + " | ".join(f"{name:>18}" for name in best)
          + (" | this tree / before" if len(best) == 2 else ""))
    for step in steps:
        row = [best[name][step] for name in best]
        ratio = f" | {row[1] / row[0]:18.2f}" if len(row) == 2 else ""
        print(f"{step:>21} | " + " | ".join(f"{value:18.3f}" for value in row) + ratio)
    if not args.no_dequant:
        bench_dequant(path, args.repeat)


if __name__ == "__main__":
    main()
