"""Structured outputs' cost per output token on the GPU (issue 11): a Llama-3.1-8B-shaped model with random
weights (bf16) and SmolLM2's tokenizer, N concurrent requests of random prompts, the same sampling and max_tokens
with and without a json_schema constraint. Prints each run's wall time, output tokens and cost per output token,
and the constrained run's ratio to the free runs (one before it, one after it, so drift shows).

    python tests/gpu/bench_structured.py TOKENIZER_DIR [--num-prompts 256] [--input-len 256] [--output-len 256]
        [--schema order article]

--schema picks the constraint: `order` (the default), an order record with nested objects, bounded strings and
arrays, an enum and number bounds; `article`, two free-text strings with no maxLength; `line_items`, a list of at
least 16 of the order's line items, too long to finish in 256 tokens, so its outputs run to max_tokens like the free
ones while the grammar's structure holds at every step (8 whole orders are over the built-in backend's 20,000 DFA
states: each request then ends at once with that error, which this script reports). Several names run one after the other on the same LLM (a name may
repeat), each with its own four runs, table and ratio line.

TOKENIZER_DIR holds SmolLM2's tokenizer files. A random model samples near-uniformly among the tokens a grammar
allows, so constrained outputs often run to max_tokens inside free text (string values, whitespace): the figure is
the cost of a constrained token, and the count of outputs that completed a valid document is printed beside it. Outputs that complete early leave
the constrained batch smaller in its last steps than the free one (which runs every request to max_tokens), so a
fourth run repeats the free requests with each one's max_tokens set to its constrained twin's length: the ratio
to it compares the same batch size at every step.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from llama8b_config import write_llama8b_config  # noqa: E402 (this folder is on sys.path)
from pegboard.core.llm import LLM
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_params import StructuredOutputsParams

ORDER_SCHEMA = {  # an order record: nested object, bounded strings and arrays, enum, integer and number bounds
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

ARTICLE_SCHEMA = {  # free-text strings with no maxLength: a random model rarely closes one, so most hit max_tokens
    "type": "object",
    "properties": {"title": {"type": "string"}, "body": {"type": "string"}},
    "required": ["title", "body"],
    "additionalProperties": False,
}

LINE_ITEMS_SCHEMA = {  # at least 16 line items: structure at every step, too long to finish in 256 tokens
    "type": "object",
    "properties": {"items": {"type": "array", "minItems": 16, "items": ORDER_SCHEMA["properties"]["items"]["items"]}},
    "required": ["items"],
    "additionalProperties": False,
}

SCHEMAS = {"order": ORDER_SCHEMA, "article": ARTICLE_SCHEMA, "line_items": LINE_ITEMS_SCHEMA}


def run(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> tuple[float, list]:
    """Wall seconds and outputs of one generate call over every prompt."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    torch.cuda.synchronize()
    return time.perf_counter() - started, outputs


def shape_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The workload's arguments: the tokenizer folder, the number of requests, prompt and output lengths."""
    parser.add_argument("tokenizer_dir")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=256)
    return parser


def llm_and_prompts(tokenizer_dir: str, num_prompts: int, input_len: int) -> tuple[LLM, list[list[int]]]:
    """The 8B-shaped dummy model with the tokenizer of ``tokenizer_dir``, and random prompts (seed 0)."""
    model = str(Path(tempfile.mkdtemp()) / "llama-3.1-8b-shape")
    write_llama8b_config(model, tokenizer_dir)
    llm = LLM(model, load_format="dummy", dtype="bfloat16", max_model_len=2304, max_num_seqs=256,
              max_num_batched_tokens=8192)
    vocab = len(llm.get_tokenizer())
    rng = random.Random(0)
    return llm, [[rng.randrange(100, vocab) for _ in range(input_len)] for _ in range(num_prompts)]


def main() -> None:
    parser = shape_arguments(argparse.ArgumentParser())
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--schema", nargs="+", choices=sorted(SCHEMAS), default=["order"])
    args = parser.parse_args()
    llm, prompts = llm_and_prompts(args.tokenizer_dir, args.num_prompts, args.input_len)
    free = SamplingParams(temperature=args.temperature, max_tokens=args.output_len, seed=0)
    run(llm, prompts, free)  # warm-up at full size (kernels for every shape the runs meet)
    for name in args.schema:
        measure(llm, prompts, free, name, args)


def measure(llm: LLM, prompts: list[list[int]], free: SamplingParams, name: str, args: argparse.Namespace) -> None:
    """One schema's four runs, its table and its ratio line."""
    schema = SCHEMAS[name]
    guided = SamplingParams(temperature=args.temperature, max_tokens=args.output_len, seed=0,
                            structured_outputs=StructuredOutputsParams(json=schema))
    run(llm, prompts[:16], guided)  # the grammar's cache
    rows = []
    for label, params in (("free", free), ("json_schema", guided), ("free again", free)):
        wall, outputs = run(llm, prompts, params)
        rows.append((label, wall, outputs))
    errors = Counter(o.error for o in rows[1][2] if o.error)
    if errors:
        print(f"== schema {name}: the constrained requests failed: {dict(errors)}", flush=True)
        return
    guided_lengths = [len(o.outputs[0].token_ids) for o in rows[1][2]]
    reasons = Counter(o.outputs[0].finish_reason for o in rows[1][2])
    # The same batch shape step by step: each free request stops where its constrained twin stopped.
    matched = [SamplingParams(temperature=args.temperature, max_tokens=n, seed=0) for n in guided_lengths]
    rows.append(("free, lengths matched", *run(llm, prompts, matched)))
    print(f"== schema {name}", flush=True)
    cost = {}
    for label, wall, outputs in rows:
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        cost[label] = wall / tokens
        print(f"{label:22s} {wall:7.2f} s  {tokens:7d} output tokens  {1e3 * wall / tokens:.4f} ms/token", flush=True)
    outputs = rows[1][2]
    complete = sum(o.outputs[0].finish_reason == "stop" for o in outputs)
    valid = validated(outputs, schema)
    lengths = sorted(guided_lengths)
    print(f"constrained output lengths: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}; "
          f"{complete} of {len(outputs)} completed a document ({valid}); finish reasons {dict(reasons)}")
    same_max = cost["json_schema"] / ((cost["free"] + cost["free again"]) / 2)
    print(f"{torch.cuda.get_device_name()}, schema {name}: {args.num_prompts} requests x {args.input_len} prompt "
          f"tokens, up to {args.output_len} out, temperature {args.temperature}: json_schema costs {same_max:.3f}x the free "
          f"runs' mean per output token at the same max_tokens, {cost['json_schema'] / cost['free, lengths matched']:.3f}x "
          f"the free run whose requests stop at the constrained ones' lengths (same batch size every step)", flush=True)


def validated(outputs: list, schema: dict) -> str:
    """How many completed outputs validate against schema, as a phrase."""
    try:
        import jsonschema
    except ImportError:
        return "not validated: no jsonschema here"
    valid = 0
    for o in outputs:
        if o.outputs[0].finish_reason == "stop":
            try:
                jsonschema.validate(json.loads(o.outputs[0].text), schema)
                valid += 1
            except (ValueError, jsonschema.ValidationError) as exc:
                print("invalid:", repr(o.outputs[0].text[:200]), exc)
    return f"{valid} valid against the schema"

if __name__ == "__main__":
    main()
