"""A chat request's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` as a ToolPlan: the functions the chat
template gets, and how the output becomes tool calls.

``"required"`` and a named function constrain the output with a JSON schema (grammar kind ``json_schema``),
so they work with any model and any template: required, an array of calls ``[{"name": N, "parameters": {...}}]``
(at most one with ``parallel_tool_calls: false``), as vLLM builds it; named, that function's parameters. ``"auto"``
leaves the output free and finds calls in it with the server's tool parser (``--enable-auto-tool-choice
--tool-call-parser NAME``). ``"none"`` gives the template the tools and parses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pegboard.core.errors import invalid
from pegboard.core.grammar_processor import GRAMMAR_FIELD

if TYPE_CHECKING:
    from pegboard.server.schemas import ChatBody

NO_PARAMETERS = {"type": "object", "properties": {}}  # a function defined without parameters takes none
Mode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class ToolPlan:
    """What a chat request's tools ask for: the template's ``tools`` and how to read the output."""

    mode: Mode = "none"
    tools: tuple[dict[str, Any], ...] = ()  # as the request gave them, for the chat template
    name: str | None = None  # the named function
    parallel: bool = True  # more than one call allowed (parallel_tool_calls)

    @property
    def functions(self) -> list[dict[str, Any]]:
        """The function definitions (name, description, parameters) of the tools."""
        return [tool["function"] for tool in self.tools]

    @property
    def must_reach_model(self) -> bool:
        """Whether the tools do anything only through the chat template (auto, none)."""
        return bool(self.tools) and self.mode in ("auto", "none")

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema the output must follow (None: unconstrained)."""
        if self.mode == "named":
            return parameters_of(next(f for f in self.functions if f["name"] == self.name))
        if self.mode == "required":
            return required_schema(self.functions, self.parallel)
        return None


def tool_plan(body: ChatBody, tool_parser: str | None) -> ToolPlan:
    """The request's ToolPlan; a choice the server cannot honour is a 400 naming the field (a template that
    does not read ``tools`` is checked when it renders: server/tokenize.py)."""
    choice = body.tool_choice
    if choice is None:  # OpenAI's default: auto when there are tools
        choice = "auto" if body.tools else "none"
    if not body.tools:
        if choice != "none" and choice != "auto":
            raise invalid("tool_choice", "needs 'tools' (the functions it may call)")
        if body.parallel_tool_calls is not None:
            raise invalid("parallel_tool_calls", "is only allowed when 'tools' are given")
        return ToolPlan()
    tools = tuple(tool.model_dump(exclude_none=True) for tool in body.tools)
    names = [tool["function"]["name"] for tool in tools]
    if len(set(names)) < len(names):
        raise invalid("tools", "name the same function twice")
    parallel = body.parallel_tool_calls is not False
    if not isinstance(choice, str):
        if choice.function.name not in names:
            raise invalid("tool_choice", f"names function {choice.function.name!r}, which 'tools' does not define")
        return ToolPlan("named", tools, choice.function.name, parallel)
    if choice == "auto" and tool_parser is None:
        raise invalid("tool_choice", "\"auto\" with tools needs the server started with --enable-auto-tool-choice "
                                     "and --tool-call-parser NAME")
    return ToolPlan(choice, tools, None, parallel)


def tool_grammar(plan: ToolPlan, grammars: frozenset[str], other: dict[str, Any]) -> dict[str, Any]:
    """``{"grammar": ...}`` of a required or named tool choice ({} otherwise); 400 when no plugin registers
    ``json_schema`` or the request has another constraint too."""
    schema = plan.schema
    if schema is None:
        return {}
    if other:
        raise invalid("tool_choice", f"{_choice(plan)} cannot be combined with response_format or structured "
                                     "outputs (one constraint per request)")
    if "json_schema" not in grammars:
        raise invalid("tool_choice", f"{_choice(plan)} needs a grammar plugin that registers 'json_schema' "
                                     f"(register_grammars); loaded grammars: {', '.join(sorted(grammars)) or 'none'}")
    return {GRAMMAR_FIELD: {"kind": "json_schema", "spec": schema}}


def parameters_of(function: dict[str, Any]) -> dict[str, Any]:
    """A function's parameters schema (none given: an object without properties)."""
    return function.get("parameters") or NO_PARAMETERS


def required_schema(functions: list[dict[str, Any]], parallel: bool = True) -> dict[str, Any]:
    """An array of one or more calls ``{"name": one of the functions, "parameters": its schema}`` (at most one
    without ``parallel``); the functions' ``$defs`` are gathered at the top, where their ``$ref``s point."""
    defs: dict[str, Any] = {}
    calls = []
    for function in functions:
        parameters = dict(parameters_of(function))
        for name, definition in parameters.pop("$defs", {}).items():
            if defs.setdefault(name, definition) != definition:
                raise invalid("tools", f"define '$defs' {name!r} twice, differently")
        calls.append({"properties": {"name": {"type": "string", "enum": [function["name"]]},
                                     "parameters": parameters},
                      "required": ["name", "parameters"]})
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": calls}}
    if not parallel:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


def _choice(plan: ToolPlan) -> str:
    return f"{{'type': 'function', 'function': {{'name': {plan.name!r}}}}}" if plan.mode == "named" else \
        '"required"'
