"""What applying a step's token bitmask to the logits costs on the CPU: the torch reference
(kernels/reference.py: unpack, gather, masked_fill, scatter) against the in-place bit operations of
kernels/cpu_token_bitmask.py, for 1, 8 and 32 guided rows of a 32-row batch over SmolLM2's 49,152 tokens, with
the rows consecutive and scattered. Checks that both give the same logits.

    python tests/cpu/bench_token_bitmask.py [--vocab 49152] [--repeats 50] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pegboard.kernels.cpu_token_bitmask import apply_token_bitmask_cpu
from pegboard.kernels.reference import apply_token_bitmask_ref

BATCH = 32


def median_ms(apply, logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor, repeats: int) -> float:
    """The median time of one apply (on a fresh copy of the logits, the copy not timed)."""
    times = []
    for _ in range(repeats):
        target = logits.clone()
        started = time.perf_counter()
        apply(target, bitmask, rows)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(BATCH, args.vocab, generator=generator)
    words = -(-args.vocab // 32)
    print(f"{BATCH}-row batch, vocabulary {args.vocab}, torch threads {torch.get_num_threads()}, median of "
          f"{args.repeats}")
    print(f"{'guided rows':>11} {'rows':>11} {'reference ms':>13} {'bit ops ms':>11} {'speed-up':>9}")
    for count in (1, 8, 32):
        bitmask = torch.randint(-2**31, 2**31 - 1, (count, words), generator=generator,
                                dtype=torch.int64).to(torch.int32)
        layouts = {"consecutive": torch.arange(count)}
        if count < BATCH:
            layouts["scattered"] = torch.randperm(BATCH, generator=generator)[:count]
        for layout, rows in layouts.items():
            expected = apply_token_bitmask_ref(logits.clone(), bitmask, rows)
            got = apply_token_bitmask_cpu(logits.clone(), bitmask, rows)
            assert torch.equal(got.view(torch.int32), expected.view(torch.int32)), "the logits differ"
            before = median_ms(apply_token_bitmask_ref, logits, bitmask, rows, args.repeats)
            after = median_ms(apply_token_bitmask_cpu, logits, bitmask, rows, args.repeats)
            print(f"{count:11d} {layout:>11} {before:13.2f} {after:11.2f} {before / after:8.1f}x")


if __name__ == "__main__":
    main()
