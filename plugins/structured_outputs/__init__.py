"""Structured outputs, built in: JSON schema, json_object, regex, choice and lark grammars, each compiled to a
byte-level DFA with per-tokenizer token masks (docs/structured_outputs.md)."""

from __future__ import annotations

from pegboard.core.hookspecs import hookimpl


@hookimpl
def register_grammars(register) -> None:
    from pegboard.plugins.structured_outputs.grammars import BUILT_IN

    for grammar in BUILT_IN:
        register(grammar.kind, grammar)
