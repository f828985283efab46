"""`pegboard bench throughput`'s mixed workload through the exact float32 path and the packed GGUF-block path
(``cpu_weights``), both engines in this one process, runs alternating; output tok/s with the load average.

    python tests/cpu/bench_cpu_throughput.py [--num-prompts 64] [--repeat 1] [--threads N]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from pegboard import LLM, SamplingParams
    from pegboard.plugins.bench.data import mixed_requests, ordinary_token_ids, tokenizer_special_ids

    engines = {s: LLM("smollm2", dtype="float32", device="cpu", cpu_weights=s, cpu_threads=args.threads,
                      disable_progress_bar=True) for s in ("fp32", "packed")}
    tokenizer = engines["fp32"].get_tokenizer()
    vocab = ordinary_token_ids(len(tokenizer), tokenizer_special_ids(tokenizer))
    requests = mixed_requests(vocab, args.num_prompts, min_input_len=32, max_input_len=512, min_output_len=32,
                              max_output_len=256, seed=0)  # bench throughput's defaults
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=r.output_len) for r in requests]
    output_tokens = sum(r.output_len for r in requests)
    for llm in engines.values():  # warm-up
        llm.generate(prompts[:2], params[:2], use_tqdm=False)
    for _ in range(args.repeat):
        for setting, llm in engines.items():
            started = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - started
            load = open("/proc/loadavg").read().split()[0]
            print(f"{setting}: {output_tokens / elapsed:.1f} output tok/s ({elapsed:.1f} s, {len(prompts)} requests, "
                  f"load {load})", flush=True)


if __name__ == "__main__":
    main()
