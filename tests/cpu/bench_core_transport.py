"""What one step's messages cost over the core process's pipe: the pickled size of a SchedulerOutput-sized
EngineCoreOutputs for B sequences and the round trip of one such message between two processes.

    python tests/cpu/bench_core_transport.py [--batch 1 32 256] [--iterations 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import time

from pegboard.core.messages import EngineCoreOutput, EngineCoreOutputs, EngineGauges, SchedulerStats


def step_outputs(batch: int, logprobs: bool) -> EngineCoreOutputs:
    """A decode step's outputs: one new token per sequence (and 5 top logprobs each when asked)."""
    def rows(seq: int):
        return (((seq, -0.5 - seq / 1e4, 1),) + tuple((seq + i, -1.0 - i - seq / 1e4, i + 1) for i in range(5)),)

    outputs = tuple(EngineCoreOutput(f"cmpl-{i:06d}-0", (31337 + i,), rows(i) if logprobs else None)
                    for i in range(batch))
    stats = SchedulerStats(step_time=0.012, num_prompt_tokens=0, num_generation_tokens=batch, num_preempted=0,
                           num_batched_tokens=batch)
    return EngineCoreOutputs(outputs, stats, EngineGauges(batch, 0, 0.4))


def echo(conn) -> None:
    """The far side: send every message straight back until None."""
    while (message := conn.recv()) is not None:
        conn.send(message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    process = context.Process(target=echo, args=(there,))
    process.start()
    print("batch | logprobs | pickled bytes | round trip us (send + recv both ways, median of runs)")
    for batch in args.batch:
        for logprobs in (False, True):
            message = step_outputs(batch, logprobs)
            size = len(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            times = []
            for _ in range(args.iterations):
                started = time.perf_counter()
                here.send(message)
                here.recv()
                times.append(time.perf_counter() - started)
            times.sort()
            print(f"{batch:5d} | {str(logprobs):8} | {size:13d} | {times[len(times) // 2] * 1e6:8.0f}")
    here.send(None)
    process.join()


if __name__ == "__main__":
    main()
