"""StructuredOutputsParams: vLLM's structured-outputs request, and the one mapping of its fields to the engine's
grammar request ``SamplingParams.extra["grammar"] = {"kind": ..., "spec": ...}``, used offline and by the server
for every name it takes (no torch)."""

from __future__ import annotations

import json as json_module
from dataclasses import dataclass
from typing import Any

from pegboard.core.errors import invalid

# constraint field -> grammar kind
KINDS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar",
         "json_object": "json_object", "structural_tag": "structural_tag"}
_NO_OPTION = "is not supported: the grammar backend has no such option"
REFUSED_OPTIONS = {"disable_any_whitespace": f"{_NO_OPTION} (the JSON whitespace policy is fixed)",
                   "whitespace_pattern": f"{_NO_OPTION} (the JSON whitespace policy is fixed)",
                   "disable_fallback": f"{_NO_OPTION} (one backend serves every request, with no fallback)"}


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one constraint (a JSON schema, a regex, choices, a lark grammar, any JSON object, a structural tag),
    plus options."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # lark EBNF
    json_object: bool | None = None
    structural_tag: str | None = None  # vLLM's JSON text; needs a grammar plugin registering 'structural_tag'
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False  # additionalProperties: false on every object schema not setting it
    whitespace_pattern: str | None = None
    disable_fallback: bool = False

    def __post_init__(self) -> None:
        given = [name for name in KINDS if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise invalid("structured_outputs", (f"holds more than one constraint ({', '.join(given)}): give "
                                                 if given else "needs ") + f"one of {', '.join(KINDS)}")
        for name, why in REFUSED_OPTIONS.items():
            if getattr(self, name) not in (None, False):
                raise invalid(f"structured_outputs.{name}", why)
        if self.disable_additional_properties and self.json is None:
            raise invalid("structured_outputs.disable_additional_properties", "applies to json only")

    def grammar_request(self, field: str = "structured_outputs") -> dict[str, Any]:
        """The engine's grammar request ``{"kind", "spec"}``; an error names ``field`` (the request's name for
        where the constraint came from)."""
        name = next(n for n in KINDS if getattr(self, n) not in (None, False))
        spec = {} if name == "json_object" else getattr(self, name)
        if name == "json" and isinstance(spec, str):
            try:
                spec = json_module.loads(spec)
            except ValueError as exc:
                raise invalid(field, f"is not a JSON schema: {exc}") from None
        if self.disable_additional_properties:
            spec = _closed(spec)
        return {"kind": KINDS[name], "spec": list(spec) if name == "choice" else spec}


def _closed(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object schema that does not set it."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out
