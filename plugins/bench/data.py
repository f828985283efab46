"""Benchmark prompts: random token-id prompts with chosen input and output lengths (no torch)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class BenchRequest:
    """One benchmark request: the prompt's token ids and how many tokens to generate."""

    prompt_token_ids: list[int]
    output_len: int

    @property
    def input_len(self) -> int:
        return len(self.prompt_token_ids)


def ordinary_token_ids(vocab_size: int, special_ids: Iterable[int] = ()) -> list[int]:
    """Token ids in ``[0, vocab_size)`` that are not special (BOS, EOS, chat markers, ...)."""
    special = set(special_ids)
    return [t for t in range(vocab_size) if t not in special]


def tokenizer_special_ids(tokenizer: Any) -> set[int]:
    """The ids a tokenizer treats as special, including added tokens such as chat markers."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    ids.update(getattr(tokenizer, "added_tokens_decoder", None) or {})
    return ids


def mixed_requests(vocab: list[int], num_prompts: int, *, min_input_len: int, max_input_len: int,
                   min_output_len: int, max_output_len: int, seed: int) -> list[BenchRequest]:
    """Prompts with input and output lengths drawn uniformly from the given (inclusive) ranges."""
    _check_range("input", min_input_len, max_input_len)
    _check_range("output", min_output_len, max_output_len)
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prompts):
        input_len = rng.randint(min_input_len, max_input_len)
        output_len = rng.randint(min_output_len, max_output_len)
        requests.append(BenchRequest(rng.choices(vocab, k=input_len), output_len))
    return requests


def random_requests(vocab: list[int], num_prompts: int, *, input_len: int, output_len: int, seed: int,
                    range_ratio: float = 0.0, prefix_len: int = 0) -> list[BenchRequest]:
    """vLLM's ``random`` dataset: lengths drawn uniformly from [floor(L(1-r)), ceil(L(1+r))] (outputs at least 1),
    each prompt a run of consecutive ordinary ids from a random offset (wrapping), after a shared random prefix
    of ``prefix_len`` ids. numpy's ``default_rng(seed)`` draws them in vLLM's order."""
    import numpy as np

    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"the range ratio must be in [0, 1), got {range_ratio}")
    if prefix_len < 0 or prefix_len + math.floor(input_len * (1 - range_ratio)) < 1 or output_len < 1:
        raise ValueError(f"random prompts need input length >= 1 and output length >= 1, got input {input_len} "
                         f"(range ratio {range_ratio}, prefix {prefix_len}) and output {output_len}")
    rng = np.random.default_rng(seed)
    input_lens = rng.integers(math.floor(input_len * (1 - range_ratio)), math.ceil(input_len * (1 + range_ratio)) + 1,
                              size=num_prompts)
    output_lens = rng.integers(max(1, math.floor(output_len * (1 - range_ratio))),
                               max(1, math.ceil(output_len * (1 + range_ratio))) + 1, size=num_prompts)
    offsets = rng.integers(0, len(vocab), size=num_prompts)
    ids = np.asarray(vocab)
    prefix = ids[rng.integers(0, len(ids), size=prefix_len)].tolist() if prefix_len else []
    return [BenchRequest(prefix + ids[(offset + i + np.arange(length)) % len(ids)].tolist(), int(out))
            for i, (length, out, offset) in enumerate(zip(input_lens, output_lens, offsets))]


def _check_range(what: str, low: int, high: int) -> None:
    if not 1 <= low <= high:
        raise ValueError(f"{what} lengths need 1 <= min <= max, got [{low}, {high}]")
