"""The optional structured-outputs backends (xgrammar, llguidance) behind --structured-outputs-config: each one
installed enforces the same constraints through the engine; one named but not installed is refused at start."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from pegboard.core.config import EngineConfig
from pegboard.core.errors import InvalidParameterError, PluginError
from pegboard.core.sampling_params import SamplingParams

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5}, "n": {"type": "integer"}},
          "required": ["name", "n"], "additionalProperties": False}


@pytest.mark.parametrize("config, message", [
    ({"backend": "outlines"}, "backend must be one of"),
    ({"backend": "auto", "disable_fallback": True}, "key 'disable_fallback' is not supported"),
    ("[1]", "must be a JSON object"),
])
def test_a_bad_structured_outputs_config_is_refused_by_name(config, message):
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        EngineConfig(structured_outputs_config=config)


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "guidance"])
def test_a_backend_named_but_not_installed_is_refused_at_start(tiny_chat_model, start_engine, monkeypatch, backend):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("xgrammar", "llguidance") else real(name, *a))
    with pytest.raises(PluginError, match=r"needs the \w+ package, which is not installed: pip install"):
        start_engine(tiny_chat_model, structured_outputs_config={"backend": backend})


def outputs(engine, kind, spec, count=4, **options):
    params = SamplingParams(temperature=1.0, max_tokens=120, extra={"grammar": {"kind": kind, "spec": spec}},
                            **options)
    for i in range(count):
        engine.add_request(str(i), "a", params.clone(seed=i))
    texts = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                assert output.outputs[0].finish_reason == "stop", output.outputs[0]
                texts[output.request_id] = engine.tokenizer.decode(output.outputs[0].token_ids[:-1])
    return list(texts.values())


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_an_installed_backend_enforces_the_constraints(tiny_chat_model, start_engine, backend):
    pytest.importorskip(backend)
    jsonschema = pytest.importorskip("jsonschema")
    engine = start_engine(tiny_chat_model, skip_tokenizer_init=False, structured_outputs_config={"backend": backend})
    quote = {engine.tokenizer.convert_tokens_to_ids(c): 4.0 for c in '"'}  # a random walk ends its strings
    for text in outputs(engine, "json_schema", SCHEMA, logit_bias=quote):
        # xgrammar 0.2.9 lets raw control characters other than \r and \n into strings, which RFC 8259 forbids
        jsonschema.validate(json.loads(text, strict=backend != "xgrammar"), SCHEMA)
    assert all(re.fullmatch(r"[a-c]{2}\d", t) for t in outputs(engine, "regex", r"[a-c]{2}\d"))
    assert all(t in ("yes", "no") for t in outputs(engine, "choice", ["yes", "no"]))
    with pytest.raises(InvalidParameterError, match=backend):
        engine.add_request("bad", "a", SamplingParams(extra={"grammar": {"kind": "regex", "spec": "a(b"}}))
