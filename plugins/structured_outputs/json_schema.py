"""JSON schema -> regex_ast: the JSON texts the schema accepts, written with the whitespace policy of json_text.py.

Properties come in the schema's order (optional ones may be left out); a missing ``additionalProperties`` is
false when ``properties`` is given (xgrammar's strict mode) and true otherwise. Recursion (``$ref`` cycles, and
the nesting of free-form JSON values) is unrolled to ``MAX_DEPTH`` levels. A keyword that is not supported is an
error naming it; nothing is ignored but annotations (title, description, ...).
"""

from __future__ import annotations

import json
import math
from typing import Any

from pegboard.core.errors import InvalidParameterError
from pegboard.plugins.structured_outputs import numbers
from pegboard.plugins.structured_outputs import regex_ast as ra
from pegboard.plugins.structured_outputs.json_text import FORMATS, STRING_CHAR, WHITESPACE, escape_in_string
from pegboard.plugins.structured_outputs.regex_parser import RegexError, parse_regex

MAX_DEPTH = 3  # levels of nesting for recursive $refs and for free-form values (json_object, "true" schemas)

ANNOTATIONS = frozenset({"title", "description", "$schema", "$id", "$comment", "examples", "default", "deprecated",
                         "readOnly", "writeOnly", "$defs", "definitions", "$anchor", "contentMediaType",
                         "contentEncoding"})
KEYWORDS = {
    "any": {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems"},
    "boolean": set(), "null": set(),
}
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


class SchemaError(InvalidParameterError):
    """A JSON schema this backend cannot enforce exactly, or one no value satisfies."""

    def __init__(self, message: str) -> None:
        super().__init__(f"JSON schema: {message}", param="json_schema")


class SchemaCompiler:
    """One schema's conversion: resolves $refs within it and counts recursion depth per reference."""

    def __init__(self, root: Any, *, whitespace: ra.Node = WHITESPACE) -> None:
        self.root = root
        self.ws = whitespace
        self.comma = ra.seq(whitespace, ra.literal(","), whitespace)
        self.colon = ra.seq(whitespace, ra.literal(":"), whitespace)
        self._depth: dict[str, int] = {}
        self._any: dict[int, ra.Node] = {}

    # ---- free-form JSON ------------------------------------------------------------------------------

    def any_value(self, depth: int = MAX_DEPTH) -> ra.Node:
        """Any JSON value nested at most ``depth`` levels of arrays and objects."""
        if depth not in self._any:
            scalars = [self.string(), numbers.NUMBER, ra.literal("true"), ra.literal("false"), ra.literal("null")]
            if depth > 0:
                inner = self.any_value(depth - 1)
                scalars += [self.obj([], inner), self.array(inner, 0, None)]
            self._any[depth] = ra.alt(*scalars)
        return self._any[depth]

    def any_object(self, depth: int = MAX_DEPTH) -> ra.Node:
        return self.obj([], self.any_value(depth - 1))

    # ---- building blocks -----------------------------------------------------------------------------

    def string(self, low: int = 0, high: int | None = None) -> ra.Node:
        return ra.seq(ra.literal('"'), ra.repeat(STRING_CHAR, low, high), ra.literal('"'))

    def obj(self, members: list[tuple[str, ra.Node, bool]], additional: ra.Node | None) -> ra.Node:
        """``{...}`` with the members in order (name, value, required), then any extra members."""
        tails: dict[tuple[int, bool], ra.Node] = {}

        def tail(i: int, first: bool) -> ra.Node:
            if (i, first) in tails:
                return tails[(i, first)]
            if i == len(members):
                if additional is None:
                    node = ra.EMPTY
                else:
                    pair = ra.seq(self.string(), self.colon, additional)
                    more = ra.seq(pair, ra.repeat(ra.seq(self.comma, pair), 0, None))
                    node = ra.optional(more if first else ra.seq(self.comma, more))
            else:
                name, value, required = members[i]
                pair = ra.seq(ra.EMPTY if first else self.comma, ra.literal(json.dumps(name, ensure_ascii=False)),
                              self.colon, value)
                present = ra.seq(pair, tail(i + 1, False))
                node = present if required else ra.alt(present, tail(i + 1, first))
            tails[(i, first)] = node
            return node

        return ra.seq(ra.literal("{"), self.ws, tail(0, True), self.ws, ra.literal("}"))

    def array(self, item: ra.Node, low: int, high: int | None, prefix: list[ra.Node] = ()) -> ra.Node:
        """``[...]``: the prefix items, then between low and high items in all (high None: unbounded)."""
        items = list(prefix)
        rest_low, rest_high = max(low - len(items), 0), None if high is None else high - len(items)
        if rest_high is not None and rest_high < 0:
            raise SchemaError(f"maxItems {high} is below the {len(items)} prefixItems")
        if not items:
            if rest_high == 0:
                body = ra.EMPTY
            else:
                more = ra.repeat(ra.seq(self.comma, item), max(rest_low - 1, 0), None if rest_high is None
                                 else rest_high - 1)
                body = ra.seq(item, more)
                body = body if rest_low > 0 else ra.optional(body)
        else:
            body = items[0]
            for node in items[1:]:
                body = ra.seq(body, self.comma, node)
            if rest_high != 0 and not ra.is_nothing(item):
                body = ra.seq(body, ra.repeat(ra.seq(self.comma, item), rest_low, rest_high))
            elif rest_low:
                raise SchemaError("minItems asks for more items than prefixItems allows")
        return ra.seq(ra.literal("["), self.ws, body, self.ws, ra.literal("]"))

    # ---- schemas -------------------------------------------------------------------------------------

    def convert(self, schema: Any, where: str = "#") -> ra.Node:
        if schema is True or schema == {}:
            return self.any_value()
        if schema is False:
            return ra.NOTHING
        if not isinstance(schema, dict):
            raise SchemaError(f"{where} must be an object or a boolean, got {type(schema).__name__}")
        if "$ref" in schema:
            return self.ref(schema, where)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.alternatives(schema, key, where)
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise SchemaError(f"{where}: allOf with more than one schema is not supported")
            return self.convert({**{k: v for k, v in schema.items() if k != "allOf"}, **parts[0]}, where + "/allOf/0")
        if "enum" in schema or "const" in schema:
            return self.values(schema, where)
        types = schema.get("type", list(TYPES))
        types = [types] if isinstance(types, str) else types
        if not isinstance(types, list) or not types or any(t not in TYPES for t in types):
            raise SchemaError(f"{where}: type must be one of {', '.join(TYPES)} or a list of them, got {types!r}")
        allowed = set(KEYWORDS["any"]) | ANNOTATIONS | {k for t in types for k in KEYWORDS[t]}
        unknown = sorted(set(schema) - allowed)
        if unknown:
            raise SchemaError(f"{where}: keyword {unknown[0]!r} is not supported"
                              + (f" for type {'/'.join(types)}" if "type" in schema else ""))
        if "type" not in schema and not any(k in schema for t in types for k in KEYWORDS[t]):
            return self.any_value()
        return ra.alt(*(getattr(self, "type_" + t)(schema, where) for t in types))

    def ref(self, schema: dict, where: str) -> ra.Node:
        extra = set(schema) - {"$ref"} - ANNOTATIONS
        if extra:
            raise SchemaError(f"{where}: keywords beside $ref are not supported ({', '.join(sorted(extra))})")
        target = schema["$ref"]
        if not isinstance(target, str) or not target.startswith("#"):
            raise SchemaError(f"{where}: only local $refs (#/...) are supported, got {target!r}")
        node: Any = self.root
        for part in [p for p in target[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise SchemaError(f"{where}: $ref {target!r} points at nothing")
            node = node[part]
        depth = self._depth.get(target, 0)
        if depth > MAX_DEPTH:
            return ra.NOTHING  # recursion unrolled this far: the branch ends here
        self._depth[target] = depth + 1
        try:
            return self.convert(node, target)
        finally:
            self._depth[target] = depth

    def alternatives(self, schema: dict, key: str, where: str) -> ra.Node:
        options = schema[key]
        if not isinstance(options, list) or not options:
            raise SchemaError(f"{where}: {key} must be a non-empty list of schemas")
        base = {k: v for k, v in schema.items() if k != key}
        if set(base) - ANNOTATIONS:
            options = [{**base, **o} if isinstance(o, dict) else o for o in options]
        nodes = [self.convert(o, f"{where}/{key}/{i}") for i, o in enumerate(options)]
        if key == "oneOf":
            from pegboard.plugins.structured_outputs.dfa import compile_dfa, overlap

            dfas = [compile_dfa(n, what=f"{where}/oneOf/{i}") if not ra.is_nothing(n) else None
                    for i, n in enumerate(nodes)]
            for i in range(len(dfas)):
                for j in range(i + 1, len(dfas)):
                    if dfas[i] is not None and dfas[j] is not None and overlap(dfas[i], dfas[j]):
                        raise SchemaError(f"{where}: oneOf alternatives {i} and {j} can match the same text, which "
                                          f"a grammar cannot exclude; use anyOf")
        return ra.alt(*nodes)

    def values(self, schema: dict, where: str) -> ra.Node:
        if "const" in schema:
            options = [schema["const"]]
        else:
            options = schema["enum"]
            if not isinstance(options, list):
                raise SchemaError(f"{where}: enum must be a list")
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const") and k not in ANNOTATIONS}
        if set(rest) - {"type"}:
            raise SchemaError(f"{where}: keywords beside enum/const other than type are not supported "
                              f"({', '.join(sorted(set(rest) - {'type'}))})")
        if "type" in rest:
            types = rest["type"] if isinstance(rest["type"], list) else [rest["type"]]
            options = [v for v in options if _json_type(v) in types or (_json_type(v) == "integer" and "number" in types)]
        if not options:
            raise SchemaError(f"{where}: no value of enum/const is allowed (the schema is unsatisfiable)")
        return ra.alt(*(ra.literal(json.dumps(v, ensure_ascii=False, separators=(",", ":"))) for v in options))

    # ---- one node per type ---------------------------------------------------------------------------

    def type_null(self, schema: dict, where: str) -> ra.Node:
        return ra.literal("null")

    def type_boolean(self, schema: dict, where: str) -> ra.Node:
        return ra.alt(ra.literal("true"), ra.literal("false"))

    def type_string(self, schema: dict, where: str) -> ra.Node:
        low, high = _count(schema, "minLength", where), _count(schema, "maxLength", where, None)
        if high is not None and high < low:
            raise SchemaError(f"{where}: maxLength {high} is below minLength {low} (unsatisfiable)")
        if "pattern" in schema or "format" in schema:
            if "minLength" in schema or "maxLength" in schema:
                raise SchemaError(f"{where}: minLength/maxLength together with pattern or format are not supported")
            if "pattern" in schema and "format" in schema:
                raise SchemaError(f"{where}: pattern together with format is not supported")
            if "format" in schema:
                if schema["format"] not in FORMATS:
                    raise SchemaError(f"{where}: format {schema['format']!r} is not supported "
                                      f"(supported: {', '.join(FORMATS)})")
                inner = parse_regex(FORMATS[schema["format"]])
            else:
                inner = self.pattern(schema["pattern"], where)
            return ra.seq(ra.literal('"'), escape_in_string(inner), ra.literal('"'))
        return self.string(low, high)

    def pattern(self, pattern: Any, where: str) -> ra.Node:
        """A JSON-schema pattern searches the string: unanchored ends match anything."""
        try:
            inner = parse_regex(pattern, param="json_schema")
        except RegexError as exc:
            raise SchemaError(f"{where}: pattern: {exc}") from None
        anything = ra.repeat(ra.complement(ra.Chars(())), 0, None)
        before = ra.EMPTY if pattern.startswith("^") else anything
        after = ra.EMPTY if pattern.endswith("$") and not pattern.endswith("\\$") else anything
        return ra.seq(before, inner, after)

    def type_integer(self, schema: dict, where: str) -> ra.Node:
        lo, lo_x, hi, hi_x = _bounds(schema, where, integer=True)
        if lo is None and hi is None:
            return numbers.INTEGER
        lo = None if lo is None else (math.floor(lo) + 1 if lo_x else math.ceil(lo))
        hi = None if hi is None else (math.ceil(hi) - 1 if hi_x else math.floor(hi))
        if lo is not None and hi is not None and hi < lo:
            raise SchemaError(f"{where}: no integer lies within the bounds (unsatisfiable)")
        return numbers.integer_range(lo, hi)

    def type_number(self, schema: dict, where: str) -> ra.Node:
        lo, lo_x, hi, hi_x = _bounds(schema, where, integer=False)
        if lo is None and hi is None:
            return numbers.NUMBER
        if lo is not None and hi is not None and (hi < lo or (hi == lo and (lo_x or hi_x))):
            raise SchemaError(f"{where}: no number lies within the bounds (unsatisfiable)")
        return numbers.number_range(lo, lo_x, hi, hi_x)

    def type_object(self, schema: dict, where: str) -> ra.Node:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        if not isinstance(properties, dict) or not isinstance(required, list):
            raise SchemaError(f"{where}: properties must be an object and required a list")
        missing = [name for name in required if name not in properties]
        additional_schema = schema.get("additionalProperties", "properties" not in schema)
        if missing and additional_schema is False:
            raise SchemaError(f"{where}: required property {missing[0]!r} is not among the properties "
                              f"and additionalProperties is false (unsatisfiable)")
        if missing:
            raise SchemaError(f"{where}: required property {missing[0]!r} without a schema in properties "
                              f"is not supported")
        members = []
        for name, sub in properties.items():
            value = self.convert(sub, f"{where}/properties/{name}")
            if ra.is_nothing(value):
                if name in required:
                    raise SchemaError(f"{where}: required property {name!r} allows no value (unsatisfiable)")
                continue
            members.append((name, value, name in required))
        additional = None if additional_schema is False else self.convert(additional_schema,
                                                                           f"{where}/additionalProperties")
        return self.obj(members, None if additional is not None and ra.is_nothing(additional) else additional)

    def type_array(self, schema: dict, where: str) -> ra.Node:
        low, high = _count(schema, "minItems", where), _count(schema, "maxItems", where, None)
        if high is not None and high < low:
            raise SchemaError(f"{where}: maxItems {high} is below minItems {low} (unsatisfiable)")
        prefix = schema.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise SchemaError(f"{where}: prefixItems must be a list of schemas")
        prefix_nodes = [self.convert(s, f"{where}/prefixItems/{i}") for i, s in enumerate(prefix)]
        item = self.convert(schema.get("items", True), f"{where}/items")
        if ra.is_nothing(item) and not prefix and low > 0:
            raise SchemaError(f"{where}: items allows no value but minItems is {low} (unsatisfiable)")
        if ra.is_nothing(item) and not prefix:
            return ra.seq(ra.literal("["), self.ws, ra.literal("]"))
        return self.array(item, low, high, prefix_nodes)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "?")


def _count(schema: dict, key: str, where: str, default: int | None = 0) -> int | None:
    value = schema.get(key, default)
    if value is not default and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise SchemaError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return value


def _bounds(schema: dict, where: str, *, integer: bool) -> tuple[Any, bool, Any, bool]:
    """(low, low exclusive, high, high exclusive); number bounds must be integers (a regex writes them out)."""
    def read(key: str) -> Any:
        value = schema.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(f"{where}: {key} must be a number, got {value!r}")
        if not integer and value != int(value):
            raise SchemaError(f"{where}: {key} {value!r}: number bounds must be whole numbers")
        return int(value) if value == int(value) else value

    lo, lo_x, hi, hi_x = read("minimum"), read("exclusiveMinimum"), read("maximum"), read("exclusiveMaximum")
    low = (lo_x, True) if lo_x is not None and (lo is None or lo_x >= lo) else (lo, False)
    high = (hi_x, True) if hi_x is not None and (hi is None or hi_x <= hi) else (hi, False)
    return low[0], low[1], high[0], high[1]


def schema_to_regex(schema: Any, *, whitespace: ra.Node = WHITESPACE) -> ra.Node:
    """The JSON texts ``schema`` accepts (SchemaError naming what cannot be enforced)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"not valid JSON: {exc}") from None
    node = SchemaCompiler(schema, whitespace=whitespace).convert(schema)
    if ra.is_nothing(node):
        raise SchemaError("no JSON value satisfies the schema (unsatisfiable)")
    return node


def json_object_regex(*, whitespace: ra.Node = WHITESPACE) -> ra.Node:
    """Any JSON object, nested at most MAX_DEPTH levels."""
    return SchemaCompiler({}, whitespace=whitespace).any_object()
