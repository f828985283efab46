"""Where a throughput workload's time goes, step by step (a script for the device): Llama-3.1-8B shape,
random weights, bf16, greedy, ignore_eos. Splits the run into steps that compute prompt tokens and
decode-only steps and reports the wall time of the engine calls that launched each kind (with async
scheduling a call also collects the step before it).

    python tests/gpu/profile_steps.py [--num-prompts 256] [--input-len 512] [--output-len 128] [engine flags]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.sampling_params import SamplingParams
from pegboard.plugins.bench.data import random_requests
from profile_decode import llama8b_config_dir  # noqa: E402 (this folder is on sys.path)


class StepKinds:
    """Wraps an engine's scheduler to remember what each step call launched: prompt tokens or decodes only."""

    def __init__(self, engine: LLMEngine) -> None:
        self.kinds: list[tuple[str, int]] = []
        schedule = engine.scheduler.schedule

        def classified_schedule():
            scheduled = schedule()  # the requests are advanced past the step's tokens already
            requests = engine.scheduler.requests
            prompt = any(requests[r].num_computed_tokens - n < requests[r].num_prompt_tokens
                         for r, n in scheduled.num_scheduled_tokens.items())
            self.kinds.append(("prompt" if prompt else "decode", len(scheduled.num_scheduled_tokens)))
            return scheduled

        engine.scheduler.schedule = classified_schedule


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args()
    engine = LLMEngine(EngineConfig(model=llama8b_config_dir(), load_format="dummy", skip_tokenizer_init=True,
                                    dtype="bfloat16", max_model_len=2304, max_num_seqs=args.max_num_seqs,
                                    max_num_batched_tokens=args.max_num_batched_tokens,
                                    async_scheduling=args.async_scheduling))
    requests = random_requests(list(range(1000, 128000)), args.num_prompts, input_len=args.input_len,
                               output_len=args.output_len, seed=2)
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    kinds = StepKinds(engine)
    walls: list[float] = []
    for i, r in enumerate(requests):
        engine.add_request(str(i), r.prompt_token_ids, params)
    torch.cuda.synchronize()
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        engine.step()
        walls.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    torch.cuda.synchronize()
    totals: dict[str, list] = defaultdict(lambda: [0, 0.0, 0])
    for (kind, rows), wall in zip(kinds.kinds, walls):
        t = totals[kind]
        t[0] += 1
        t[1] += wall
        t[2] += rows
    print(f"{torch.cuda.get_device_name()}: {args.num_prompts} x {args.input_len} in / {args.output_len} out: "
          f"{total:.2f} s, {args.num_prompts * args.output_len / total:.0f} output tok/s "
          f"(async scheduling {'on' if engine.core._overlap else 'off'})")
    for kind, (count, wall, rows) in totals.items():
        print(f"  calls launching {kind:6s} steps: {count:5d}, {wall:7.2f} s, {wall / count * 1e3:6.1f} ms per call, "
              f"{rows / count:.0f} rows per step")


if __name__ == "__main__":
    main()
