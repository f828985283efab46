"""What structured outputs cost on the SmolLM2 vocabulary (49,152 tokens): per schema of
tests/data/structured_outputs_schemas.json the compile time (regex tree -> DFA, then the per-state token masks)
and the mask cost of one guided row per step (accept the sampled token, copy its state's mask row, the EOS bit:
what GrammarProcessor does per row), over random walks through the grammar; then one step's whole
GrammarProcessor.apply for a batch of 32 guided rows.

    python tests/cpu/bench_structured_outputs.py [--walks 20] [--steps 60] [--backend pegboard|xgrammar|llguidance]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pegboard.core.grammar_processor import GrammarProcessor
from pegboard.core.model_files import pick_loader, resolve_model
from pegboard.core.plugins import load_board
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_config import registered_name
from pegboard.kernels.reference import unpack_token_bitmask

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "structured_outputs_schemas.json"


def smollm2_tokenizer(board):
    files = resolve_model(board.model_sources, "smollm2")
    return pick_loader(board.model_loaders, files, "auto")[1].load_tokenizer(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walks", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--backend", default="pegboard", choices=("pegboard", "xgrammar", "llguidance"))
    args = parser.parse_args()
    board = load_board()
    tokenizer = smollm2_tokenizer(board)
    vocab = 49152
    from pegboard.plugins.structured_outputs.vocabulary import vocabulary_of

    started = time.perf_counter()
    vocabulary_of(tokenizer, vocab)
    print(f"vocabulary bytes (once per tokenizer): {(time.perf_counter() - started) * 1e3:.0f} ms")
    name = registered_name("json_schema", args.backend)
    grammar = board.grammars.get(name)
    eos = tokenizer.eos_token_id
    rng = np.random.default_rng(0)
    all_steps, compiles = [], []
    print(f"{'schema':32} {'states':>6} {'dfa ms':>8} {'masks ms':>8} {'mean us':>8} {'p99 us':>8}")
    for case in json.loads(SCHEMAS.read_text()):
        spec = case["schema"]
        started = time.perf_counter()
        states = grammar.dfa(spec).num_states if args.backend == "pegboard" else 0
        dfa_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        grammar.compile(spec, vocab_size=vocab, tokenizer=tokenizer)
        masks_ms = (time.perf_counter() - started) * 1e3  # the whole compile for the other backends
        compiles.append(dfa_ms + masks_ms)
        words = torch.zeros(-(-vocab // 32), dtype=torch.int32)
        steps = []
        for _ in range(args.walks):
            matcher = grammar.compile(spec, vocab_size=vocab, tokenizer=tokenizer)
            token = None
            for _ in range(args.steps):
                begin = time.perf_counter()
                if token is not None:
                    matcher.accept(token)
                matcher.fill_bitmask(words)
                if matcher.is_finished():
                    words[eos // 32] |= 1 << (eos % 32)
                steps.append(time.perf_counter() - begin)
                allowed = unpack_token_bitmask(words[None], vocab)[0].nonzero()[:, 0].numpy()
                if not allowed.size or matcher.is_finished() and rng.random() < 0.3:
                    break
                token = int(rng.choice(allowed))
                if token == eos:
                    break
        us = np.array(steps) * 1e6
        all_steps.extend(us)
        print(f"{case['name']:32} {states:6d} {dfa_ms:8.1f} {masks_ms:8.1f} {us.mean():8.2f} "
              f"{np.percentile(us, 99):8.2f}")
    us = np.array(all_steps)
    print(f"\nall schemas, {len(us)} steps: mean {us.mean():.2f} us, p50 {np.percentile(us, 50):.2f} us, "
          f"p99 {np.percentile(us, 99):.2f} us per guided row and step")
    print(f"compile per schema (DFA + masks): median {statistics.median(compiles):.0f} ms, "
          f"max {max(compiles):.0f} ms")

    processor = GrammarProcessor(board.grammars, vocab_size=vocab, device=torch.device("cpu"),
                                 eos_token_id=lambda rid: eos, tokenizer=tokenizer, backend=args.backend)
    cases = json.loads(SCHEMAS.read_text())
    ids = [f"r{i}" for i in range(32)]
    for i, rid in enumerate(ids):
        spec = cases[i % len(cases)]["schema"]
        processor.add_request(rid, SamplingParams(extra={"grammar": {"kind": "json_schema", "spec": spec}}), [1])
    logits = torch.randn(32, vocab)
    timings = []
    for _ in range(200):
        begin = time.perf_counter()
        processor.apply(logits.clone(), ids)
        timings.append(time.perf_counter() - begin)
    timings = np.array(timings[20:]) * 1e6
    print(f"GrammarProcessor.apply, 32 guided rows x {vocab} (bitmask build + torch reference mask, includes the "
          f"logits clone): mean {timings.mean():.0f} us, p99 {np.percentile(timings, 99):.0f} us per step")


if __name__ == "__main__":
    main()
