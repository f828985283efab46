"""Structured outputs' cost per output token on the GPU (issue 11): a Llama-3.1-8B-shaped model with random
weights (bf16) and SmolLM2's tokenizer, N concurrent requests of random prompts, the same sampling and max_tokens
with and without a json_schema constraint. Prints each run's wall time, output tokens and cost per output token,
and the constrained run's ratio to the free runs (one before it, one after it, so drift shows).

    python tests/gpu/bench_structured.py TOKENIZER_DIR [--num-prompts 256] [--input-len 256] [--output-len 256]

TOKENIZER_DIR holds SmolLM2's tokenizer files. A random model samples near-uniformly among the tokens a grammar
allows, so constrained outputs often run to max_tokens inside free text (string values, whitespace): the figure is
the cost of a constrained token, and the count of outputs that completed a valid document is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from llama8b_config import write_llama8b_config  # noqa: E402 (this folder is on sys.path)
from pegboard.core.llm import LLM
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_params import StructuredOutputsParams

SCHEMA = {  # an order record: nested object, bounded strings and arrays, enum, integer and number bounds
    "type": "object",
    "properties": {
        "order_id": {"type": "integer", "minimum": 0},
        "customer": {"type": "object",
                     "properties": {"name": {"type": "string", "maxLength": 32},
                                    "email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,12}\\.com$"}},
                     "required": ["name", "email"], "additionalProperties": False},
        "status": {"enum": ["pending", "shipped", "delivered", "cancelled"]},
        "items": {"type": "array", "minItems": 1, "maxItems": 6,
                  "items": {"type": "object",
                            "properties": {"sku": {"type": "string", "maxLength": 12},
                                           "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                                           "price": {"type": "number"}},
                            "required": ["sku", "quantity", "price"], "additionalProperties": False}},
        "gift": {"type": "boolean"},
        "note": {"type": "string", "maxLength": 64},
    },
    "required": ["order_id", "customer", "status", "items", "gift"],
    "additionalProperties": False,
}


def run(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> tuple[float, list]:
    """Wall seconds and outputs of one generate call over every prompt."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    torch.cuda.synchronize()
    return time.perf_counter() - started, outputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tokenizer_dir")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args()
    model = str(Path(tempfile.mkdtemp()) / "llama-3.1-8b-shape")
    write_llama8b_config(model, args.tokenizer_dir)
    llm = LLM(model, load_format="dummy", dtype="bfloat16", max_model_len=2304, max_num_seqs=256,
              max_num_batched_tokens=8192)
    vocab = len(llm.get_tokenizer())
    rng = random.Random(0)
    prompts = [[rng.randrange(100, vocab) for _ in range(args.input_len)] for _ in range(args.num_prompts)]
    free = SamplingParams(temperature=args.temperature, max_tokens=args.output_len, seed=0)
    guided = SamplingParams(temperature=args.temperature, max_tokens=args.output_len, seed=0,
                            structured_outputs=StructuredOutputsParams(json=SCHEMA))
    run(llm, prompts, free)  # warm-up at full size (kernels for every shape the runs meet), then the grammar's cache
    run(llm, prompts[:16], guided)
    rows = []
    for label, params in (("free", free), ("json_schema", guided), ("free again", free)):
        wall, outputs = run(llm, prompts, params)
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        rows.append((label, wall, tokens, outputs))
        print(f"{label:12s} {wall:7.2f} s  {tokens:7d} output tokens  {1e3 * wall / tokens:.4f} ms/token", flush=True)
    free_cost = sum(w / t for _, w, t, _ in (rows[0], rows[2])) / 2
    _, wall, tokens, outputs = rows[1]
    complete = valid = 0
    for o in outputs:
        if o.outputs[0].finish_reason == "stop":
            complete += 1
            try:
                import jsonschema

                jsonschema.validate(json.loads(o.outputs[0].text), SCHEMA)
                valid += 1
            except Exception as exc:  # noqa: BLE001 (reported, not hidden)
                print("invalid:", repr(o.outputs[0].text[:200]), exc)
    print(f"{torch.cuda.get_device_name()}: {args.num_prompts} requests x {args.input_len} prompt tokens, up to "
          f"{args.output_len} out, temperature {args.temperature}: json_schema costs "
          f"{(wall / tokens) / free_cost:.3f}x the free runs' mean per output token; {complete} of "
          f"{len(outputs)} constrained outputs completed ({valid} valid against the schema), the rest hit max_tokens")


if __name__ == "__main__":
    main()
