"""Structured outputs through the engine, on the tiny random Llama with its byte-level tokenizer (every output
is a random walk through what the grammar allows): each kind is enforced, a grammar compiles off the engine loop
while its request waits in its own state, and a bad spec is refused before the request queues."""

from __future__ import annotations

import json
import re
import threading

import pytest

from pegboard.core.errors import InvalidParameterError
from pegboard.core.hookspecs import hookimpl
from pegboard.core.request import RequestStatus
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_params import StructuredOutputsParams

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6}, "ok": {"type": "boolean"},
    "n": {"type": "integer", "minimum": -5, "maximum": 500}, "tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                                                   "maxItems": 3}},
    "required": ["name", "ok", "n"]}


@pytest.fixture
def engine(tiny_chat_model, start_engine):
    return start_engine(tiny_chat_model, skip_tokenizer_init=False)


def texts(engine, prompts, params) -> list[str]:
    """Run the prompts to the end; each output's text (the tiny vocabulary's EOS is a byte: it is cut off)."""
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params.clone(seed=i) if params.seed is None else params)
    done = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                completion = output.outputs[0]
                assert completion.finish_reason == "stop", completion
                done[output.request_id] = engine.tokenizer.decode(completion.token_ids[:-1])
    return [done[str(i)] for i in range(len(prompts))]


def guided(kind, spec, **options) -> SamplingParams:
    return SamplingParams(temperature=1.0, max_tokens=250, extra={"grammar": {"kind": kind, "spec": spec}}, **options)


def test_a_json_schema_is_enforced_on_every_sample(engine):
    for text in texts(engine, ["a"] * 8, guided("json_schema", SCHEMA)):
        jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("kind, spec, check", [
    ("regex", r"[a-z]{2,5}-\d{3}", lambda t: re.fullmatch(r"[a-z]{2,5}-\d{3}", t)),
    ("choice", ["yes", "no", "maybe so"], lambda t: t in ("yes", "no", "maybe so")),
    ("grammar", 'start: "(" NUMBER ("+" NUMBER)* ")"\n%import common.INT -> NUMBER',
     lambda t: re.fullmatch(r"\(\d+(\+\d+)*\)", t)),
])
def test_each_kind_is_enforced(engine, kind, spec, check):
    for text in texts(engine, ["a"] * 6, guided(kind, spec)):
        assert check(text), text


def test_json_object_is_enforced(engine):
    closing = {engine.tokenizer.convert_tokens_to_ids(c): 6.0 for c in '"}]'}  # a random walk ends its strings
    for text in texts(engine, ["a"] * 6, guided("json_object", {}, logit_bias=closing)):
        assert isinstance(json.loads(text), dict), text


def test_offline_structured_outputs_params_reach_the_grammar(engine):
    params = SamplingParams(temperature=1.0, max_tokens=50, structured_outputs=StructuredOutputsParams(
        choice=["red", "green"]))
    assert all(t in ("red", "green") for t in texts(engine, ["a"] * 4, params))


def test_free_requests_keep_their_greedy_tokens_beside_guided_ones(engine, generate):
    free = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = generate(engine, [[5, 6, 7], [9, 9]], free)
    engine.add_request("g", "a", guided("json_schema", SCHEMA))
    together = generate(engine, [[5, 6, 7], [9, 9]], free)
    assert together == alone


@pytest.mark.parametrize("kind, spec, message", [
    ("json_schema", {"type": "object", "patternProperties": {}}, "patternProperties"),
    ("regex", "a(?!b)", "lookaround"),
    ("grammar", "start: (", "lark could not load it"),
    ("choice", [], "non-empty list"),
    ("json_schema", {"type": "integer", "minimum": 3, "maximum": 1}, "unsatisfiable"),
])
def test_a_bad_spec_is_refused_when_the_request_is_added(engine, kind, spec, message):
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        engine.add_request("bad", "a", guided(kind, spec))
    assert not engine.has_unfinished_requests()


class SlowGrammar:
    """Compiles only once the test lets it (``release``); a spec of "fail" raises instead."""

    def __init__(self):
        self.release = threading.Event()

    def validate(self, spec):
        pass

    def compile(self, spec, *, vocab_size, tokenizer=None):
        assert self.release.wait(30)
        if spec == "fail":
            raise InvalidParameterError("this spec fails to compile", param="grammar")
        from pegboard.plugins.structured_outputs.grammars import ChoiceGrammar

        return ChoiceGrammar().compile([spec], vocab_size=vocab_size, tokenizer=tokenizer)


@pytest.fixture
def slow(tiny_chat_model, start_engine):
    grammar = SlowGrammar()

    class Plugin:
        @hookimpl
        def register_grammars(self, register):
            register("slow", grammar)

    return grammar, start_engine(tiny_chat_model, Plugin(), skip_tokenizer_init=False)


def test_a_compiling_grammar_does_not_stall_other_requests(slow):
    grammar, engine = slow
    engine.add_request("guided", "a", guided("slow", "ok"))
    engine.add_request("free", [5, 6], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    finished = set()
    for _ in range(20):  # the free request runs to its end while the grammar compiles
        finished |= {o.request_id for o in engine.step() if o.finished}
    assert finished == {"free"}
    [waiting] = [r for r, _ in engine.core.grammar_compiler._waiting.values()]
    assert waiting.status is RequestStatus.WAITING_FOR_GRAMMAR and engine.core.gauges().num_waiting == 1
    grammar.release.set()
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.finished]
    assert engine.tokenizer.decode(outputs[0].outputs[0].token_ids[:-1]) == "ok"


def test_a_grammar_that_fails_to_compile_ends_its_request_with_the_error(slow):
    grammar, engine = slow
    grammar.release.set()
    engine.add_request("guided", "a", guided("slow", "fail"))
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.finished]
    assert outputs[0].outputs[0].finish_reason == "error" and "this spec fails to compile" in outputs[0].error


def test_a_request_aborted_while_its_grammar_compiles_is_gone(slow):
    grammar, engine = slow
    engine.add_request("guided", "a", guided("slow", "ok"))
    engine.step()
    engine.abort_request("guided")
    assert not engine.has_unfinished_requests()
    grammar.release.set()
    assert engine.step() == []


def test_followed_on_the_device_guided_steps_never_wait_for_tokens_and_sample_what_the_host_path_does(
        tiny_chat_model, start_engine, monkeypatch):
    """The CUDA path (grammar states on the device, walked after sampling) forced on here: the same seeded texts
    as the host path, every one valid, and no guided request ever marked as waiting for its tokens on the host."""
    params = guided("json_schema", SCHEMA, seed=3)
    host = texts(start_engine(tiny_chat_model, skip_tokenizer_init=False), ["a", "bc", "a"], params)
    monkeypatch.setattr("pegboard.core.model_runner.follows_grammars_on_device", lambda device: True)
    engine = start_engine(tiny_chat_model, skip_tokenizer_init=False, async_scheduling=True)
    runner = engine.executor.runner
    waited = []
    step = engine.step
    monkeypatch.setattr(engine, "step", lambda: (waited.append(bool(runner._wants_host_tokens)), step())[1])
    on_device = texts(engine, ["a", "bc", "a"], params)
    assert runner._device_grammar is not None and not any(waited)
    assert on_device == host
    for text in on_device:
        jsonschema.validate(json.loads(text), SCHEMA)
