"""What a prefill chunk costs the other streams on CPU: SmolLM2 (the packaged default model), float32.

For each chunk size N (``max_num_batched_tokens``), a few streams are decoding when one long prompt
arrives; every step then computes up to N of its prompt tokens plus one token of each stream, so the
step time is the other streams' inter-token latency while the prompt is prefilled. Prints, per N, the
slowest and the median such step, the time to prefill the whole prompt, its prefill rate, and the
process CPU seconds of the median step (which other jobs on the machine inflate less than wall time).
Each figure is the best of ``--repeats`` runs.

    python tests/cpu/bench_prefill_chunk.py [--prompt-len 4000] [--streams 4] [--repeats 2]
                                            [--chunks 128 256 512 1024 2048 4096]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.sampling_params import SamplingParams


def prefill_with_streams(engine: LLMEngine, chunk: int, prompt_len: int, streams: int, tag: str
                         ) -> tuple[list[float], list[float], float]:
    """Wall and CPU seconds of each step while a ``prompt_len`` prompt is prefilled in chunks of ``chunk`` beside
    decoding streams, and the wall time to its first token."""
    engine.scheduler.max_num_batched_tokens = chunk
    decode = SamplingParams(temperature=0, max_tokens=100_000, ignore_eos=True)
    stream_ids = [f"{tag}-stream{i}" for i in range(streams)]
    for i, stream_id in enumerate(stream_ids):
        engine.add_request(stream_id, list(range(1000 + 40 * i, 1032 + 40 * i)), decode)
    decoding: set[str] = set()
    while len(decoding) < streams:  # every stream past its prompt
        decoding.update(output.request_id for output in engine.step())
    long_id = f"{tag}-long"
    engine.add_request(long_id, [2000 + t % 40000 for t in range(prompt_len)], SamplingParams(max_tokens=1))
    walls: list[float] = []
    cpus: list[float] = []
    started = time.perf_counter()
    prefilled = False
    while not prefilled:
        wall, cpu = time.perf_counter(), time.process_time()
        outputs = engine.step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        prefilled = any(output.request_id == long_id and output.finished for output in outputs)
    prefill = time.perf_counter() - started
    for stream_id in stream_ids:
        engine.abort_request(stream_id)
    return walls, cpus, prefill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-len", type=int, default=4000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunks", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    args = parser.parse_args()
    biggest = max(max(args.chunks), args.prompt_len)
    engine = LLMEngine(EngineConfig(device="cpu", max_num_batched_tokens=biggest, disable_progress_bar=True))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    prefill_with_streams(engine, 256, 256, args.streams, "warm-up")
    print(f"{args.prompt_len}-token prompt beside {args.streams} decoding streams")
    print("chunk | steps | slowest step s | median step s | prefill s | prefill tok/s | median step CPU s | load avg")
    for chunk in args.chunks:
        runs = [prefill_with_streams(engine, chunk, args.prompt_len, args.streams, f"n{chunk}r{r}")
                for r in range(args.repeats)]
        slowest = min(max(walls) for walls, _, _ in runs)
        median = min(statistics.median(walls) for walls, _, _ in runs)
        cpu = min(statistics.median(cpus) for _, cpus, _ in runs)
        prefill = min(p for _, _, p in runs)
        print(f"{chunk:5d} | {len(runs[0][0]):5d} | {slowest:14.2f} | {median:13.2f} | {prefill:9.1f} | "
              f"{args.prompt_len / prefill:13.0f} | {cpu:17.2f} | {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
