"""Structured outputs on the real SmolLM2 (slow): every output of tests/data/structured_outputs_schemas.json
parses and validates against its schema, greedy and at temperature 0.8; regex, choice, lark grammar and
json_object outputs match; free requests in the same batch keep their greedy text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_params import StructuredOutputsParams

jsonschema = pytest.importorskip("jsonschema")
pytestmark = pytest.mark.slow

CASES = json.loads((Path(__file__).parent / "data" / "structured_outputs_schemas.json").read_text())
MAX_TOKENS = 400


@pytest.fixture(scope="module")
def llm():
    from pegboard import LLM

    return LLM("smollm2", max_num_seqs=64)


def chat(llm, prompts: list[str], params: list[SamplingParams]):
    return llm.chat([[{"role": "user", "content": p}] for p in prompts], params)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_every_schema_output_validates(llm, temperature):
    params = [SamplingParams(temperature=temperature, seed=i, max_tokens=MAX_TOKENS,
                             structured_outputs=StructuredOutputsParams(json=case["schema"]))
              for i, case in enumerate(CASES)]
    outputs = chat(llm, [f"{case['prompt']} Answer in JSON." for case in CASES], params)
    failures = []
    for case, output in zip(CASES, outputs):
        text = output.outputs[0].text
        try:
            jsonschema.validate(json.loads(text), case["schema"])
        except (ValueError, jsonschema.ValidationError) as exc:
            failures.append(f"{case['name']}: {output.outputs[0].finish_reason}: {text[:200]!r}: {exc}")
    assert not failures, "\n".join(failures)


OTHER_KINDS = [
    ("Give a US phone number.", StructuredOutputsParams(regex=r"\(\d{3}\) \d{3}-\d{4}"),
     lambda t: re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", t)),
    ("Is Paris in France?", StructuredOutputsParams(choice=["yes", "no"]), lambda t: t in ("yes", "no")),
    ("Write a sum of small numbers.", StructuredOutputsParams(
        grammar='start: NUMBER (" + " NUMBER)* " = " NUMBER\n%import common.INT -> NUMBER'),
     lambda t: re.fullmatch(r"\d+( \+ \d+)* = \d+", t)),
    ("Give a JSON object with a name.", StructuredOutputsParams(json_object=True),
     lambda t: isinstance(json.loads(t), dict)),
]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_regex_choice_grammar_and_json_object_outputs_match(llm, temperature):
    params = [SamplingParams(temperature=temperature, seed=3, max_tokens=MAX_TOKENS, structured_outputs=so)
              for _, so, _ in OTHER_KINDS]
    outputs = chat(llm, [prompt for prompt, _, _ in OTHER_KINDS], params)
    for (prompt, _, check), output in zip(OTHER_KINDS, outputs):
        assert check(output.outputs[0].text), (prompt, output.outputs[0].text)


def test_free_requests_keep_their_greedy_text_beside_constrained_ones(llm):
    free_prompts = ["The capital of France is", "Write a haiku about the sea.", "1, 2, 3,"]
    free = SamplingParams(temperature=0.0, max_tokens=32)
    alone = [o.outputs[0].text for o in chat(llm, free_prompts, [free] * len(free_prompts))]
    constrained = [SamplingParams(temperature=0.8, seed=i, max_tokens=MAX_TOKENS,
                                  structured_outputs=StructuredOutputsParams(json=case["schema"]))
                   for i, case in enumerate(CASES[:8])]
    mixed = chat(llm, free_prompts + [c["prompt"] for c in CASES[:8]], [free] * len(free_prompts) + constrained)
    assert [o.outputs[0].text for o in mixed[:len(free_prompts)]] == alone
