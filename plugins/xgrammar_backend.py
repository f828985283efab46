"""The xgrammar structured-outputs backend (``pip install 'pegboard[xgrammar]'``; selected with
``--structured-outputs-config '{"backend": "xgrammar"}'``): json_schema, json_object, regex and choice through
xgrammar's compiler and matcher. xgrammar reads GBNF, not lark, so the ``grammar`` kind stays with the other
backends. Registers nothing when xgrammar is not installed (the import happens only at the first request)."""

from __future__ import annotations

import importlib.util
import json
import re
import threading
from typing import Any

from pegboard.core.errors import InvalidParameterError
from pegboard.core.hookspecs import hookimpl

BACKEND = "xgrammar"
KINDS = ("json_schema", "json_object", "regex", "choice")
_compilers: dict[tuple[int, int], Any] = {}  # (tokenizer id, vocab size) -> xgrammar.GrammarCompiler
_lock = threading.Lock()


def _refused(kind: str, exc: Exception) -> InvalidParameterError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return InvalidParameterError(f"xgrammar refused the {kind} constraint: {reason}", param=kind)


class XGrammarMatcher:
    """One request's xgrammar.GrammarMatcher; its own stop tokens are masked (the engine adds EOS when finished)."""

    supports_bitmask = True

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self.matcher, self.vocab_size = matcher, vocab_size
        self.stop_words = [(t // 32, ~(1 << t % 32) if t % 32 != 31 else 0x7FFFFFFF) for t in matcher.stop_token_ids]

    def fill_bitmask(self, words) -> None:
        self.matcher.fill_next_token_bitmask(words.unsqueeze(0), 0)
        for word, keep in self.stop_words:
            words[word] &= keep

    def allowed_token_ids(self):
        import torch

        from pegboard.kernels.reference import unpack_token_bitmask

        words = torch.zeros(1, -(-self.vocab_size // 32), dtype=torch.int32)
        self.matcher.fill_next_token_bitmask(words, 0)
        return unpack_token_bitmask(words, self.vocab_size)[0].nonzero()[:, 0].tolist()

    def accept(self, token_id: int) -> None:
        self.matcher.accept_token(token_id)

    def is_finished(self) -> bool:
        return self.matcher.is_completed()


class XGrammarGrammar:
    """One kind through xgrammar."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def _source(self, spec: Any) -> tuple[str, Any]:
        """(how xgrammar compiles it, what it compiles)."""
        if self.kind == "json_schema":
            return "json_schema", spec if isinstance(spec, str) else json.dumps(spec)
        if self.kind == "json_object":
            return "json_object", None
        if self.kind == "choice":
            if not isinstance(spec, list) or not spec or not all(isinstance(c, str) for c in spec):
                raise InvalidParameterError("choice must be a non-empty list of strings", param="choice")
            return "regex", "(" + "|".join(re.escape(c) for c in spec) + ")"
        if not isinstance(spec, str):
            raise InvalidParameterError("a regex must be a string", param="regex")
        return "regex", spec

    def validate(self, spec: Any) -> None:
        import xgrammar

        how, source = self._source(spec)
        try:
            if how == "json_schema":
                xgrammar.Grammar.from_json_schema(source, any_whitespace=True, strict_mode=True)
            elif how == "regex":
                xgrammar.Grammar.from_regex(source)
        except Exception as exc:  # xgrammar raises RuntimeError / ValueError subclasses of its own
            raise _refused(self.kind, exc) from None

    def compile(self, spec: Any, *, vocab_size: int, tokenizer: Any = None) -> XGrammarMatcher:
        import xgrammar

        if tokenizer is None:
            raise InvalidParameterError("the xgrammar backend needs the model's tokenizer", param=self.kind)
        key = (id(tokenizer), vocab_size)
        with _lock:
            if key not in _compilers:
                info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
                _compilers[key] = xgrammar.GrammarCompiler(info)
        compiler = _compilers[key]
        how, source = self._source(spec)
        try:
            if how == "json_schema":
                compiled = compiler.compile_json_schema(source, any_whitespace=True, strict_mode=True)
            elif how == "json_object":
                compiled = compiler.compile_builtin_json_grammar()
            else:
                compiled = compiler.compile_regex(source)
        except Exception as exc:
            raise _refused(self.kind, exc) from None
        return XGrammarMatcher(xgrammar.GrammarMatcher(compiled), vocab_size)


@hookimpl
def register_grammars(register) -> None:
    if importlib.util.find_spec("xgrammar") is None:
        return
    for kind in KINDS:
        register(f"{BACKEND}:{kind}", XGrammarGrammar(kind))
