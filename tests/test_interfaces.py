"""Every registered object is checked against its family's Protocol at start-up: what lacks a member is refused,
naming the object, the member, the interface and the plugin; a declared capability needs its wider interface."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pegboard.core.attention import AttentionBackend, CudaGraphAttentionBackend
from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.errors import InvalidParameterError, PluginError, PluginLoadError
from pegboard.core.hookspecs import hookimpl
from pegboard.core.interfaces import (BlockAllocator, CausalLM, Executor, LaunchingExecutor, Proposer, Sampler,
                                      members, missing_members)
from pegboard.core.logits_processors import LogitsProcessor
from pegboard.core.model_files import ModelLoader, ModelSource
from pegboard.core.plugins import load_board
from pegboard.core.quantization import QuantizationScheme
from pegboard.core.sampling_params import SamplingParams
from pegboard.plugins.default_sampler import make_sampler
from pegboard.plugins.torch_attention import torch_attention_backend
from pegboard.plugins.uniproc_executor import UniprocExecutor


def start_engine(model, plugin: object, **options) -> LLMEngine:
    options = {"load_format": "dummy", "skip_tokenizer_init": True, "num_kv_blocks": 32, "device": "cpu",
               **options}
    return LLMEngine(EngineConfig(model=str(model), **options), board=load_board(plugins=[plugin]))


def registering(hook: str, name: str, obj: object) -> object:
    """A throwaway plugin (named ``Plugin``) whose discovery hook ``hook`` registers ``obj`` under ``name``."""
    def register_it(self, register):
        register(name, obj)

    register_it.__name__ = hook
    return type("Plugin", (), {hook: hookimpl(register_it)})()


# ---- what the engine builds ------------------------------------------------------------------------------------


def test_the_built_ins_have_their_interfaces_and_declare_their_capabilities(tiny_llama_dir):
    engine = start_engine(tiny_llama_dir, object(), speculative_model="[ngram]", num_speculative_tokens=2)
    core, runner = engine.core, engine.executor.runner
    built = [(core.executor, LaunchingExecutor), (core.block_manager, BlockAllocator), (core.proposer, Proposer),
             (runner.sampler, Sampler), (runner.attention, AttentionBackend), (runner.model, CausalLM),
             (runner.model.layers[0].self_attn.qkv_proj.scheme, QuantizationScheme)]
    for obj, protocol in built:
        assert missing_members(obj, protocol) == [], (obj, protocol)
    assert core.executor.supports_launch and not runner.attention.supports_cuda_graphs
    board = engine.board
    for registry, protocol in [(board.model_sources, ModelSource), (board.model_loaders, ModelLoader)]:
        assert all(isinstance(obj, protocol) for _, obj in registry.items())


class Bare:
    """An executor of an older plugin: no declared capabilities."""

    num_kv_blocks = 32

    def __init__(self, config, board, files, loader, hf_config, max_model_len):
        pass

    def execute(self, scheduled):
        raise AssertionError("never called")


class Launching(Bare):
    supports_launch = True  # ... but no launch() nor queues_work


def test_an_executor_without_its_capabilities_declared_is_refused_by_name(tiny_llama_dir):
    with pytest.raises(PluginError, match=r"^executor 'Bare' lacks supports_launch of the Executor interface "
                                          r"\(registered as 'bare' by plugin 'Plugin'\)$"):
        start_engine(tiny_llama_dir, registering("register_executors", "bare", Bare), executor="bare")


def test_a_capability_declared_needs_the_members_that_go_with_it(tiny_llama_dir):
    with pytest.raises(PluginError, match=r"executor 'Launching' declares supports_launch but lacks queues_work, "
                                          r"launch of the LaunchingExecutor interface"):
        start_engine(tiny_llama_dir, registering("register_executors", "launching", Launching),
                     executor="launching")


class SyncExecutor(UniprocExecutor):
    """The in-process executor, declaring that it cannot launch: every step runs through execute()."""

    supports_launch = False

    def launch(self, scheduled):
        raise AssertionError("an executor that does not support launch is never asked to")


def test_an_executor_that_does_not_launch_runs_synchronously_and_refuses_async_by_name(tiny_llama_dir):
    plugin = registering("register_executors", "sync", SyncExecutor)
    engine = start_engine(tiny_llama_dir, plugin, executor="sync")
    assert engine.core._overlap is False
    engine.add_request("a", [1, 2, 3], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    with pytest.raises(InvalidParameterError, match="async_scheduling needs an executor that launches steps"):
        start_engine(tiny_llama_dir, plugin, executor="sync", async_scheduling=True)  # asked for: never ignored


class GraphlessAttention:
    """The torch backend claiming CUDA graphs without the decode_metadata() they need."""

    name = "graphless"
    supports_cuda_graphs = True

    def __init__(self, spec, *, num_heads, scale, device):
        self.inner = torch_attention_backend(spec, num_heads=num_heads, scale=scale, device=device)

    def build_metadata(self, layout):
        return self.inner.build_metadata(layout)

    def forward(self, layer, q, k, v, metadata):
        return self.inner.forward(layer, q, k, v, metadata)


def test_an_attention_backend_claiming_cuda_graphs_needs_decode_metadata(tiny_llama_dir):
    with pytest.raises(PluginError, match="attention backend 'GraphlessAttention' declares supports_cuda_graphs but "
                                          "lacks decode_metadata of the CudaGraphAttentionBackend interface"):
        start_engine(tiny_llama_dir, registering("register_attention_backends", "graphless", GraphlessAttention),
                     attention_backend="graphless")
    assert members(CudaGraphAttentionBackend)[-1] == "decode_metadata"


def test_a_sampler_and_a_model_are_checked_when_built(tiny_llama_dir, tmp_path):
    def forgetful(vocab_size, device, seed):  # a sampler that cannot free a request's state
        sampler = make_sampler(vocab_size, device, seed)
        return type("Forgetful", (), {"sample": sampler.sample})()

    with pytest.raises(PluginError, match=r"sampler 'Forgetful' lacks free of the Sampler interface "
                                          r"\(registered as 'forgetful' by plugin 'Plugin'\)"):
        start_engine(tiny_llama_dir, registering("register_samplers", "forgetful", forgetful), sampler="forgetful")

    class Headless(torch.nn.Module):
        """A decoder without an LM head."""

        def __init__(self, config, *, max_positions):
            super().__init__()
            self.layers = torch.nn.ModuleList()

        def forward(self, input_ids, positions, attn):
            raise AssertionError("never called")

        def load_weights(self, weights):
            raise AssertionError("never called")

    model_dir = shutil.copytree(tiny_llama_dir, tmp_path / "headless")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "architectures": ["HeadlessLlama"]}))
    with pytest.raises(PluginError, match="model architecture 'Headless' lacks compute_logits of the CausalLM"):
        start_engine(model_dir, registering("register_model_architectures", "HeadlessLlama", Headless))


# ---- what a plugin registers as it is ----------------------------------------------------------------------------


class Unranked:
    """A model source of an older plugin: no priority."""

    def resolve(self, model, *, revision=None):
        return None


def test_an_object_registered_as_it_is_is_checked_when_registered():
    board = load_board(plugins=[registering("register_model_sources", "unranked", Unranked())])
    [failure] = board.failures
    assert failure.name == "Plugin" and "unranked" not in board.model_sources
    assert failure.error == ("PluginError: model source 'Unranked' lacks priority of the ModelSource interface "
                             "(registered as 'unranked' by plugin 'Plugin')")
    with pytest.raises(PluginLoadError, match="model source 'Unranked' lacks priority"):
        load_board(plugins=[registering("register_model_sources", "unranked", Unranked())], strict=True)


def test_a_grammar_without_compile_is_refused():
    class Regex:
        def matcher(self, spec):
            return None

    board = load_board(plugins=[registering("register_grammars", "xml", Regex())])
    assert "lacks validate, compile of the Grammar interface" in board.failures[0].error and "xml" not in board.grammars


class OneSequence:
    """Allows exactly one token sequence; a matcher of an older plugin: it declares no supports_bitmask."""

    def __init__(self, tokens: list[int]):
        self.tokens, self.accepted = tokens, []

    def allowed_token_ids(self):
        return self.tokens[len(self.accepted):len(self.accepted) + 1]

    def accept(self, token_id):
        self.accepted.append(token_id)

    def is_finished(self):
        return self.accepted == self.tokens


class BitmaskSequence(OneSequence):
    """Writes each allowed token as a bit itself, and counts the rows it filled."""

    supports_bitmask = True
    filled = 0

    def fill_bitmask(self, words):
        for token_id in self.allowed_token_ids():
            words[token_id // 32] |= 1 << token_id % 32  # the test's token ids stay below bit 31
        BitmaskSequence.filled += 1


def sequence_grammar(matcher_cls):
    """A grammar plugin, registered as ``sequence``, whose matchers are ``matcher_cls``."""
    def compile(self, spec, *, vocab_size, tokenizer=None):
        return matcher_cls(spec)

    def validate(self, spec):
        pass

    return registering("register_grammars", "sequence",
                       type("SequenceGrammar", (), {"compile": compile, "validate": validate})())


def guided(engine: LLMEngine, tokens: list[int]):
    """Run one request guided to ``tokens``; its final CompletionOutput."""
    grammar = {"kind": "sequence", "spec": tokens}
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=8, extra={"grammar": grammar})
    engine.add_request("g", [1, 2, 3], params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.finished]
    return outputs[0].outputs[0]


def test_a_matcher_that_declares_supports_bitmask_fills_its_own_rows(tiny_llama_dir):
    engine = start_engine(tiny_llama_dir, sequence_grammar(BitmaskSequence))
    output = guided(engine, [5, 6, 7])
    assert output.token_ids == [5, 6, 7, engine.eos_token_id]
    assert BitmaskSequence.filled == 4  # every step's row, the end-of-sequence one too


def test_a_matcher_without_the_declaration_fails_its_request_naming_what_it_lacks(tiny_llama_dir, caplog):
    engine = start_engine(tiny_llama_dir, sequence_grammar(OneSequence))
    with caplog.at_level("ERROR", logger="pegboard.engine"):
        assert guided(engine, [5, 6]).finish_reason == "error"
    assert ("grammar matcher 'OneSequence' lacks supports_bitmask of the GrammarMatcher interface "
            "(registered as 'sequence' by plugin 'Plugin')") in caplog.text


def test_logits_processors_name_what_they_lack():
    from pegboard.core.logits_processors import LogitsProcessors

    class Half:
        follows_tokens = False

        def apply(self, logits, request_ids):
            return logits

    with pytest.raises(PluginError, match="logits processor 'Half' lacks add_request, accept_tokens, "
                                          "remove_request of the LogitsProcessor interface"):
        LogitsProcessors([Half()])
    assert isinstance(Half(), LogitsProcessor) is False


def test_executor_interfaces_nest():
    assert members(Executor) == ["supports_launch", "num_kv_blocks", "execute"]
    assert members(LaunchingExecutor)[:3] == members(Executor)
