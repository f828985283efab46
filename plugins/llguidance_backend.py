"""The llguidance structured-outputs backend (``pip install 'pegboard[llguidance]'``; selected with
``--structured-outputs-config '{"backend": "llguidance"}'``, vLLM's ``guidance``): json_schema, json_object,
regex, choice and lark grammars through llguidance's matcher. Registers nothing when llguidance is not installed
(the import happens only at the first request)."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from pegboard.core.errors import InvalidParameterError
from pegboard.core.hookspecs import hookimpl
from pegboard.plugins.external_grammar import PerTokenizer, StopMaskedMatcher, choice_strings


def _lltokenizer(tokenizer: Any, vocab_size: int) -> Any:
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)


BACKEND = "llguidance"
KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
_tokenizers = PerTokenizer(_lltokenizer)  # -> llguidance.LLTokenizer


class LLGuidanceMatcher(StopMaskedMatcher):
    """One request's llguidance.LLMatcher; its own end tokens are masked (the engine adds EOS when finished)."""

    def _fill(self, words) -> None:
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, words, 0)

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
            return llguidance.grammar_from("lark", "start: " + " | ".join(json.dumps(c) for c in choice_strings(spec)))
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

        if tokenizer is None:
            raise InvalidParameterError("the llguidance backend needs the model's tokenizer", param=self.kind)
        lltokenizer = _tokenizers.get(tokenizer, vocab_size)
        matcher = llguidance.LLMatcher(lltokenizer, self._grammar(spec))
        error = matcher.get_error()
        if error:
            raise InvalidParameterError(f"llguidance refused the {self.kind} constraint: {error}", param=self.kind)
        return LLGuidanceMatcher(matcher, vocab_size, list(lltokenizer.eos_tokens))


@hookimpl
def register_grammars(register) -> None:
    if importlib.util.find_spec("llguidance") is None:
        return
    for kind in KINDS:
        register(f"{BACKEND}:{kind}", LLGuidanceGrammar(kind))
