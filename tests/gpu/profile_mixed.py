"""Mixed steps against their floor (a script for the device): Llama-3.1-8B shape, random weights, bf16, a
mixed-length workload (prompts 32-1536, outputs 16-512), async scheduling off so each step's wall time is its
own. Every step is classed by what it carries (prompt tokens and decode rows, prompt tokens only, decodes
only) and compared with its floor: the larger of its GEMM FLOPs at the GEMM ceiling and one read of the
weights, plus the KV its rows read at the copy ceiling. Then torch.profiler's costliest kernels over a few
mixed steps.

    python tests/gpu/profile_mixed.py [--num-prompts 800] [--profile-steps 5] [--tflops 790] [--tbps 4.3]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections import defaultdict

import torch

from floor import KV_BYTES_PER_TOKEN, PARAMS  # noqa: E402 (this folder is on sys.path)
from profile_decode import llama8b_config_dir  # noqa: E402
from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.sampling_params import SamplingParams
from pegboard.plugins.bench.data import mixed_requests

WEIGHT_BYTES = 2 * PARAMS  # bf16


class StepRecorder:
    """Wraps the engine's scheduler to note each step's prompt tokens, decode rows and context read."""

    def __init__(self, engine: LLMEngine) -> None:
        self.steps: list[tuple[int, int, int, int]] = []  # (prompt tokens, decode rows, tokens, context tokens)
        scheduler = engine.scheduler
        schedule = scheduler.schedule

        def recorded_schedule():
            scheduled = schedule()  # the requests are advanced past the step's tokens already
            decodes = sum(1 for n in scheduled.num_scheduled_tokens.values() if n == 1)
            context = sum(scheduler.requests[r].num_computed_tokens for r in scheduled.num_scheduled_tokens)
            self.steps.append((scheduled.num_prompt_tokens, decodes, scheduled.total_num_scheduled_tokens,
                               context))
            return scheduled

        scheduler.schedule = recorded_schedule


def floor_ms(tokens: int, context: int, tflops: float, tbps: float) -> float:
    """A step's floor: GEMMs (or one weight read, if longer) plus its rows' KV reads."""
    gemm = max(2 * PARAMS * tokens / (tflops * 1e12), WEIGHT_BYTES / (tbps * 1e12))
    return 1e3 * (gemm + context * KV_BYTES_PER_TOKEN / (tbps * 1e12))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-prompts", type=int, default=800)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--tflops", type=float, default=790.0)
    parser.add_argument("--tbps", type=float, default=4.3)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="print cProfile's N costliest calls")
    parser.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=False,
                        help="overlap host and device work (default: off, so each step's wall time is its own)")
    args = parser.parse_args()
    engine = LLMEngine(EngineConfig(model=llama8b_config_dir(), load_format="dummy", skip_tokenizer_init=True,
                                    dtype="bfloat16", max_model_len=2304, max_num_seqs=args.max_num_seqs,
                                    max_num_batched_tokens=args.max_num_batched_tokens,
                                    async_scheduling=args.async_scheduling))
    requests = mixed_requests(list(range(1000, 128000)), args.num_prompts, min_input_len=32, max_input_len=1536,
                              min_output_len=16, max_output_len=512, seed=3)
    for i, r in enumerate(requests):
        engine.add_request(str(i), r.prompt_token_ids,
                           SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True))
    recorder = StepRecorder(engine)
    walls: list[float] = []
    window: range | None = None  # the steps the profiler sees: consecutive, from a mixed one after step 200
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
    host = cProfile.Profile() if args.cprofile else None
    torch.cuda.synchronize()
    started = time.perf_counter()
    if host is not None:
        host.enable()
    while engine.has_unfinished_requests():
        if window is None and args.profile_steps and len(walls) > 200 and recorder.steps[-1][0] and recorder.steps[-1][1]:
            window = range(len(walls), len(walls) + args.profile_steps)  # (the last step was mixed: likely so is this)
            prof.start()
        t0 = time.perf_counter()
        engine.step()
        walls.append(time.perf_counter() - t0)
        if window is not None and len(walls) == window.stop:
            torch.cuda.synchronize()
            prof.stop()
    if window is not None and len(walls) < window.stop:
        prof.stop()
    total = time.perf_counter() - started
    if host is not None:
        host.disable()
    out_tokens = sum(r.output_len for r in requests)
    print(f"{torch.cuda.get_device_name()}: {args.num_prompts} mixed requests (32-1536 in, 16-512 out), "
          f"{total:.2f} s, {out_tokens / total:.0f} output tok/s, {len(walls)} steps "
          f"(async scheduling {'on' if args.async_scheduling else 'off'})")
    kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0, 0])
    for (prompt, decodes, tokens, context), wall in zip(recorder.steps, walls):
        kind = "mixed" if prompt and decodes else "prompt" if prompt else "decode"
        k = kinds[kind]
        k[0] += 1
        k[1] += wall * 1e3
        k[2] += floor_ms(tokens, context, args.tflops, args.tbps)
        k[3] += prompt
        k[4] += decodes
    for kind, (count, wall, floor, prompt, decodes) in kinds.items():
        print(f"  {kind:6s} steps: {count:5d} ({wall / 1e3 / total:4.0%} of the run), {wall / count:6.1f} ms mean "
              f"against a {floor / count:5.1f} ms floor ({floor / wall:4.0%}), {prompt / count:6.0f} prompt tokens "
              f"and {decodes / count:4.0f} decode rows per step")
    if host is not None:
        pstats.Stats(host).sort_stats("tottime").print_stats(args.cprofile)
    if window is not None:
        seen = [recorder.steps[i] for i in window if i < len(walls)]
        mixed = sum(1 for prompt, decodes, _, _ in seen if prompt and decodes)
        events = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
        busy = sum(e.device_time_total for e in events) / 1e3 / len(seen)
        print(f"device busy {busy:.1f} ms per step over {len(seen)} steps ({mixed} mixed) of "
              f"{sum(walls[i] for i in window if i < len(walls)) * 1e3 / len(seen):.1f} ms; costliest kernels, ms per step:")
        for e in events[:12]:
            print(f"  {e.device_time_total / 1e3 / len(seen):8.2f}  {e.key[:100]}")

if __name__ == "__main__":
    main()
