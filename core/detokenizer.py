"""Incremental detokenization and stop-string detection for one sequence."""

from __future__ import annotations

from typing import Any, Protocol

# Decode a few tokens before the new ones so that merges across the boundary come out right.
_CONTEXT_TOKENS = 6


class TextSource(Protocol):
    """Turns the next generated tokens into the text they add ("" while a character is incomplete)."""

    def new_text(self, token_ids: list[int]) -> str: ...


class DecodeStreamText:
    """A fast tokenizer's own incremental decoder, ``tokenizers.decoders.DecodeStream``, primed with the prompt."""

    def __init__(self, backend: Any, prompt_token_ids: list[int], skip_special_tokens: bool) -> None:
        from tokenizers.decoders import DecodeStream

        self.backend = backend
        self.stream = DecodeStream(ids=list(prompt_token_ids[-_CONTEXT_TOKENS:]), skip_special_tokens=skip_special_tokens)

    def new_text(self, token_ids: list[int]) -> str:
        return self.stream.step(self.backend, token_ids) or ""


class DecodeDiffText:
    """Any tokenizer with ``decode``: the text of tokens ``[prefix:]`` minus the text of ``[prefix:read]``;
    a trailing U+FFFD means an incomplete UTF-8 sequence, so those tokens wait for the next step."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool) -> None:
        self.decode = tokenizer.decode
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[int] = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)

    def new_text(self, token_ids: list[int]) -> str:
        self.tokens.extend(token_ids)
        prefix_text = self.decode(self.tokens[self.prefix_offset:self.read_offset],
                                  skip_special_tokens=self.skip_special_tokens)
        full_text = self.decode(self.tokens[self.prefix_offset:], skip_special_tokens=self.skip_special_tokens)
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.tokens)
        return full_text[len(prefix_text):]


def text_source(tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool) -> TextSource:
    """DecodeStream for a fast (tokenizers-backed) tokenizer whose ``decode`` adds no clean-up, else the diffs."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return DecodeStreamText(backend, prompt_token_ids, skip_special_tokens)
    return DecodeDiffText(tokenizer, prompt_token_ids, skip_special_tokens)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text, a few tokens at a time, and cuts it at a stop string."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool,
                 stop: list[str], include_stop_str_in_output: bool, source: TextSource | None = None) -> None:
        self.source = source or (text_source(tokenizer, prompt_token_ids, skip_special_tokens)
                                 if tokenizer is not None else None)
        self.text = ""
        self.stop = stop
        self.include_stop = include_stop_str_in_output
        self.max_stop_len = max((len(s) for s in stop), default=0)

    def add_tokens(self, token_ids: list[int], check_stop: bool = True) -> str | None:
        """Append generated tokens; returns the stop string that matched, if any (text is then cut there).

        With ``check_stop=False`` (min_tokens not reached yet) stop strings are not looked for."""
        if self.source is None:
            return None
        new_text = self.source.new_text(token_ids)
        if not new_text:
            return None
        start = max(0, len(self.text) - self.max_stop_len + 1)
        self.text += new_text
        return self._check_stop(start) if check_stop else None

    def _check_stop(self, search_from: int) -> str | None:
        """Find the earliest stop string that ends in the new text and cut the text there."""
        best: tuple[int, str] | None = None
        for stop in self.stop:
            index = self.text.find(stop, search_from)
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        if best is None:
            return None
        index, stop = best
        self.text = self.text[:index + len(stop)] if self.include_stop else self.text[:index]
        return stop

    def safe_text_length(self, finished: bool) -> int:
        """How much of the text can be streamed: all of it when finished, else all but a possible
        partial stop string at the end."""
        if finished or not self.stop:
            return len(self.text)
        return max(0, len(self.text) - self.max_stop_len + 1)
