"""Benchmark prompts: random token-id prompts with chosen input and output lengths (no torch)."""

from __future__ import annotations

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


def random_requests(vocab: list[int], num_prompts: int, *, input_len: int, output_len: int,
                    seed: int) -> list[BenchRequest]:
    """Prompts that all have ``input_len`` tokens and ask for ``output_len`` tokens."""
    return mixed_requests(vocab, num_prompts, min_input_len=input_len, max_input_len=input_len,
                          min_output_len=output_len, max_output_len=output_len, seed=seed)


def _check_range(what: str, low: int, high: int) -> None:
    if not 1 <= low <= high:
        raise ValueError(f"{what} lengths need 1 <= min <= max, got [{low}, {high}]")
