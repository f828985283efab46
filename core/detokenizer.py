"""Incremental detokenization and stop-string detection for one sequence."""

from __future__ import annotations

from typing import Any

# Decode a few tokens before the new ones so that merges across the boundary come out right.
_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text, a few tokens at a time.

    The text of tokens ``[prefix:]`` minus the text of ``[prefix:read]`` is the new text; a
    trailing U+FFFD means an incomplete UTF-8 sequence, so those tokens wait for the next step.
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool,
                 stop: list[str], include_stop_str_in_output: bool) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[int] = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)
        self.text = ""
        self.stop = stop
        self.include_stop = include_stop_str_in_output
        self.max_stop_len = max((len(s) for s in stop), default=0)

    def add_tokens(self, token_ids: list[int], check_stop: bool = True) -> str | None:
        """Append generated tokens; returns the stop string that matched, if any (text is then cut there).

        With ``check_stop=False`` (min_tokens not reached yet) stop strings are not looked for."""
        self.tokens.extend(token_ids)
        if self.tokenizer is None:
            return None
        decode = self.tokenizer.decode
        prefix_text = decode(self.tokens[self.prefix_offset:self.read_offset],
                             skip_special_tokens=self.skip_special_tokens)
        full_text = decode(self.tokens[self.prefix_offset:], skip_special_tokens=self.skip_special_tokens)
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return None
        new_text = full_text[len(prefix_text):]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.tokens)
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
