"""Where the engine's start-up goes (a script for the device): cProfile of constructing the LLM for the
Llama-3.1-8B-shaped dummy model, bf16, with bench_llama8b.sh's settings; prints the costliest calls.

    python tests/gpu/profile_startup.py [--rows 45]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

started = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=45)
    args = parser.parse_args()
    from profile_decode import llama8b_config_dir  # this folder is on sys.path

    path = llama8b_config_dir()
    profiler = cProfile.Profile()
    profiler.enable()
    from pegboard import LLM

    LLM(path, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", max_model_len=2304,
        max_num_seqs=256, max_num_batched_tokens=8192)
    profiler.disable()
    print(f"process start to engine ready: {time.perf_counter() - started:.1f} s", flush=True)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.rows)


if __name__ == "__main__":
    main()
