"""The throughput floor of issue 4 for bench_llama8b.sh's results, and the fraction of it each run reached.

floor = the decoder layers' matmul FLOPs (2 x 6.98 G x every prompt and output token) and the LM head's (2 x 0.53 G
        x every output token: only sampled rows reach it) at the GEMM ceiling
      + the KV cache that decode steps read (each output token reads its whole context) at the copy ceiling.
The embedding is a row lookup, no FLOPs. (Until 2026-12-02 the floor counted all 8.03 G parameters for every token,
the embedding and the LM head of every prompt token included: 12-14% too high for A and B.)

    python tests/gpu/floor.py ceilings.json bench_A.json [bench_B.json ...]

Prints the floor and the fraction for the ceilings measured in the same call, and for the issue's
reference ceilings (790 TFLOP/s, 4.3 TB/s: an H200).
"""

from __future__ import annotations

import json
import sys

# Llama-3.1-8B: hidden 4096, 32 layers, 32 heads of 128, 8 KV heads, intermediate 14336, vocab 128256.
HIDDEN, LAYERS, KV_WIDTH, INTERMEDIATE, VOCAB = 4096, 32, 8 * 128, 14336, 128256
LAYER_PARAMS = LAYERS * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_WIDTH + 3 * HIDDEN * INTERMEDIATE)
HEAD_PARAMS = VOCAB * HIDDEN
PARAMS = 2 * VOCAB * HIDDEN + HIDDEN + LAYER_PARAMS + LAYERS * 2 * HIDDEN  # the checkpoint's, for the printout
KV_BYTES_PER_TOKEN = LAYERS * 2 * KV_WIDTH * 2  # K and V, bf16
REFERENCE = (790.0, 4.3)  # the H200 ceilings


def floor_seconds(num_requests: int, input_len: int, output_len: int, tflops: float, tbps: float) -> float:
    flops = 2 * num_requests * (LAYER_PARAMS * (input_len + output_len) + HEAD_PARAMS * output_len)
    kv_tokens_read = num_requests * sum(input_len + i for i in range(output_len))
    return flops / (tflops * 1e12) + kv_tokens_read * KV_BYTES_PER_TOKEN / (tbps * 1e12)


def main(argv: list[str]) -> None:
    ceilings = json.loads(open(argv[0]).read())
    measured = (ceilings["gemm_tflops"], ceilings["copy_tbps"])
    print(f"floor on {ceilings['device']} ({measured[0]:.0f} TFLOP/s, {measured[1]:.2f} TB/s measured here) "
          f"and on the issue's reference ({REFERENCE[0]:.0f} TFLOP/s, {REFERENCE[1]} TB/s); {PARAMS / 1e9:.2f} G params")
    print(f"{'run':32s} {'elapsed s':>9s} {'floor here':>10s} {'fraction':>8s} {'ref floor':>9s} {'fraction':>8s}")
    for path in argv[1:]:
        report = json.loads(open(path).read())
        s = report["settings"]
        for backend, result in report["results"].items():
            here = floor_seconds(result["num_requests"], s["input_len"], s["output_len"], *measured)
            ref = floor_seconds(result["num_requests"], s["input_len"], s["output_len"], *REFERENCE)
            elapsed = result["elapsed_s"]
            name = f"{path.rsplit('/', 1)[-1]} {backend}"
            print(f"{name:32s} {elapsed:9.2f} {here:10.2f} {here / elapsed:8.1%} {ref:9.2f} {ref / elapsed:8.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
