"""The llguidance structured-outputs backend (``pip install 'pegboard[llguidance]'``; selected with
``--structured-outputs-config '{"backend": "llguidance"}'``, vLLM's ``guidance``): json_schema, json_object,
regex, choice and lark grammars through llguidance's matcher. Registers nothing when llguidance is not installed
(the import happens only at the first request)."""

from __future__ import annotations

import importlib.util
import json
import threading
from typing import Any

from pegboard.core.errors import InvalidParameterError
from pegboard.core.hookspecs import hookimpl

BACKEND = "llguidance"
KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
_tokenizers: dict[tuple[int, int], Any] = {}  # (tokenizer id, vocab size) -> llguidance.LLTokenizer
_lock = threading.Lock()


class LLGuidanceMatcher:
    """One request's llguidance.LLMatcher; its own end tokens are masked (the engine adds EOS when finished)."""

    supports_bitmask = True

    def __init__(self, matcher: Any, vocab_size: int, stop_ids: list[int]) -> None:
        self.matcher, self.vocab_size = matcher, vocab_size
        self.stop_words = [(t // 32, ~(1 << t % 32) if t % 32 != 31 else 0x7FFFFFFF) for t in stop_ids]

    def fill_bitmask(self, words) -> None:
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, words.unsqueeze(0), 0)
        for word, keep in self.stop_words:
            words[word] &= keep

    def allowed_token_ids(self):
        import torch

        from pegboard.kernels.reference import unpack_token_bitmask

        words = torch.zeros(1, -(-self.vocab_size // 32), dtype=torch.int32)
        self.fill_bitmask(words[0])
        return unpack_token_bitmask(words, self.vocab_size)[0].nonzero()[:, 0].tolist()

    def accept(self, token_id: int) -> None:
        self.matcher.consume_token(token_id)

    def is_finished(self) -> bool:
        return self.matcher.is_accepting()


class LLGuidanceGrammar:
    """One kind through llguidance."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def _grammar(self, spec: Any) -> str:
        import llguidance

        if self.kind == "json_schema":
            return llguidance.grammar_from("json_schema", spec if isinstance(spec, str) else json.dumps(spec))
        if self.kind == "json_object":
            return llguidance.grammar_from("json_schema", '{"type": "object"}')
        if self.kind == "choice":
            if not isinstance(spec, list) or not spec or not all(isinstance(c, str) for c in spec):
                raise InvalidParameterError("choice must be a non-empty list of strings", param="choice")
            return llguidance.grammar_from("lark", "start: " + " | ".join(json.dumps(c) for c in spec))
        if not isinstance(spec, str):
            raise InvalidParameterError(f"a {self.kind} must be a string", param=self.kind)
        return llguidance.grammar_from("regex" if self.kind == "regex" else "lark", spec)

    def validate(self, spec: Any) -> None:
        import llguidance

        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(self._grammar(spec))
        if is_error:
            reason = " ".join(line.strip() for line in "".join(messages).splitlines()[:3])
            raise InvalidParameterError(f"llguidance refused the {self.kind} constraint: {reason}", param=self.kind)

    def compile(self, spec: Any, *, vocab_size: int, tokenizer: Any = None) -> LLGuidanceMatcher:
        import llguidance
        import llguidance.hf

        if tokenizer is None:
            raise InvalidParameterError("the llguidance backend needs the model's tokenizer", param=self.kind)
        key = (id(tokenizer), vocab_size)
        with _lock:
            if key not in _tokenizers:
                _tokenizers[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        matcher = llguidance.LLMatcher(_tokenizers[key], self._grammar(spec))
        error = matcher.get_error()
        if error:
            raise InvalidParameterError(f"llguidance refused the {self.kind} constraint: {error}", param=self.kind)
        return LLGuidanceMatcher(matcher, vocab_size, list(_tokenizers[key].eos_tokens))


@hookimpl
def register_grammars(register) -> None:
    if importlib.util.find_spec("llguidance") is None:
        return
    for kind in KINDS:
        register(f"{BACKEND}:{kind}", LLGuidanceGrammar(kind))
