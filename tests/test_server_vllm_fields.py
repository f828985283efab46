"""Every request field vLLM takes on /v1/completions and /v1/chat/completions is honoured or refused with a 400
naming it, never dropped: the test walks vLLM's field lists (below, as data) against a running server.

Sources, read 2026-12-01 from github.com/vllm-project/vllm at commit 002032ee2b18e1f7bd924ec47b62504ba3866063:
``CompletionRequest`` in vllm/entrypoints/openai/completion/protocol.py and ``ChatCompletionRequest`` in
vllm/entrypoints/openai/chat_completion/protocol.py, in their order; then the fields earlier vLLM releases took
(vllm/entrypoints/openai/protocol.py before the split: ``best_of``, ``guided_*``, ``structural_tag``,
``logits_processors``) and OpenAI's older chat fields (``functions``, ``function_call``, ``audio``, ``modalities``).

A field is sent with a value that asks for something (not its default). "refused": the answer is a 400 whose
``param`` names the field. "honoured": a 200 that differs from the same request without the field, either in its
SamplingParams (the engine's own tests hold those) or in the HTTP answer itself. "metadata": ``user``, which by
OpenAI's definition names the end user and changes nothing.
"""

from __future__ import annotations

import json
import re
import shutil

import httpx2
import pytest

from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.config import EngineConfig
from pegboard.core.hookspecs import hookimpl
from pegboard.server.app import build_app
from pegboard.server.protocol import parse_chat_request, parse_completion_request
from pegboard.server.uvicorn_server import serving_in_thread
from tiny_server import board_with_fake_grammars

H, R, M = "honoured", "refused", "metadata"
FORCED = ord("Q") - ord("!")  # the fake grammar's one allowed token (the byte-level vocabulary starts at "!")
KINDS = ("json_schema", "json_object", "regex", "choice", "grammar", "structural_tag")
TOOLS = [{"type": "function", "function": {"name": "f"}}]
TEMPLATE = ("{% for d in documents or [] %}[{{ d['text'] }}]{% endfor %}{% if greeting %}{{ greeting }} {% endif %}"
            "{% for t in tools or [] %}<{{ t['function']['name'] }}>{% endfor %}"
            "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")

# (outcome, value, fields added to both the request and the one it is compared with)
SHARED = {
    "model": (H, "tiny-alias", {}), "frequency_penalty": (H, 1.0, {}), "logit_bias": (H, {"5": 10.0}, {}),
    "max_tokens": (H, 2, {}), "n": (H, 2, {}), "presence_penalty": (H, 1.0, {}), "seed": (H, 7, {}),
    "stop": (H, ["zz"], {}), "stream": (H, True, {}),
    "stream_options": (H, {"include_usage": True, "continuous_usage_stats": True}, {"stream": True}),
    "temperature": (H, 0.7, {}), "top_p": (H, 0.5, {}), "user": (M, "someone", {}),
    "use_beam_search": (R, True, {}), "top_k": (H, 3, {}), "min_p": (H, 0.2, {}), "repetition_penalty": (H, 1.3, {}),
    "watermarking": (R, True, {}), "length_penalty": (R, 0.5, {}), "stop_token_ids": (H, [9], {}),
    "include_stop_str_in_output": (H, True, {}), "ignore_eos": (H, True, {}), "min_tokens": (H, 2, {}),
    "skip_special_tokens": (H, False, {}), "spaces_between_special_tokens": (R, False, {}),
    "truncate_prompt_tokens": (H, 2, {}), "truncation_side": (H, "right", {"truncate_prompt_tokens": 2}),
    "allowed_token_ids": (R, [1, 2], {}), "prompt_logprobs": (H, 1, {}), "logprob_token_ids": (R, [1], {}),
    "bad_words": (R, ["x"], {}), "structured_outputs": (H, {"regex": "Q+"}, {}), "priority": (R, 1, {}),
    "request_id": (H, "my-request", {}), "session_id": (R, "s", {}), "return_token_ids": (H, True, {}),
    "routed_experts_prompt_start": (R, 1, {}), "return_token_offsets": (R, True, {}),
    "return_mm_kwargs": (R, False, {}), "cache_salt": (R, "salt", {}), "kv_transfer_params": (R, {"a": 1}, {}),
    "ec_transfer_params": (R, {"a": 1}, {}), "vllm_xargs": (R, {"a": 1}, {}),
    "repetition_detection": (R, {"max_pattern_size": 2}, {}), "thinking_token_budget": (R, 10, {}),
    "stream_interval": (R, 4, {}),
    # earlier vLLM releases
    "guided_json": (H, {"type": "object"}, {}), "guided_regex": (H, "Q+", {}), "guided_choice": (H, ["Q"], {}),
    "guided_grammar": (H, 'start: "Q"', {}), "structural_tag": (H, '{"structures": [], "triggers": []}', {}),
    "guided_decoding_backend": (R, "xgrammar", {}), "guided_whitespace_pattern": (R, " ", {}),
    "logits_processors": (R, ["my.processor"], {}),
}
COMPLETION_FIELDS = {
    **SHARED, "echo": (H, True, {}), "logprobs": (H, 2, {}), "suffix": (R, "tail", {}),
    "prompt_embeds": (R, "AAAA", {}), "add_special_tokens": (H, False, {"prompt": "abc"}),
    "response_format": (H, {"type": "json_object"}, {}),
    "return_tokens_as_token_ids": (H, True, {"logprobs": 1}), "best_of": (R, 2, {}),
}
CHAT_FIELDS = {
    **SHARED, "logprobs": (H, True, {}), "top_logprobs": (H, 2, {"logprobs": True}),
    "max_completion_tokens": (H, 2, {}),
    "response_format": (H, {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"},
                                                                   "strict": True}}, {}),
    "tools": (H, TOOLS, {}), "tool_choice": (H, "required", {"tools": TOOLS}),
    "parallel_tool_calls": (H, False, {"tools": TOOLS, "tool_choice": "required"}),
    "reasoning_effort": (R, "low", {}), "include_reasoning": (R, False, {}),
    "echo": (R, True, {}), "add_generation_prompt": (H, False, {}),
    "continue_final_message": (H, True, {"add_generation_prompt": False}), "add_special_tokens": (H, True, {}),
    "documents": (H, [{"text": "doc"}], {}), "chat_template": (R, "{{ messages }}", {}),
    "chat_template_kwargs": (H, {"greeting": "hi"}, {}), "media_io_kwargs": (R, {"image": {}}, {}),
    "mm_processor_kwargs": (R, {"a": 1}, {}), "return_tokens_as_token_ids": (H, True, {"logprobs": True}),
    "return_prompt_text": (H, True, {}),
    # OpenAI's older chat fields
    "functions": (R, [{"name": "f"}], {}), "function_call": (R, {"name": "f"}, {}), "audio": (R, {"voice": "x"}, {}),
    "modalities": (R, ["text", "audio"], {}),
}
COMPLETION = {"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0}


class ForcedMatcher:
    """Allows one token, then the end."""

    supports_bitmask = False

    def __init__(self) -> None:
        self.accepted: list[int] = []

    def allowed_token_ids(self) -> list[int]:
        return [] if self.accepted else [FORCED]

    def accept(self, token_id: int) -> None:
        self.accepted.append(token_id)

    def is_finished(self) -> bool:
        return bool(self.accepted)


class FakeGrammars:
    """Registers every grammar kind the server maps to, each forcing one token (a stand-in for a real backend)."""

    @hookimpl
    def register_grammars(self, register):
        class Forced:
            def validate(self, spec):
                pass

            def compile(self, spec, *, vocab_size, tokenizer=None):
                return ForcedMatcher()

        for kind in KINDS:
            register(kind, Forced())


@pytest.fixture(scope="module")
def bos_chat_model(tiny_chat_model, tmp_path_factory):
    """The tiny chat model whose tokenizer adds a BOS token (id 0), so add_special_tokens has something to do."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    path = shutil.copytree(tiny_chat_model, tmp_path_factory.mktemp("bos") / "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    bos = tokenizer.convert_ids_to_tokens(0)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                                             special_tokens=[(bos, 0)])
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(bos_chat_model):
    config = EngineConfig(model=str(bos_chat_model), load_format="dummy", device="cpu", max_num_seqs=8,
                          num_kv_blocks=256)
    engine = AsyncLLMEngine.from_config(config, board_with_fake_grammars(FakeGrammars()))
    try:
        app = build_app(engine, ("tiny", "tiny-alias"), chat_template=TEMPLATE, tool_call_parser="hermes")
        with serving_in_thread(app) as url, httpx2.Client(base_url=url, timeout=60) as client:
            yield client, app.state.pegboard
    finally:
        engine.shutdown()


def answer(client, path: str, body: dict) -> tuple[int, str]:
    """Status and body text, with what differs between any two requests (ids, timestamps) blanked."""
    response = client.post(path, json=body)
    text = re.sub(r'"created": ?\d+', "", response.text)
    return response.status_code, re.sub(r"(chat)?cmpl-[0-9a-f]{32}", "ID", text)


@pytest.mark.parametrize("path, fields, base, parse", [
    ("/v1/completions", COMPLETION_FIELDS, COMPLETION, parse_completion_request),
    ("/v1/chat/completions", CHAT_FIELDS, CHAT, parse_chat_request)], ids=["completions", "chat"])
def test_every_vllm_field_is_honoured_or_refused_by_name(server, path, fields, base, parse):
    client, state = server
    wrong = []
    for name, (outcome, value, shared) in fields.items():
        without = {**base, **shared}
        status, text = answer(client, path, {**without, name: value})
        if outcome == R:
            param = json.loads(text)["error"]["param"] if status == 400 else None
            if param != name:
                wrong.append(f"{name}: expected a 400 naming it, got {status} {text[:200]}")
            continue
        if status != 200:
            wrong.append(f"{name}: expected 200, got {status} {text[:200]}")
        elif outcome == H:
            params_differ = (parse({**without, name: value}, state.model, state.limits).params
                             != parse(without, state.model, state.limits).params)
            if not params_differ and text == answer(client, path, without)[1]:
                wrong.append(f"{name}: accepted and changed nothing")
    assert wrong == []


def test_the_server_still_answers_after_the_walk(server):
    client, _ = server
    assert client.get("/health").status_code == 200
    assert answer(client, "/v1/completions", COMPLETION)[0] == 200
