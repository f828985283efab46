"""What a front end knows of the model an engine core serves, and the prompt check both sides apply (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from pegboard.core.errors import InvalidParameterError, PromptTooLongError


@dataclass(frozen=True)
class ModelInfo:
    """What a front end needs to know of the model an engine core serves."""

    name: str  # the model files' name
    vocab_size: int
    max_model_len: int
    max_sequence_len: int  # prompt plus output one request can reach (less than max_model_len on a tiny KV cache)
    max_num_seqs: int
    max_num_batched_tokens: int
    num_kv_blocks: int
    block_size: int
    eos_token_id: int | None  # the model config's (a tokenizer may name another)


def check_prompt(ids: tuple[int, ...] | list[int], info: ModelInfo) -> None:
    """A prompt must be non-empty token ids of the vocabulary, leaving room for one generated token."""
    if not ids:
        raise InvalidParameterError("the prompt is empty", param="prompt")
    if len(ids) >= info.max_sequence_len:
        limit = (f"max_model_len is {info.max_model_len}" if info.max_sequence_len == info.max_model_len else
                 f"the KV cache holds only {info.max_sequence_len - 1} tokens")
        raise PromptTooLongError(
            f"the prompt has {len(ids)} tokens but {limit} (prompt plus at least one generated token must fit)")
    vocab = info.vocab_size
    if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
        raise InvalidParameterError(f"prompt token ids must be integers in [0, {vocab})", param="prompt")
