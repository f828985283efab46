"""Hook families that shape decoding: logits processors (with their request lifecycle), grammars and
proposers. A throwaway plugin registers an object and the engine uses it; docs/hooks.md describes each
interface. The engine helpers ``start_engine`` and ``generate`` are fixtures of tests/conftest.py."""

from __future__ import annotations

import pytest
import torch

from pegboard.core.config import EngineConfig
from pegboard.core.errors import InvalidParameterError, PluginError
from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import load_board
from pegboard.core.request import Request
from pegboard.core.sampling_params import SamplingParams

PROMPTS = [[1, 5, 9, 13], [1, 200, 7]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


# ---- logits_processors -------------------------------------------------------------------------------


class BanTokens:
    """Bans the token ids a request lists in ``SamplingParams.extra["ban_token_ids"]``."""

    follows_tokens = False  # the bans do not depend on the tokens generated so far

    def __init__(self, *, vocab_size, device, config):
        self.vocab_size, self.device, self.config = vocab_size, device, config
        self.banned: dict[str, list[int]] = {}  # request id -> its banned tokens

    def add_request(self, request_id, params, prompt_token_ids):
        banned = params.extra.get("ban_token_ids")
        if banned:
            self.banned[request_id] = banned
        return bool(banned)  # follow only the requests that ban something

    def accept_tokens(self, request_id, token_ids):
        pass

    def remove_request(self, request_id):
        del self.banned[request_id]

    def apply(self, logits, request_ids):  # logits: [N, V], one row per request
        for row, request_id in enumerate(request_ids):
            logits[row, self.banned.get(request_id, [])] = float("-inf")
        return logits


class NoRepeat:
    """Forbids each request to repeat its previous token: it follows the tokens every request accepts."""

    follows_tokens = True

    def __init__(self, *, vocab_size, device, config):
        self.last: dict[str, int | None] = {}
        self.removed: list[str] = []

    def add_request(self, request_id, params, prompt_token_ids):
        if not params.extra.get("no_repeat"):
            return False
        self.last[request_id] = prompt_token_ids[-1]
        return True

    def accept_tokens(self, request_id, token_ids):
        self.last[request_id] = token_ids[-1]

    def remove_request(self, request_id):
        self.removed.append(request_id)
        del self.last[request_id]

    def apply(self, logits, request_ids):
        for row, request_id in enumerate(request_ids):
            if request_id in self.last:
                logits[row, self.last[request_id]] = float("-inf")
        return logits


def test_logits_processors_edit_the_logits_before_sampling(tiny_llama_dir, start_engine, generate):
    class Plugin:
        @hookimpl
        def register_logits_processors(self, register):
            register("ban-tokens", BanTokens)

    engine = start_engine(tiny_llama_dir, Plugin())
    [processor] = engine.executor.runner.logits_processors.processors[:1]  # the grammar processor comes last
    assert isinstance(processor, BanTokens) and processor.config is engine.config
    assert processor.vocab_size == 256
    [free_choice] = generate(engine, PROMPTS[:1])
    banned = free_choice[0]
    [constrained] = generate(engine, PROMPTS[:1], GREEDY.clone(extra={"ban_token_ids": [banned]}))
    assert constrained[0] != banned and banned not in constrained
    assert processor.banned == {}  # told when the request finished


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_a_processor_follows_each_request_from_added_to_removed(tiny_llama_dir, async_scheduling, start_engine, generate):
    """With async scheduling a step waits for the tokens a following processor needs; results are the same."""
    class Plugin:
        @hookimpl
        def register_logits_processors(self, register):
            register("no-repeat", NoRepeat)

    engine = start_engine(tiny_llama_dir, Plugin(), async_scheduling=async_scheduling)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, extra={"no_repeat": True})
    followed, free = generate(engine, [[5, 5, 5], [6, 6]], params), generate(engine, [[5, 5, 5]])
    assert all(a != b for tokens in followed for a, b in zip(tokens, tokens[1:]))
    assert followed[0][0] != 5 and free[0] != followed[0]
    [processor] = engine.executor.runner.logits_processors.processors[:1]  # the grammar processor comes last
    assert sorted(processor.removed) == ["0", "1"] and processor.last == {}
    assert engine.core._overlap == async_scheduling  # async scheduling stays on with a processor loaded


def test_a_processor_without_the_lifecycle_is_refused_by_name(tiny_llama_dir, start_engine):
    class Legacy:
        def __init__(self, *, vocab_size, device, config):
            pass

        def __call__(self, logits, requests):
            return logits

    class Plugin:
        @hookimpl
        def register_logits_processors(self, register):
            register("legacy", Legacy)

    with pytest.raises(PluginError, match="logits processor 'Legacy' lacks"):
        start_engine(tiny_llama_dir, Plugin())


# ---- grammars ----------------------------------------------------


class TokenChoiceGrammar:
    """Guided decoding to one of a few token-id sequences."""

    def validate(self, spec):
        if not spec:
            raise InvalidParameterError("token_choice needs at least one choice", param="grammar")

    def compile(self, spec, *, vocab_size, tokenizer=None):
        return TokenChoiceMatcher(spec)


class TokenChoiceMatcher:
    """Follows the tokens chosen so far through the candidate sequences."""

    supports_bitmask = False  # the processor packs allowed_token_ids() into the step's bitmask

    def __init__(self, choices: list[list[int]]):
        self.choices = choices
        self.accepted: list[int] = []

    def _alive(self) -> list[list[int]]:
        return [c for c in self.choices if c[:len(self.accepted)] == self.accepted]

    def allowed_token_ids(self) -> list[int]:
        return sorted({c[len(self.accepted)] for c in self._alive() if len(c) > len(self.accepted)})

    def accept(self, token_id: int) -> None:
        assert token_id in self.allowed_token_ids()
        self.accepted.append(token_id)

    def is_finished(self) -> bool:
        return self.accepted in self.choices


def test_grammars_mask_tokens_step_by_step():
    class Plugin:
        @hookimpl
        def register_grammars(self, register):
            register("token_choice", TokenChoiceGrammar())

    grammar = load_board(plugins=[Plugin()]).grammars.get("token_choice")
    choices = [[5, 6, 7], [5, 9], [11, 3]]
    matcher = grammar.compile(choices, vocab_size=32)
    generator = torch.Generator().manual_seed(0)
    while not matcher.is_finished():
        logits = torch.randn(32, generator=generator)
        mask = torch.full((32,), float("-inf"))
        mask[matcher.allowed_token_ids()] = 0
        matcher.accept(int(torch.argmax(logits + mask)))
    assert matcher.accepted in choices


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_a_grammar_constrains_a_request_through_the_engine(tiny_llama_dir, async_scheduling, start_engine, generate):
    class Plugin:
        @hookimpl
        def register_grammars(self, register):
            register("token_choice", TokenChoiceGrammar())

    engine = start_engine(tiny_llama_dir, Plugin(), async_scheduling=async_scheduling)
    choices = [[5, 6, 7], [5, 9], [11, 3]]
    eos = engine.eos_token_id
    for seed in range(4):
        params = SamplingParams(temperature=1.0, seed=seed, max_tokens=10,
                                extra={"grammar": {"kind": "token_choice", "spec": choices}})
        [tokens] = generate(engine, PROMPTS[:1], params)
        assert tokens[:-1] in choices and tokens[-1] == eos  # a choice, then the end once the grammar allows it
    [free] = generate(engine, PROMPTS[:1])  # requests without a grammar are not constrained
    assert free[:-1] not in choices


def test_a_grammar_kind_nothing_provides_is_refused_by_name(tiny_llama_dir, start_engine):
    engine = start_engine(tiny_llama_dir)
    with pytest.raises(InvalidParameterError, match="no grammar plugin is registered for kind 'xml_schema'"):
        engine.add_request("x", [1, 2], SamplingParams(extra={"grammar": {"kind": "xml_schema", "spec": "<a/>"}}))


# ---- proposers (see tests/test_speculative_decoding.py for the engine end to end) ----------------------------------------------------


class PromptLookupProposer:
    """Speculates that the tokens after the last earlier occurrence of the final n-gram come again."""

    def __init__(self, *, config, num_speculative_tokens, ngram=2):
        self.k, self.n = num_speculative_tokens, ngram

    def propose(self, requests):
        drafts = []
        for request in requests:
            tokens = request.all_token_ids
            tail = tokens[-self.n:]
            starts = [i for i in range(len(tokens) - self.n) if tokens[i:i + self.n] == tail]
            drafts.append(tokens[starts[-1] + self.n:][:self.k] if starts else [])
        return drafts


def test_proposers_draft_tokens_for_speculative_decoding():
    class Plugin:
        @hookimpl
        def register_proposers(self, register):
            register("prompt-lookup", PromptLookupProposer)

    factory = load_board(plugins=[Plugin()]).proposers.get("prompt-lookup")
    proposer = factory(config=EngineConfig(), num_speculative_tokens=3)
    repeating = Request("a", [4, 8, 15, 16, 23, 42, 4, 8], SamplingParams(), max_tokens=8)
    novel = Request("b", [1, 2, 3], SamplingParams(), max_tokens=8)
    assert proposer.propose([repeating, novel]) == [[15, 16, 23], []]




def test_a_guided_request_over_http_is_enforced_by_the_registered_grammar(tiny_chat_model, start_engine):
    """The server's guided_choice reaches the engine's built-in choice grammar: the text is one of the choices."""
    import httpx2

    from pegboard.core.async_engine import AsyncLLMEngine
    from pegboard.server.app import build_app
    from pegboard.server.uvicorn_server import serving_in_thread

    engine = AsyncLLMEngine(start_engine(tiny_chat_model, skip_tokenizer_init=False))
    end = engine.engine.tokenizer.decode([engine.engine.eos_token_id])  # the tiny vocabulary's EOS is a byte too
    choices = ["yes", "no", "maybe so"]
    body = {"model": "tiny", "prompt": "Well?", "max_tokens": 10, "temperature": 1.0, "guided_choice": choices}
    try:
        with serving_in_thread(build_app(engine, ("tiny",))) as url:
            for seed in range(3):
                answer = httpx2.post(f"{url}/v1/completions", json={**body, "seed": seed}, timeout=60).json()
                text = answer["choices"][0]["text"]
                assert text.removesuffix(end) in choices and answer["choices"][0]["finish_reason"] == "stop"
    finally:
        engine.shutdown()
