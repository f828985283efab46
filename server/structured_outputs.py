"""A request's output constraint, under any of vLLM's and OpenAI's names for it, as the core's
StructuredOutputsParams, which maps it to the engine's grammar request as offline; a kind no grammar plugin
registers is a 400 naming the field, and so is more than one constraint."""

from __future__ import annotations

import json
from typing import Any

from pegboard.core.grammar_processor import GRAMMAR_FIELD
from pegboard.core.structured_outputs_params import StructuredOutputsParams
from pegboard.server.schemas import SamplingBody, invalid

OLDER_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                "guided_grammar": "grammar", "structural_tag": "structural_tag"}  # top-level field -> its name


def grammar_request(body: SamplingBody, grammars: frozenset[str]) -> dict[str, Any]:
    """``{"grammar": {"kind", "spec"}}`` for the body's one constraint, ``{}`` without one."""
    found = [(field, StructuredOutputsParams(**{name: getattr(body, field)}))
             for field, name in OLDER_FIELDS.items() if getattr(body, field) is not None]
    if body.structured_outputs is not None:
        found.append(("structured_outputs", StructuredOutputsParams(**body.structured_outputs.model_dump(by_alias=True))))
    if body.response_format is not None:
        found += _response_format(body.response_format, grammars)
    if not found:
        return {}
    if len(found) > 1:
        raise invalid(found[1][0], f"cannot be combined with '{found[0][0]}' (one constraint per request)")
    field, params = found[0]
    request = params.grammar_request(field)
    if request["kind"] not in grammars:
        raise invalid(field, f"needs a grammar plugin that registers {request['kind']!r} (register_grammars); "
                             f"loaded grammars: {', '.join(sorted(grammars)) or 'none'}")
    return {GRAMMAR_FIELD: request}  # the engine compiles and enforces it per request


def _response_format(response_format: Any, grammars: frozenset[str]) -> list[tuple[str, StructuredOutputsParams]]:
    kind = response_format.type
    if kind == "json_schema":
        schema = response_format.json_schema.schema_ if response_format.json_schema else None
        if schema is None:
            raise invalid("response_format", "of type json_schema needs json_schema.schema (an object)")
        return [("response_format", StructuredOutputsParams(json=schema))]
    if kind == "json_object":  # any JSON object: a schema grammar can say so when no json_object grammar exists
        if "json_object" in grammars or "json_schema" not in grammars:
            return [("response_format", StructuredOutputsParams(json_object=True))]
        return [("response_format", StructuredOutputsParams(json={"type": "object"}))]
    if kind == "structural_tag":  # vLLM hands the whole object on as JSON text
        text = json.dumps(response_format.model_dump(exclude_none=True))
        return [("response_format", StructuredOutputsParams(structural_tag=text))]
    if kind != "text":
        raise invalid("response_format", "type must be text, json_object, json_schema or structural_tag")
    return []
