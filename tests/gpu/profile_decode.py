"""Where a decode step's time goes on the GPU (a script for the device): Llama-3.1-8B shape, random
weights, bf16, a full batch of decoding requests. Prints wall time per phase and torch.profiler's top ops.

    python tests/gpu/profile_decode.py [--batch 256] [--context 512] [--steps 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.sampling_params import SamplingParams


def llama8b_config_dir() -> str:
    from transformers import LlamaConfig

    path = tempfile.mkdtemp()
    LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
                rope_theta=500000.0, architectures=["LlamaForCausalLM"]).save_pretrained(path)
    return path


def decode_steps(engine: LLMEngine, count: int) -> None:
    """Run ``count`` decode steps straight through the scheduler and runner (no detokenizing or outputs)."""
    runner, scheduler = engine.executor.runner, engine.scheduler
    for _ in range(count):
        scheduled = scheduler.schedule()
        scheduler.update_from_output(scheduled, runner.execute(scheduled))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    engine = LLMEngine(EngineConfig(model=llama8b_config_dir(), load_format="dummy", skip_tokenizer_init=True,
                                    dtype="bfloat16", max_model_len=2048, max_num_seqs=args.batch,
                                    max_num_batched_tokens=8192))
    params = SamplingParams(temperature=0, max_tokens=1000, ignore_eos=True)
    g = torch.Generator().manual_seed(0)
    for i in range(args.batch):
        engine.add_request(str(i), torch.randint(0, 128000, (args.context,), generator=g).tolist(), params)
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.requests.values()):
        engine.step()  # prefill everything
    runner = engine.executor.runner
    phases = {"schedule": 0.0, "execute": 0.0, "update": 0.0}
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        scheduled = engine.scheduler.schedule()
        t1 = time.perf_counter()
        result = runner.execute(scheduled)
        t2 = time.perf_counter()
        engine.scheduler.update_from_output(scheduled, result)
        t3 = time.perf_counter()
        phases["schedule"] += t1 - t0
        phases["execute"] += t2 - t1
        phases["update"] += t3 - t2
    total = time.perf_counter() - started
    print(f"{torch.cuda.get_device_name()}: batch {args.batch}, context ~{args.context}: "
          f"{total / args.steps * 1e3:.1f} ms per decode step; "
          + ", ".join(f"{k} {v / args.steps * 1e3:.1f} ms" for k, v in phases.items()), flush=True)

    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    decode_steps(engine, 10)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        decode_steps(engine, 5)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18))


if __name__ == "__main__":
    main()
