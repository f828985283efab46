"""The structured-output requests check_served.py sends, each with the check its output must pass: the JSON
schemas of schemas.json on chat (response_format json_schema, strict), and regex, choice, lark grammar and
json_object constraints on /v1/chat/completions and /v1/completions through vLLM's ``structured_outputs`` and
the older ``guided_*`` fields."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jsonschema
import lark

SCHEMAS = Path(__file__).with_name("schemas.json")
TEMPERATURES = (0.0, 0.8)
MAX_TOKENS = 400  # every bounded schema's longest output is well below this (the longest strings are 30 chars)
UNBOUNDED_MAX_TOKENS = 200  # where the constraint admits any length, a small model may repeat itself to the end


def max_tokens(unbounded: str | None) -> int:
    return UNBOUNDED_MAX_TOKENS if unbounded else MAX_TOKENS


@dataclass(frozen=True)
class Case:
    """One request: where it goes, its OpenAI client arguments, and what its text must satisfy."""

    category: str  # e.g. "json_schema/chat/response_format"
    name: str
    endpoint: str  # "chat" or "completions"
    prompt: str
    arguments: dict[str, Any]  # temperature, seed, max_tokens, response_format, extra_body
    check: Callable[[str], str | None]  # the text -> None when it passes, else why not
    unbounded: str | None = None  # why the constraint admits outputs of any length (truncation is then no bug)
    spec: Any = field(default=None, compare=False)


def check_schema(schema: dict) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        try:
            jsonschema.validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError) as exc:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return None
    return check


def check_regex(pattern: str) -> Callable[[str], str | None]:
    return lambda text: None if re.fullmatch(pattern, text) else f"does not fullmatch {pattern!r}"


def check_choice(choices: list[str]) -> Callable[[str], str | None]:
    return lambda text: None if text in choices else f"not one of {choices}"


def check_grammar(grammar: str) -> Callable[[str], str | None]:
    parser = lark.Lark(grammar, start="start", parser="earley", lexer="dynamic")

    def check(text: str) -> str | None:
        try:
            parser.parse(text)
        except lark.exceptions.LarkError as exc:
            return f"lark refuses it: {str(exc).splitlines()[0]}"
        return None
    return check


def check_json_object(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"not JSON: {exc}"
    return None if isinstance(value, dict) else f"JSON but a {type(value).__name__}, not an object"


def schema_cases(schemas: list[dict]) -> list[Case]:
    """Every schema on chat through response_format (strict), at each temperature."""
    return [Case("json_schema/chat/response_format", s["name"], "chat", f"{s['prompt']} Answer in JSON.",
                 {"temperature": t, "seed": i, "max_tokens": max_tokens(s.get("unbounded")),
                  "response_format": {"type": "json_schema",
                                      "json_schema": {"name": s["name"], "schema": s["schema"], "strict": True}}},
                 check_schema(s["schema"]), s.get("unbounded"), s["schema"])
            for i, s in enumerate(schemas) for t in TEMPERATURES]


REGEXES = [  # (prompt, pattern, why unbounded or None)
    ("Give a US phone number.", r"\(\d{3}\) \d{3}-\d{4}", None),
    ("Give a date in the form 2024-05-17.", r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", None),
    ("Name a colour and a number, like blue 7.", r"(red|green|blue|yellow) [1-9]\d?", None),
]
CHOICES = [
    ("Is Paris in France? Answer yes or no.", ["yes", "no"]),
    ("What is the opposite of hot?", ["cold", "warm", "lukewarm", "freezing cold"]),
]
GRAMMARS = [  # (prompt, lark grammar, why unbounded or None)
    ("Greet someone by name.", 'start: GREETING " " NAME "!"\nGREETING: "Hello" | "Hi" | "Good morning"\n'
                               "NAME: /[A-Z][a-z]{1,9}/", None),
    ("Write a sum of small numbers and its result.",
     'start: NUMBER (" + " NUMBER)* " = " NUMBER\nNUMBER: /[0-9]{1,3}/',
     "a sum of any number of terms"),
    ("Write a list of two or three fruits in brackets.",
     'start: "[" item ("," item)* "]"\nitem: "apple" | "pear" | "plum" | "fig"\n%import common.WS\n%ignore WS',
     "any number of items, and whitespace between any two symbols"),
    ("Write a small arithmetic expression with parentheses.",
     'start: expr\n?expr: atom | "(" expr OP expr ")"\natom: DIGIT\nOP: "+" | "-" | "*"\n%import common.DIGIT',
     None),
]


def completion_prompt(prompt: str) -> str:
    return f"Question: {prompt}\nAnswer: "


def _both_ways(kind: str, name: str, prompt: str, vllm: dict, older: dict, check, unbounded=None, spec=None,
               temperatures=TEMPERATURES) -> list[Case]:
    """One constraint via structured_outputs and via guided_*, on chat and completions, at each temperature."""
    cases = []
    for style, extra in (("structured_outputs", {"structured_outputs": vllm}), ("guided", older)):
        for endpoint in ("chat", "completions"):
            text = prompt if endpoint == "chat" else completion_prompt(prompt)
            for i, t in enumerate(temperatures):
                cases.append(Case(f"{kind}/{endpoint}/{style}", name, endpoint, text,
                                  {"temperature": t, "seed": 100 + i, "max_tokens": max_tokens(unbounded),
                                   "extra_body": extra},
                                  check, unbounded, spec))
    return cases


def other_kind_cases(schemas: list[dict], *, reduced: bool = False) -> list[Case]:
    """Regex, choice, grammar, json_object and (a few) schemas through the fields beside response_format."""
    regexes, choices, grammars, temperatures = ((REGEXES[:1], CHOICES[:1], GRAMMARS[:1], TEMPERATURES[1:])
                                                if reduced else (REGEXES, CHOICES, GRAMMARS, TEMPERATURES))
    cases = []
    for i, (prompt, pattern, unbounded) in enumerate(regexes):
        cases += _both_ways("regex", f"regex{i}", prompt, {"regex": pattern}, {"guided_regex": pattern},
                            check_regex(pattern), unbounded, pattern, temperatures)
    for i, (prompt, options) in enumerate(choices):
        cases += _both_ways("choice", f"choice{i}", prompt, {"choice": options}, {"guided_choice": options},
                            check_choice(options), None, options, temperatures)
    for i, (prompt, grammar, unbounded) in enumerate(grammars):
        cases += _both_ways("grammar", f"grammar{i}", prompt, {"grammar": grammar}, {"guided_grammar": grammar},
                            check_grammar(grammar), unbounded, grammar, temperatures)
    for s in schemas[:1] if reduced else schemas[:6]:
        cases += _both_ways("json_schema", s["name"], f"{s['prompt']} Answer in JSON.", {"json": s["schema"]},
                            {"guided_json": s["schema"]}, check_schema(s["schema"]), s.get("unbounded"), s["schema"],
                            temperatures)
    object_unbounded = "any JSON object: any number of properties, unbounded strings and numbers"
    prompt = "Give a JSON object with a name and an age, nothing else."
    for endpoint in ("chat", "completions"):
        text = prompt if endpoint == "chat" else completion_prompt(prompt)
        response_format = {"type": "json_object"}  # the client's completions.create has no such argument
        for style, extra in (("response_format", {"response_format": response_format} if endpoint == "chat" else
                              {"extra_body": {"response_format": response_format}}),
                             ("structured_outputs", {"extra_body": {"structured_outputs": {"json_object": True}}})):
            for i, t in enumerate(temperatures):
                cases.append(Case(f"json_object/{endpoint}/{style}", "json_object", endpoint, text,
                                  {"temperature": t, "seed": 200 + i, "max_tokens": max_tokens(object_unbounded),
                                   **extra},
                                  check_json_object, object_unbounded))
    return cases


FREE_PROMPTS = [
    "The capital of France is", "Write a haiku about the sea.", "1, 2, 3, 4,", "Name three primary colours.",
    "What is the boiling point of water?", "Tell me a fact about cats.", "Translate 'good morning' into French.",
    "Who wrote Romeo and Juliet?", "Give me a tip for sleeping well.", "What is 12 times 12?",
    "Describe the colour blue to someone.", "List the days of the week.", "Why is the sky blue?",
    "What do bees make?", "Write one sentence about autumn.", "Name a large animal.",
    "What is the largest ocean?", "How many minutes are in an hour?", "Suggest a name for a dog.",
    "What is the opposite of up?", "Write a short greeting for a birthday card.", "What language is spoken in Spain?",
    "Give an example of a fruit.", "What is the freezing point of water in Fahrenheit?", "Who painted the Mona Lisa?",
    "Write a rhyme with the word cat.", "What is the chemical symbol for gold?", "Name a musical instrument.",
    "How many legs does an insect have?", "What season comes after winter?", "Describe a rainy day in one line.",
    "What is the square root of 81?",
]
