"""The host's share of each engine step, split by phase (CPU or device): offline ``LLM.generate`` over a
mixed-length workload (prompts 32-1536, outputs 16-512 by default) with random weights and greedy sampling,
async scheduling off so that every phase of a step runs in that step's call. On the CPU the default model is a
tiny Llama (2 layers, hidden size 64), so the model's compute is small and what is left is host work; on a GPU
``--shape llama8b`` loads the 8B shape instead.

Phases per step: schedule (Scheduler.schedule), inputs (the runner's batch of ids, positions, slots and tables,
minus its uploads), upload (HostStaging.upload), model (the forward pass and logits), sample (sampling and the
copy to the host started), result (waiting for the tokens and turning them into lists), update
(Scheduler.update_from_output) and outputs (OutputProcessor.process); "other" is the rest of the step's call.

    python tests/gpu/profile_host.py [--num-prompts 800] [--outputs final|cumulative] [--cprofile 30]

``--outputs cumulative`` asks for every request's output after every step (what a streaming server reads);
``final`` (LLM.generate's way) only for finished requests.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable

import torch

from pegboard.core.llm import LLM
from pegboard.core.sampling_params import SamplingParams
from pegboard.plugins.bench.data import mixed_requests

PHASES = ("schedule", "inputs", "upload", "model", "sample", "result", "update", "outputs")


def tiny_llama_dir(vocab_size: int) -> str:
    """A 2-layer, hidden-64 Llama config folder for the dummy loader: its compute is negligible on a CPU."""
    from transformers import LlamaConfig

    path = tempfile.mkdtemp()
    LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=vocab_size, max_position_embeddings=4096,
                bos_token_id=1, eos_token_id=2, architectures=["LlamaForCausalLM"]).save_pretrained(path)
    return path


class PhaseTimer:
    """Wraps methods of the engine's parts (on their instances) to add up the seconds spent in each phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, method: str, phase: str, wrap_result: Callable[[Any], Any] | None = None) -> None:
        inner = getattr(owner, method)
        seconds = self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                result = inner(*args, **kwargs)
            finally:
                seconds[phase] += time.perf_counter() - t0
            return wrap_result(result) if wrap_result is not None else result

        setattr(owner, method, timed)


def instrument(llm: LLM) -> tuple[PhaseTimer, list[float]]:
    """Times every phase of the engine's steps and the wall time of each step call."""
    engine, timer, walls = llm.engine, PhaseTimer(), []
    runner = engine.executor.runner
    timer.wrap(engine.scheduler, "schedule", "schedule")
    timer.wrap(engine.scheduler, "update_from_output", "update")
    timer.wrap(engine.output_processor, "process", "outputs")
    timer.wrap(runner, "launch", "launch")  # inputs = launch - upload - model - sample
    for staging in (runner._staging, runner._staging32):
        timer.wrap(staging, "upload", "upload")
    timer.wrap(runner.model, "forward", "forward")
    timer.wrap(runner.model, "compute_logits", "logits")

    def timed_result(launched: Any) -> Any:
        timer.wrap(launched, "result", "result")
        return launched

    timer.wrap(runner, "_sample", "sample", wrap_result=timed_result)
    step = engine.step

    def timed_step() -> Any:
        t0 = time.perf_counter()
        outputs = step()
        walls.append(time.perf_counter() - t0)
        return outputs

    engine.step = timed_step
    return timer, walls


def run_cumulative(llm: LLM, requests: list, params: list[SamplingParams]) -> None:
    """Every request asks for its output after every step (the streaming server's way)."""
    engine = llm.engine
    for i, (r, p) in enumerate(zip(requests, params)):
        engine.add_request(str(i), r.prompt_token_ids, p)
    while engine.has_unfinished_requests():
        engine.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-prompts", type=int, default=800)
    parser.add_argument("--min-input-len", type=int, default=32)
    parser.add_argument("--max-input-len", type=int, default=1536)
    parser.add_argument("--min-output-len", type=int, default=16)
    parser.add_argument("--max-output-len", type=int, default=512)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--shape", choices=("tiny", "llama8b"), default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--outputs", choices=("final", "cumulative"), default="final")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="print cProfile's N costliest calls")
    args = parser.parse_args()
    if args.shape == "llama8b":
        from profile_decode import llama8b_config_dir  # noqa: E402 (this folder is on sys.path)

        model, vocab, dtype = llama8b_config_dir(), 128000, "bfloat16"
    else:
        model, vocab, dtype = tiny_llama_dir(4096), 4096, "auto"
    llm = LLM(model, load_format="dummy", skip_tokenizer_init=True, dtype=dtype, device=args.device,
              max_model_len=args.max_input_len + args.max_output_len, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens, async_scheduling=False,
              disable_progress_bar=True)
    requests = mixed_requests(list(range(3, vocab)), args.num_prompts, min_input_len=args.min_input_len,
                              max_input_len=args.max_input_len, min_output_len=args.min_output_len,
                              max_output_len=args.max_output_len, seed=3)
    params = [SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True) for r in requests]
    timer, walls = instrument(llm)
    host = cProfile.Profile() if args.cprofile else None
    started = time.perf_counter()
    if host is not None:
        host.enable()
    if args.outputs == "final":
        llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in requests], params, use_tqdm=False)
    else:
        run_cumulative(llm, requests, params)
    if host is not None:
        host.disable()
    total = time.perf_counter() - started
    s = timer.seconds
    s["model"] = s.pop("forward", 0.0) + s.pop("logits", 0.0)
    s["inputs"] = s.pop("launch") - s["upload"] - s["model"] - s["sample"]
    steps = len(walls)
    device = llm.engine.executor.runner.device
    print(f"{device} ({args.shape}): {args.num_prompts} requests ({args.min_input_len}-{args.max_input_len} in, "
          f"{args.min_output_len}-{args.max_output_len} out, {args.outputs} outputs), {total:.2f} s, {steps} steps, "
          f"{sum(walls) / steps * 1e3:.2f} ms per step")
    for phase in PHASES:
        print(f"  {phase:9s} {s[phase] / steps * 1e3:7.3f} ms per step")
    print(f"  {'other':9s} {(sum(walls) - sum(s[p] for p in PHASES)) / steps * 1e3:7.3f} ms per step")
    if host is not None:
        pstats.Stats(host).sort_stats("tottime").print_stats(args.cprofile)


if __name__ == "__main__":
    main()
