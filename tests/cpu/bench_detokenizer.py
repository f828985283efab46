"""Per-token cost of incremental detokenization on SmolLM2's tokenizer (the packaged GGUF): DecodeStream
(``tokenizers.decoders.DecodeStream``) against the hand-written decode diffs, paired in one process.

Each round streams the same generated-looking token sequence one token at a time through a fresh
IncrementalDetokenizer of each kind (with one stop string, as the server often has), alternating the
order between rounds; the figures are the best and the median round, in microseconds per token. The
streamed text of both is checked against ``tokenizer.decode`` of all tokens first.

    python tests/cpu/bench_detokenizer.py [--tokens 1024] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from pegboard.core.detokenizer import DecodeDiffText, DecodeStreamText, IncrementalDetokenizer
from pegboard.core.model_files import ModelFiles
from pegboard.plugins.loader_gguf import GGUFLoader
from pegboard.plugins.sources import packaged_model_path

PROMPTS = Path(__file__).resolve().parents[1] / "reference_prompts.json"
EXTRA = " Ünïcödé: 日本語のテキスト, emoji 🤗🎉, Ελληνικά, and code `x**2` <|im_end|>\n"


def token_ids(tokenizer, count: int) -> list[int]:
    """``count`` tokens of English, code and multi-byte text, special tokens included."""
    text = "".join(json.loads(PROMPTS.read_text())) + EXTRA
    ids: list[int] = []
    while len(ids) < count:
        ids += tokenizer(text, add_special_tokens=False).input_ids
    return ids[:count]


def stream_seconds(tokenizer, kind: str, prompt: list[int], ids: list[int], skip: bool) -> tuple[float, str]:
    """Seconds to stream ``ids`` one by one through a detokenizer of ``kind``, and the text it made."""
    source = (DecodeStreamText(tokenizer.backend_tokenizer, prompt, skip) if kind == "DecodeStream"
              else DecodeDiffText(tokenizer, prompt, skip))
    detokenizer = IncrementalDetokenizer(tokenizer, prompt, skip, ["never in this text"], False, source=source)
    started = time.perf_counter()
    for token_id in ids:
        detokenizer.add_tokens([token_id])
    return time.perf_counter() - started, detokenizer.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    tokenizer = GGUFLoader().load_tokenizer(ModelFiles(str(packaged_model_path("smollm2")), "gguf", "smollm2"))
    prompt = tokenizer("<|im_start|>user\nWrite something<|im_end|>\n", add_special_tokens=False).input_ids
    ids = token_ids(tokenizer, args.tokens)
    kinds = ("DecodeStream", "decode diffs")
    for skip in (True, False):
        expected = tokenizer.decode(ids, skip_special_tokens=skip)
        for kind in kinds:
            _, text = stream_seconds(tokenizer, kind, prompt, ids, skip)
            print(f"{kind:>12}, skip_special_tokens={skip}: text equals decode(all): {text == expected}")
    print(f"\n{len(ids)} tokens, {args.rounds} rounds each, order alternating; load average "
          f"{os.getloadavg()[0]:.2f} at start; microseconds per token")
    print(f"{'detokenizer':>12} | {'skip_special':>12} | {'best':>7} | {'median':>7}")
    for skip in (True, False):
        per_token: dict[str, list[float]] = {kind: [] for kind in kinds}
        for round_index in range(args.rounds):
            for kind in kinds if round_index % 2 == 0 else kinds[::-1]:
                seconds, _ = stream_seconds(tokenizer, kind, prompt, ids, skip)
                per_token[kind].append(seconds / len(ids) * 1e6)
        for kind in kinds:
            print(f"{kind:>12} | {str(skip):>12} | {min(per_token[kind]):7.2f} | "
                  f"{statistics.median(per_token[kind]):7.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
