"""StructuredOutputsParams: vLLM's offline structured-outputs request, mapped to the engine's grammar request
``SamplingParams.extra["grammar"] = {"kind": ..., "spec": ...}`` (no torch)."""

from __future__ import annotations

import json as json_module
from dataclasses import dataclass
from typing import Any

from pegboard.core.errors import InvalidParameterError

CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one constraint: a JSON schema, a regex, a list of choices, a lark grammar or any JSON object."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in CONSTRAINTS if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise InvalidParameterError(
                "structured_outputs needs exactly one of json, regex, choice, grammar, json_object"
                + (f" (got {', '.join(given)})" if given else " (got none)"), param="structured_outputs")
        refused = {"structural_tag": "structural tags are not supported",
                   "disable_any_whitespace": "the JSON whitespace policy is fixed (docs/structured_outputs.md)",
                   "whitespace_pattern": "the JSON whitespace policy is fixed (docs/structured_outputs.md)"}
        for name, why in refused.items():
            if getattr(self, name) not in (None, False):
                raise InvalidParameterError(f"structured_outputs.{name}: {why}", param=f"structured_outputs.{name}")
        if self.disable_additional_properties and self.json is None:
            raise InvalidParameterError("structured_outputs.disable_additional_properties applies to json only",
                                        param="structured_outputs.disable_additional_properties")

    def grammar_request(self) -> dict[str, Any]:
        """The engine's grammar request: ``{"kind": ..., "spec": ...}``."""
        if self.json is not None:
            schema = self.json
            if isinstance(schema, str):
                try:
                    schema = json_module.loads(schema)
                except json_module.JSONDecodeError as exc:
                    raise InvalidParameterError(f"structured_outputs.json is not valid JSON: {exc}",
                                                param="structured_outputs.json") from None
            if self.disable_additional_properties:
                schema = _closed(schema)
            return {"kind": "json_schema", "spec": schema}
        if self.json_object:
            return {"kind": "json_object", "spec": {}}
        name = next(n for n in ("regex", "choice", "grammar") if getattr(self, n) is not None)
        return {"kind": name, "spec": list(self.choice) if name == "choice" else getattr(self, name)}


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
