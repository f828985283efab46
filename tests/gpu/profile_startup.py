"""Where the engine's start-up goes (a script for the device): from process start to a ready LLM for the
Llama-3.1-8B-shaped dummy model (bf16, bench_llama8b.sh's settings). Prints a timeline of the phases and
cProfile's costliest calls, imports included.

    python tests/gpu/profile_startup.py [--rows 60]
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

started = time.perf_counter()
profiler = cProfile.Profile()
profiler.enable()
marks: list[tuple[str, float]] = []


def mark(name: str) -> None:
    marks.append((name, time.perf_counter() - started))


def main() -> None:
    rows = int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else 60
    import torch

    mark("import torch")
    import transformers  # noqa: F401

    mark("import transformers")
    from profile_decode import llama8b_config_dir  # this folder is on sys.path

    path = llama8b_config_dir()
    mark("config written")
    torch.zeros(1, device="cuda")
    mark("CUDA context")
    from pegboard import LLM

    LLM(path, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", max_model_len=2304,
        max_num_seqs=256, max_num_batched_tokens=8192)
    mark("engine ready")
    profiler.disable()
    print("  ".join(f"{name} {at:.1f} s" for name, at in marks), flush=True)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(rows)


if __name__ == "__main__":
    main()
