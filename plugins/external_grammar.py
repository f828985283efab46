"""What the optional structured-outputs backends (xgrammar_backend.py, llguidance_backend.py) share: a matcher
that masks the library's own stop tokens out of its bitmask (the engine adds EOS exactly when the grammar is
finished), the check of a choice spec, and one library object per tokenizer."""

from __future__ import annotations

import threading
from typing import Any, Callable

from pegboard.core.errors import InvalidParameterError


class StopMaskedMatcher:
    """A library matcher's bitmask with its stop tokens cleared; subclasses fill the bitmask and follow tokens."""

    supports_bitmask = True

    def __init__(self, matcher: Any, vocab_size: int, stop_ids: list[int]) -> None:
        self.matcher, self.vocab_size = matcher, vocab_size
        self.stop_words = [(t // 32, ~(1 << t % 32) if t % 32 != 31 else 0x7FFFFFFF) for t in stop_ids]

    def _fill(self, words) -> None:
        """Fill row 0 of ``words`` ([1, W] int32) with the library's allowed tokens."""
        raise NotImplementedError

    def fill_bitmask(self, words) -> None:
        self._fill(words.unsqueeze(0))
        for word, keep in self.stop_words:
            words[word] &= keep

    def allowed_token_ids(self):
        import torch

        from pegboard.kernels.reference import unpack_token_bitmask

        words = torch.zeros(1, -(-self.vocab_size // 32), dtype=torch.int32)
        self.fill_bitmask(words[0])
        return unpack_token_bitmask(words, self.vocab_size)[0].nonzero()[:, 0].tolist()


def choice_strings(spec: Any) -> list[str]:
    """A choice spec, checked: a non-empty list of strings."""
    if not isinstance(spec, list) or not spec or not all(isinstance(c, str) for c in spec):
        raise InvalidParameterError("choice must be a non-empty list of strings", param="choice")
    return spec


class PerTokenizer:
    """One library object per (tokenizer, vocabulary size), built once under a lock."""

    def __init__(self, build: Callable[[Any, int], Any]) -> None:
        self.build = build
        self._objects: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()

    def get(self, tokenizer: Any, vocab_size: int) -> Any:
        key = (id(tokenizer), vocab_size)
        with self._lock:
            if key not in self._objects:
                self._objects[key] = self.build(tokenizer, vocab_size)
            return self._objects[key]
