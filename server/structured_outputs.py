"""A request's output constraint as the engine's grammar request, ``SamplingParams.extra["grammar"] = {"kind",
"spec"}``, from any of vLLM's and OpenAI's names for it; a kind no grammar plugin registers is a 400 naming the
field, and so is more than one constraint.

kinds: ``json_schema`` (spec: the schema), ``json_object`` ({}), ``regex`` (str), ``choice`` (list[str]),
``grammar`` (lark EBNF str), ``structural_tag`` (vLLM's JSON string).
"""

from __future__ import annotations

import json
from typing import Any

from pegboard.core.grammar_processor import GRAMMAR_FIELD
from pegboard.server.schemas import SamplingBody, invalid

# vLLM's StructuredOutputsParams field -> grammar kind; the older top-level guided_* fields map the same way.
KINDS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar",
         "json_object": "json_object", "structural_tag": "structural_tag"}
OLDER_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                "guided_grammar": "grammar", "structural_tag": "structural_tag"}
OPTIONS = ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern", "disable_fallback")


def grammar_request(body: SamplingBody, grammars: frozenset[str]) -> dict[str, Any]:
    """``{"grammar": {"kind", "spec"}}`` for the body's one constraint, ``{}`` without one."""
    found = [(field, KINDS[name], getattr(body, field)) for field, name in OLDER_FIELDS.items()
             if getattr(body, field) is not None]
    if body.structured_outputs is not None:
        found += _structured_outputs(body.structured_outputs.model_dump(by_alias=True))
    if body.response_format is not None:
        found += _response_format(body.response_format, grammars)
    if not found:
        return {}
    if len(found) > 1:
        first, second = found[0][0], found[1][0]
        raise invalid(second, f"cannot be combined with '{first}' (one constraint per request)" if first != second
                      else "holds more than one constraint (one of json, regex, choice, grammar, json_object, "
                           "structural_tag)")
    field, kind, spec = found[0]
    if kind == "json_schema" and isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as exc:
            raise invalid(field, f"is not a JSON schema: {exc}") from None
    if kind not in grammars:
        raise invalid(field, f"needs a grammar plugin that registers {kind!r} (register_grammars); "
                             f"loaded grammars: {', '.join(sorted(grammars)) or 'none'}")
    return {GRAMMAR_FIELD: {"kind": kind, "spec": spec}}  # the engine compiles and enforces it per request


def _structured_outputs(params: dict[str, Any]) -> list[tuple[str, str, Any]]:
    for option in OPTIONS:
        if params[option] not in (None, False):
            raise invalid(f"structured_outputs.{option}", "is not supported: the grammar backend has no such option")
    found = [("structured_outputs", kind, {} if name == "json_object" else params[name])
             for name, kind in KINDS.items() if params[name] not in (None, False)]
    if not found:
        raise invalid("structured_outputs", f"needs one of {', '.join(KINDS)}")
    return found


def _response_format(response_format: Any, grammars: frozenset[str]) -> list[tuple[str, str, Any]]:
    kind = response_format.type
    if kind == "json_schema":
        schema = response_format.json_schema.schema_ if response_format.json_schema else None
        if schema is None:
            raise invalid("response_format", "of type json_schema needs json_schema.schema (an object)")
        return [("response_format", "json_schema", schema)]
    if kind == "json_object":  # any JSON object: a schema grammar can say so when no json_object grammar exists
        if "json_object" in grammars or "json_schema" not in grammars:
            return [("response_format", "json_object", {})]
        return [("response_format", "json_schema", {"type": "object"})]
    if kind == "structural_tag":  # vLLM hands the whole object on as JSON text
        return [("response_format", "structural_tag", json.dumps(response_format.model_dump(exclude_none=True)))]
    if kind != "text":
        raise invalid("response_format", "type must be text, json_object, json_schema or structural_tag")
    return []
