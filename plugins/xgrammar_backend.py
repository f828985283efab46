"""The xgrammar structured-outputs backend (``pip install 'pegboard[xgrammar]'``; selected with
``--structured-outputs-config '{"backend": "xgrammar"}'``): json_schema, json_object, regex and choice through
xgrammar's compiler and matcher. xgrammar reads GBNF, not lark, so the ``grammar`` kind stays with the other
backends. Registers nothing when xgrammar is not installed (the import happens only at the first request)."""

from __future__ import annotations

import importlib.util
import json
import re
from typing import Any

from pegboard.core.errors import InvalidParameterError
from pegboard.core.hookspecs import hookimpl
from pegboard.plugins.external_grammar import PerTokenizer, StopMaskedMatcher, choice_strings


def _compiler(tokenizer: Any, vocab_size: int) -> Any:
    import xgrammar

    return xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size))


BACKEND = "xgrammar"
KINDS = ("json_schema", "json_object", "regex", "choice")
_compilers = PerTokenizer(_compiler)  # -> xgrammar.GrammarCompiler


def _refused(kind: str, exc: Exception) -> InvalidParameterError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return InvalidParameterError(f"xgrammar refused the {kind} constraint: {reason}", param=kind)


class XGrammarMatcher(StopMaskedMatcher):
    """One request's xgrammar.GrammarMatcher; its own stop tokens are masked (the engine adds EOS when finished)."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        super().__init__(matcher, vocab_size, list(matcher.stop_token_ids))

    def _fill(self, words) -> None:
        self.matcher.fill_next_token_bitmask(words, 0)

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
            return "regex", "(" + "|".join(re.escape(c) for c in choice_strings(spec)) + ")"
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
        compiler = _compilers.get(tokenizer, vocab_size)
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
