"""Bad input gets a clear error naming what is wrong (the loaders' own errors are in test_loaders.py)."""

from __future__ import annotations

import json

import pytest

from pegboard import LLM, SamplingParams
from pegboard.core.errors import (InvalidParameterError, ModelNotFoundError, PromptTooLongError,
                                  UnsupportedModelError)


@pytest.fixture(scope="module")
def tiny_llm(tiny_llama_dir) -> LLM:
    return LLM(str(tiny_llama_dir), load_format="dummy", skip_tokenizer_init=True, max_model_len=64,
               device="cpu")


def test_unknown_model_names_the_sources_tried():
    with pytest.raises(ModelNotFoundError, match="'no-such-model'.*sources tried: local, packaged, hf-hub"):
        LLM("no-such-model")


def test_missing_local_path():
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        LLM("/nonexistent/model-dir")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="architecture 'GPT2LMHeadModel' is not supported.*Llama"):
        LLM(str(tmp_path), load_format="dummy", skip_tokenizer_init=True)


def test_unsupported_rope_type(tmp_path, tiny_llama_dir):
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "dynamic", "factor": 2.0}
    config.pop("rope_parameters", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="rope type 'dynamic' is not supported"):
        LLM(str(tmp_path), load_format="dummy", skip_tokenizer_init=True)


def test_prompt_too_long(tiny_llm):
    with pytest.raises(PromptTooLongError, match="64 tokens but max_model_len is 64"):
        tiny_llm.generate([list(range(64))], use_tqdm=False)
    # nothing of the failed call stays queued
    assert not tiny_llm.engine.has_unfinished_requests()


def test_max_model_len_beyond_the_model(tiny_llama_dir):
    with pytest.raises(InvalidParameterError, match="exceeds the model's context length 256"):
        LLM(str(tiny_llama_dir), load_format="dummy", skip_tokenizer_init=True, max_model_len=4096)


def test_bad_prompts(tiny_llm):
    with pytest.raises(InvalidParameterError, match="empty"):
        tiny_llm.generate([[]], use_tqdm=False)
    with pytest.raises(InvalidParameterError, match=r"integers in \[0, 256\)"):
        tiny_llm.generate([[1, 999]], use_tqdm=False)
    with pytest.raises(InvalidParameterError, match="no tokenizer"):
        tiny_llm.generate(["text needs a tokenizer"], use_tqdm=False)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", -1.0, "temperature must be >= 0"),
    ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
    ("top_k", -5, "top_k must be -1"),
    ("min_p", 1.5, r"min_p must be in \[0, 1\]"),
    ("n", 0, "n must be an integer >= 1"),
    ("max_tokens", 0, "max_tokens must be an integer >= 1"),
    ("presence_penalty", 3.0, r"presence_penalty must be in \[-2, 2\]"),
    ("repetition_penalty", 0.0, "repetition_penalty must be > 0"),
    ("logprobs", 50, r"logprobs must be an integer in \[0, 20\]"),
    ("stop", [""], "stop must be non-empty strings"),
    ("seed", "abc", "seed must be an integer"),
    ("logit_bias", {5: 500}, r"logit_bias values must be in \[-100, 100\]"),
])
def test_invalid_sampling_params(field, value, message):
    with pytest.raises(InvalidParameterError, match=message) as info:
        SamplingParams(**{field: value})
    assert info.value.param == field


def test_min_tokens_above_max_tokens():
    with pytest.raises(InvalidParameterError, match=r"min_tokens \(9\) must not exceed max_tokens \(4\)"):
        SamplingParams(min_tokens=9, max_tokens=4)
