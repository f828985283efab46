"""Where a constrained run's extra host time goes (issue 11): bench_structured.py's shape (8B-shaped dummy, SmolLM2's
tokenizer, N requests x input-len random prompt tokens, up to output-len out, temperature 0.8), one free and one
json_schema run under cProfile, each after an unprofiled warm-up run. Prints both runs' wall times and the
functions whose own time grew most from the free run to the constrained one (seconds per run, and ms per step
of 256 rows' worth of output tokens).

    python tests/gpu/profile_structured.py TOKENIZER_DIR [--schema line_items] [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path

import torch

from bench_structured import SCHEMAS, llm_and_prompts, shape_arguments  # noqa: E402 (this folder is on sys.path)
from pegboard.core.llm import LLM
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_params import StructuredOutputsParams


def profiled(llm: LLM, prompts: list[dict], params: SamplingParams) -> tuple[float, int, dict]:
    """Wall seconds, output tokens and {function: own seconds} of one profiled generate call."""
    profile = cProfile.Profile()
    torch.cuda.synchronize()
    started = time.perf_counter()
    profile.enable()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize()
    profile.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profile).stats  # {(file, line, name): (calls, primitive calls, tottime, cumtime, callers)}
    own = {f"{Path(k[0]).name}:{k[1]}({k[2]})": v[2] for k, v in stats.items()}
    return wall, sum(len(o.outputs[0].token_ids) for o in outputs), own


def main() -> None:
    parser = shape_arguments(argparse.ArgumentParser())
    parser.add_argument("--schema", choices=sorted(SCHEMAS), default="line_items")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    llm, token_ids = llm_and_prompts(args.tokenizer_dir, args.num_prompts, args.input_len)
    prompts = [{"prompt_token_ids": ids} for ids in token_ids]
    free = SamplingParams(temperature=0.8, max_tokens=args.output_len, seed=0)
    guided = SamplingParams(temperature=0.8, max_tokens=args.output_len, seed=0,
                            structured_outputs=StructuredOutputsParams(json=SCHEMAS[args.schema]))
    runs = {}
    for label, params in (("free", free), ("json_schema", guided)):
        llm.generate(prompts, params, use_tqdm=False)  # warm-up (and the grammar's cache)
        runs[label] = profiled(llm, prompts, params)
        wall, tokens, own = runs[label]
        print(f"{label:12s} {wall:6.2f} s under cProfile, {tokens} output tokens, {1e3 * wall / tokens:.4f} ms/token, "
              f"host own time {sum(own.values()):.2f} s", flush=True)
    steps = runs["free"][1] / args.num_prompts  # decode steps' worth of tokens
    free_own, guided_own = runs["free"][2], runs["json_schema"][2]
    grown = sorted(guided_own, key=lambda k: guided_own[k] - free_own.get(k, 0.0), reverse=True)
    print(f"{torch.cuda.get_device_name()}: own time, free -> json_schema ({args.schema}), the {args.top} that grew most")
    for name in grown[:args.top]:
        before, after = free_own.get(name, 0.0), guided_own[name]
        print(f"  {before:7.3f} -> {after:7.3f} s  (+{1e3 * (after - before) / steps:6.3f} ms a step)  {name}")


if __name__ == "__main__":
    main()
