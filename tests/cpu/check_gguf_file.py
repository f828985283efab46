"""Greedy tokens of any GGUF file on the CPU: Pegboard's exact path (``cpu_weights=fp32``) against transformers
loading the same file (both float32), then the packed path against the exact one; prints the agreement per prompt
and, where tokens differ, the reference's top-2 logprob gap at the first divergence (a near-tie under 1e-2).

    python tests/cpu/check_gguf_file.py FILE.gguf [--tokens 24] [--prompts 16]

For files no test has at hand, e.g. a K-quant mix made by llama.cpp's quantizer (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PROMPTS = json.loads((Path(__file__).parents[1] / "reference_prompts.json").read_text())


def first_gap(want: list[int], got: list[int], logprobs: list) -> tuple[int, float] | None:
    """(step, top-2 logprob gap of the reference there) at the first differing token, None when equal."""
    for i, (a, b) in enumerate(zip(want, got)):
        if a != b:
            top = sorted((lp.logprob for lp in logprobs[i].values()), reverse=True)[:2]
            return i, top[0] - top[1]
    return None


def report(name: str, reference: list[list[int]], outputs: list[list[int]], logprobs: list) -> None:
    gaps = [first_gap(want, got, lps) for want, got, lps in zip(reference, outputs, logprobs)]
    same = sum(g is None for g in gaps)
    print(f"{name}: {same} of {len(gaps)} prompts identical")
    for i, gap in enumerate(gaps):
        if gap is not None:
            print(f"  prompt {i}: first divergence at step {gap[0]}, reference top-2 gap {gap[1]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from pegboard import LLM, SamplingParams

    path = Path(args.file).resolve()
    started = time.perf_counter()
    exact = LLM(str(path), dtype="float32", max_model_len=1024, device="cpu", cpu_weights="fp32")
    print(f"exact engine ready in {time.perf_counter() - started:.1f} s")
    tokenizer = exact.get_tokenizer()
    ids = [tokenizer(s).input_ids for s in PROMPTS[:args.prompts]]
    params = SamplingParams(temperature=0, max_tokens=args.tokens, min_tokens=args.tokens, logprobs=2)
    ours = exact.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
    ours_tokens = [o.outputs[0].token_ids for o in ours]
    ours_logprobs = [o.outputs[0].logprobs for o in ours]

    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        hf_tokens = [hf.generate(torch.tensor([p]), max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)[0, len(p):].tolist() for p in ids]
    report("exact path vs transformers", hf_tokens, ours_tokens, ours_logprobs)

    started = time.perf_counter()
    packed = LLM(str(path), dtype="float32", max_model_len=1024, device="cpu", cpu_weights="packed")
    print(f"packed engine ready in {time.perf_counter() - started:.1f} s")
    for batch in (ids, ids[:1]):
        outputs = packed.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        report(f"packed vs exact, {len(batch)} at once", ours_tokens, [o.outputs[0].token_ids for o in outputs],
               ours_logprobs)


if __name__ == "__main__":
    main()
