"""GPU end-to-end check (a script, run on the device): SmolLM2 greedy output through the triton backend
equals the torch backend's and HF transformers' (fp32; with CUDA graphs and async scheduling, with chunked
prefill and preemption, and eager and synchronous), and the two backends agree in bf16 and fp16.

    python tests/gpu/run_e2e.py --gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf

Prints one line per check and ends with 'N passed, M failed'.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

PROMPTS = json.loads((Path(__file__).parents[1] / "reference_prompts.json").read_text())  # as the CPU tests
MAX_TOKENS = 32


def greedy_tokens(gguf: str, backend: str, dtype: str, prompts: list[list[int]], **extra) -> list[list[int]]:
    """Generate with one attention backend and return each prompt's output token ids."""
    from pegboard import LLM, SamplingParams

    options = {"max_model_len": 1024, "gpu_memory_utilization": 0.3, **extra}
    llm = LLM(gguf, dtype=dtype, device="cuda", attention_backend=backend, **options)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, min_tokens=MAX_TOKENS)  # as HF min_new_tokens
    started = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    print(f"   {backend:6s} {dtype:8s} {extra or ''} {time.perf_counter() - started:.2f} s", flush=True)
    tokens = [o.outputs[0].token_ids for o in outputs]
    del llm
    torch.cuda.empty_cache()
    return tokens


def hf_model(gguf: str):
    """HF transformers' Llama (fp32, CUDA) with weights from our GGUF loader (bit-equal to HF's own GGUF load)."""
    from transformers import AutoModelForCausalLM

    from pegboard.core.model_files import ModelFiles
    from pegboard.plugins.loader_gguf import GGUFLoader

    files = ModelFiles(gguf, "gguf", "smollm2")
    loader = GGUFLoader()
    config = loader.load_config(files)
    model = AutoModelForCausalLM.from_config(config.to_transformers(), dtype=torch.float32)
    state = dict(loader.iter_weights(files, config))
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=False)
    return model.cuda().eval()


@torch.no_grad()
def hf_tokens(model, prompts: list[list[int]]) -> list[list[int]]:
    """HF's greedy continuation of each prompt."""
    out = []
    for ids in prompts:
        gen = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=MAX_TOKENS,
                             min_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=2)
        out.append(gen[0, len(ids):].tolist())
    return out


@torch.no_grad()
def divergences(model, prompts, ours, reference) -> list[str]:
    """Where our output first differs from HF's, with HF's top-2 logprob gap there (a near-tie is < 1e-3)."""
    notes = []
    for i, (ids, a, b) in enumerate(zip(prompts, ours, reference)):
        if a == b:
            continue
        j = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
        logits = model(torch.tensor([ids + b[:j]], device="cuda")).logits[0, -1].float()
        top = torch.log_softmax(logits, -1).topk(2).values
        notes.append(f"prompt {i}: token {j}, HF top-2 gap {float(top[0] - top[1]):.2e}")
    return notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gguf", required=True)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)
    from pegboard.plugins.loader_gguf import GGUFLoader
    from pegboard.core.model_files import ModelFiles

    tokenizer = GGUFLoader().load_tokenizer(ModelFiles(args.gguf, "gguf", "smollm2"))
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    results: list[tuple[str, bool, str]] = []

    triton32 = greedy_tokens(args.gguf, "triton", "float32", prompts)
    torch32 = greedy_tokens(args.gguf, "torch", "float32", prompts)
    chunked = greedy_tokens(args.gguf, "triton", "float32", prompts, max_num_batched_tokens=64, num_kv_blocks=40,
                            max_model_len=512)
    eager_sync = greedy_tokens(args.gguf, "triton", "float32", prompts, enforce_eager=True, async_scheduling=False)
    model = hf_model(args.gguf)
    reference = hf_tokens(model, prompts)
    for note in divergences(model, prompts, triton32, reference):
        print("   triton vs HF:", note)
    del model
    torch.cuda.empty_cache()
    results.append(("fp32 triton backend == torch backend", triton32 == torch32,
                    f"{sum(x == y for x, y in zip(triton32, torch32))}/{len(prompts)}"))
    same = lambda a, b: sum(x == y for x, y in zip(a, b))  # noqa: E731
    results.append(("fp32 triton == HF transformers", same(triton32, reference) == len(prompts),
                     f"{same(triton32, reference)}/{len(prompts)} prompts identical"))
    results.append(("fp32 torch backend == HF transformers", same(torch32, reference) == len(prompts),
                     f"{same(torch32, reference)}/{len(prompts)}"))
    results.append(("fp32 triton, chunked prefill + preemption == HF", same(chunked, reference) == len(prompts),
                     f"{same(chunked, reference)}/{len(prompts)}"))
    results.append(("fp32 triton, eager and synchronous == HF", same(eager_sync, reference) == len(prompts),
                     f"{same(eager_sync, reference)}/{len(prompts)}"))
    for dtype in ("bfloat16", "float16"):
        tri16 = greedy_tokens(args.gguf, "triton", dtype, prompts)
        tor16 = greedy_tokens(args.gguf, "torch", dtype, prompts)
        first = sum(a[0] == b[0] for a, b in zip(tri16, tor16))
        results.append((f"{dtype} triton vs torch backend: first tokens agree", first == len(prompts),
                        f"first token {first}/{len(prompts)}, whole outputs {same(tri16, tor16)}/{len(prompts)}"))
    failed = 0
    for name, ok, detail in results:
        failed += not ok
        print(f"{'ok ' if ok else 'BAD'} {name}: {detail}")
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
