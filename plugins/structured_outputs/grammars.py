"""The built-in grammar kinds: each turns its spec into a regex tree (cheap: the front end validates with it),
then into a DFA and per-tokenizer masks (slow: done off the engine loop, cached)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Callable

from pegboard.core.errors import InvalidParameterError
from pegboard.plugins.structured_outputs import regex_ast as ra

CACHE_SIZE = 64  # compiled (constraint, tokenizer) pairs kept, least recently used dropped


class _LRU:
    """A small thread-safe least-recently-used map; a key being made is made once (other callers wait for it)."""

    def __init__(self, size: int) -> None:
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()
        self._making: dict[Any, threading.Lock] = {}

    def get_or_make(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            try:
                value = make()
            except BaseException:
                with self._lock:
                    self._making.pop(key, None)  # a spec that fails leaves nothing behind
                raise
            with self._lock:
                self._items[key] = value
                self._making.pop(key, None)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return value


_regexes = _LRU(CACHE_SIZE)  # a spec's regex tree: validated once, not once per request
_dfas = _LRU(CACHE_SIZE)
_compiled = _LRU(CACHE_SIZE)


def _key(kind: str, spec: Any) -> str:
    try:
        return kind + ":" + json.dumps(spec, sort_keys=True)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"the {kind} spec must be JSON data, got {type(spec).__name__}",
                                    param=kind) from None


class RegularGrammar:
    """A grammar kind compiled through a regular expression; subclasses say how a spec becomes one."""

    kind = "regex"

    def to_regex(self, spec: Any) -> ra.Node:
        raise NotImplementedError

    def validate(self, spec: Any) -> None:
        """Raise InvalidParameterError naming what is wrong with ``spec`` (no DFA, no tokenizer: cheap)."""
        self.regex(spec)

    def regex(self, spec: Any) -> ra.Node:
        """``spec``'s satisfiable regex tree, made once per spec (a 256-request batch of one schema converts it
        once; a spec that fails is not cached and fails again the same way)."""
        return _regexes.get_or_make(_key(self.kind, spec), lambda: self._satisfiable_regex(spec))

    def _satisfiable_regex(self, spec: Any) -> ra.Node:
        regex = self.to_regex(spec)
        if ra.is_nothing(regex):
            raise InvalidParameterError(f"the {self.kind} constraint matches no output (unsatisfiable)",
                                        param=self.kind)
        return regex

    def dfa(self, spec: Any):
        from pegboard.plugins.structured_outputs.dfa import compile_dfa

        return _dfas.get_or_make(_key(self.kind, spec),
                                 lambda: compile_dfa(self.regex(spec), what=f"the {self.kind} constraint"))

    def compile(self, spec: Any, *, vocab_size: int, tokenizer: Any = None):
        """A matcher for one request (the DFA and its masks are built once per spec and tokenizer, then cached)."""
        from pegboard.plugins.structured_outputs.matcher import DFAMatcher

        if tokenizer is None:
            raise InvalidParameterError(f"{self.kind} constraints need the model's tokenizer, and this engine has "
                                        f"none", param=self.kind)
        key = (_key(self.kind, spec), id(tokenizer), vocab_size)
        compiled = _compiled.get_or_make(key, lambda: _compile(self.dfa(spec), tokenizer, vocab_size))
        return DFAMatcher(compiled)


def _compile(dfa, tokenizer: Any, vocab_size: int):
    import torch

    from pegboard.plugins.structured_outputs.matcher import CompiledGrammar
    from pegboard.plugins.structured_outputs.vocabulary import mask_table, vocabulary_of

    vocabulary = vocabulary_of(tokenizer, vocab_size)
    masks = torch.from_numpy(mask_table(dfa, vocabulary))
    return CompiledGrammar(dfa, vocabulary, masks, dfa.transitions.tolist(), dfa.accepting.tolist())


class RegexGrammar(RegularGrammar):
    kind = "regex"

    def to_regex(self, spec: Any) -> ra.Node:
        from pegboard.plugins.structured_outputs.regex_parser import parse_regex

        return parse_regex(spec, param="regex")


class ChoiceGrammar(RegularGrammar):
    kind = "choice"

    def to_regex(self, spec: Any) -> ra.Node:
        if not isinstance(spec, list) or not spec or not all(isinstance(c, str) for c in spec):
            raise InvalidParameterError("choice must be a non-empty list of strings", param="choice")
        return ra.alt(*(ra.literal(c) if c else ra.EMPTY for c in spec))


class JsonSchemaGrammar(RegularGrammar):
    kind = "json_schema"

    def to_regex(self, spec: Any) -> ra.Node:
        from pegboard.plugins.structured_outputs.json_schema import schema_to_regex

        return schema_to_regex(spec)


class JsonObjectGrammar(RegularGrammar):
    kind = "json_object"

    def to_regex(self, spec: Any) -> ra.Node:
        from pegboard.plugins.structured_outputs.json_schema import json_object_regex

        if spec not in ({}, None):
            raise InvalidParameterError("json_object takes no spec ({})", param="json_object")
        return json_object_regex()


class LarkGrammar(RegularGrammar):
    kind = "grammar"

    def to_regex(self, spec: Any) -> ra.Node:
        from pegboard.plugins.structured_outputs.lark_grammar import lark_to_regex

        return lark_to_regex(spec)


BUILT_IN = (JsonSchemaGrammar(), JsonObjectGrammar(), RegexGrammar(), ChoiceGrammar(), LarkGrammar())
