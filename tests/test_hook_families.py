"""One test per hook family: a throwaway plugin registers an object, and the engine (or, for families the
engine does not call yet, the documented interface) uses it.  docs/hooks.md describes each interface.
Logits processors, grammars and proposers: tests/test_hook_families_decoding.py. The engine helpers
``start_engine`` and ``generate`` are fixtures of tests/conftest.py."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import torch

from pegboard.core.block_manager import BlockManager
from pegboard.core.engine import StepStats
from pegboard.core.hookspecs import hookimpl
from pegboard.core.model_files import ModelFiles, resolve_model
from pegboard.core.outputs import RequestOutput
from pegboard.core.plugins import load_board
from pegboard.plugins.llama_model import LlamaForCausalLM
from pegboard.plugins.torch_attention import torch_attention_backend
from pegboard.plugins.uniproc_executor import UniprocExecutor

PROMPTS = [[1, 5, 9, 13], [1, 200, 7]]



# ---- model_sources ---------------------------------------------------------------------------------


def test_model_sources_turn_a_model_name_into_files(tiny_llama_dir, start_engine, generate):
    class TinySource:
        """Knows one made-up model name; asked before the built-in sources (lower priority number)."""

        priority = 0

        def resolve(self, model, *, revision=None):
            if model != "tiny-test-llama":
                return None  # not ours: the next source is asked
            return ModelFiles(path=str(tiny_llama_dir), format="hf", name=model, source="tiny")

    source = TinySource()

    class Plugin:
        @hookimpl
        def register_model_sources(self, register):
            register("tiny", source)

    board = load_board(plugins=[Plugin()])
    assert board.model_sources.get("tiny") is source
    assert board.model_sources.owners["tiny"] == "Plugin"
    assert resolve_model(board.model_sources, "tiny-test-llama").source == "tiny"

    engine = start_engine("tiny-test-llama", Plugin())
    assert engine.files.source == "tiny"
    assert engine.core.hf_config.hidden_size == 64
    assert [len(tokens) for tokens in generate(engine, PROMPTS)] == [6, 6]


# ---- model_loaders ---------------------------------------------------------------------------------


def test_model_loaders_give_config_tokenizer_and_weights(tiny_llama_dir, start_engine, generate):
    class SeededRandomLoader:
        """Reads config.json with transformers and fills every parameter from a seeded generator."""

        def __init__(self):
            self.filled = []

        def load_config(self, files):
            from transformers import AutoConfig

            return AutoConfig.from_pretrained(files.path)

        def load_tokenizer(self, files):
            return None  # the fixture has no tokenizer files

        def load_weights(self, model, files, config):
            generator = torch.Generator().manual_seed(7)
            model.load_weights((name, torch.randn(p.shape, generator=generator) * 0.1)
                               for name, p in model.named_parameters())
            self.filled.append(model)

    loader = SeededRandomLoader()

    class Plugin:
        @hookimpl
        def register_model_loaders(self, register):
            register("seeded-random", loader)

    engine = start_engine(tiny_llama_dir, Plugin(), load_format="seeded-random")
    assert engine.board.model_loaders.get("seeded-random") is loader
    assert loader.filled == [engine.executor.runner.model]
    assert engine.tokenizer is None
    assert [len(tokens) for tokens in generate(engine, PROMPTS)] == [6, 6]


# ---- model_architectures ---------------------------------------------------------------------------


class CountingLlama(LlamaForCausalLM):
    """The built-in Llama, counting the rows it computes logits for."""

    def __init__(self, config, max_positions=None):
        super().__init__(config, max_positions=max_positions)
        self.logit_rows: list[int] = []

    def compute_logits(self, hidden):
        self.logit_rows.append(hidden.shape[0])
        return super().compute_logits(hidden)


def test_model_architectures_build_the_model_named_in_the_config(tiny_llama_dir, tmp_path, start_engine, generate):
    model_dir = shutil.copytree(tiny_llama_dir, tmp_path / "counting-llama")
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["CountingLlamaForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    built = []

    def build(hf_config, *, max_positions):
        built.append(max_positions)
        return CountingLlama(hf_config, max_positions=max_positions)

    class Plugin:
        @hookimpl
        def register_model_architectures(self, register):
            register("CountingLlamaForCausalLM", build)

    engine = start_engine(model_dir, Plugin(), max_model_len=128)
    model = engine.executor.runner.model
    assert isinstance(model, CountingLlama) and built == [128]
    generate(engine, PROMPTS)
    assert model.logit_rows == [2] * 6  # one row per request per step: prefill step, then 5 decode steps


# ---- quantization_schemes (no engine code calls this family yet) --------------------------------------


def test_quantization_schemes_build_linear_layers():
    class Int8Linear(torch.nn.Module):
        """Weights stored as int8 rows with one float scale per row."""

        def __init__(self, in_features, out_features):
            super().__init__()
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scales", torch.ones(out_features))

        def forward(self, x):  # x: [N, in] -> [N, out]
            return x @ (self.qweight.float() * self.scales[:, None]).T

    class Int8Scheme:
        name = "int8-rowwise"

        def create_linear(self, in_features, out_features, *, bias=False):
            assert not bias
            return Int8Linear(in_features, out_features)

    class Plugin:
        @hookimpl
        def register_quantization_schemes(self, register):
            register("int8-rowwise", Int8Scheme())

    scheme = load_board(plugins=[Plugin()]).quantization_schemes.get("int8-rowwise")
    layer = scheme.create_linear(16, 8)
    weight = torch.randn(8, 16)
    layer.scales.copy_(weight.abs().amax(dim=1) / 127)
    layer.qweight.copy_(torch.round(weight / layer.scales[:, None]).to(torch.int8))
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), x @ weight.T, atol=0.05, rtol=0.05)


# ---- attention_backends ----------------------------------------------------------------------------


class CountingAttention:
    """The built-in torch backend, recording each step's batch layout and each layer's call."""

    name = "counting"
    supports_cuda_graphs = False  # no decode_metadata(): every step builds its metadata

    def __init__(self, spec, *, num_heads, scale, device):
        self.inner = torch_attention_backend(spec, num_heads=num_heads, scale=scale, device=device)
        self.spec = spec
        self.layouts = []
        self.layers_called = []

    def build_metadata(self, layout):
        self.layouts.append(layout)
        return self.inner.build_metadata(layout)

    def forward(self, layer, q, k, v, metadata):
        self.layers_called.append(layer)
        return self.inner.forward(layer, q, k, v, metadata)


def test_attention_backends_are_chosen_by_name(tiny_llama_dir, start_engine, generate):
    class Plugin:
        @hookimpl
        def register_attention_backends(self, register):
            register("counting", CountingAttention)

    engine = start_engine(tiny_llama_dir, Plugin(), attention_backend="counting")
    backend = engine.executor.runner.attention
    assert isinstance(backend, CountingAttention)
    assert backend.spec.num_blocks == 32 and backend.spec.block_size == 16 and backend.spec.num_layers == 2
    generate(engine, PROMPTS)
    assert [layout.query_lens for layout in backend.layouts] == [[4, 3]] + [[1, 1]] * 5
    assert backend.layers_called == [0, 1] * 6  # metadata built once per step, used by both layers


# ---- samplers ----------------------------------------------------------------------------------------


class HighestIdSampler:
    """Always picks the highest token id, and remembers which requests it was told to forget."""

    def __init__(self, *, vocab_size, device, seed):
        self.vocab_size = vocab_size
        self.freed = []

    def sample(self, logits, requests):
        assert logits.shape == (len(requests), self.vocab_size)
        token_ids = torch.full((len(requests),), self.vocab_size - 1, dtype=torch.long, device=logits.device)
        return SimpleNamespace(token_ids=token_ids, logprobs=None, logprob_token_ids=None, ranks=None)

    def free(self, request_ids):
        self.freed.extend(request_ids)


def test_samplers_choose_the_next_tokens(tiny_llama_dir, start_engine, generate):
    class Plugin:
        @hookimpl
        def register_samplers(self, register):
            register("highest-id", HighestIdSampler)

    engine = start_engine(tiny_llama_dir, Plugin(), sampler="highest-id")
    assert generate(engine, PROMPTS) == [[255] * 6, [255] * 6]
    assert sorted(engine.executor.runner.sampler.freed) == ["0", "1"]


# ---- block_allocators --------------------------------------------------------------------------------


class CountingBlockManager(BlockManager):
    """The plain allocator, counting allocations and recording frees."""

    def __init__(self, num_blocks, block_size):
        super().__init__(num_blocks, block_size)
        self.allocations = 0
        self.freed = []

    def allocate_slots(self, request, num_new_tokens):
        self.allocations += 1
        return super().allocate_slots(request, num_new_tokens)

    def free(self, request):
        self.freed.append(request.request_id)
        super().free(request)


def test_block_allocators_hand_out_kv_blocks(tiny_llama_dir, start_engine, generate):
    class Plugin:
        @hookimpl
        def register_block_allocators(self, register):
            register("counting", CountingBlockManager)

    engine = start_engine(tiny_llama_dir, Plugin(), block_allocator="counting")
    allocator = engine.block_manager
    assert isinstance(allocator, CountingBlockManager)
    assert (allocator.num_blocks, allocator.block_size) == (32, 16)
    generate(engine, PROMPTS)
    assert allocator.allocations == 2 * 6  # every request, every step
    assert sorted(allocator.freed) == ["0", "1"]
    assert allocator.num_free_blocks == 32


# ---- executors -----------------------------------------------------------------------------------------


class RecordingExecutor:
    """Wraps the in-process executor and records what it is asked to do."""

    supports_launch = False  # no launch(): every step runs synchronously through execute()

    def __init__(self, config, board, files, loader, hf_config, max_model_len):
        self.inner = UniprocExecutor(config, board, files, loader, hf_config, max_model_len)
        self.batches = []
        self.freed = []

    @property
    def num_kv_blocks(self):
        return self.inner.num_kv_blocks

    def execute(self, scheduled):
        if not scheduled.is_empty:
            self.batches.append(tuple(scheduled.num_scheduled_tokens.values()))
        self.freed.extend(scheduled.finished_request_ids)  # the worker forgets them
        return self.inner.execute(scheduled)


def test_executors_run_each_step(tiny_llama_dir, start_engine, generate):
    class Plugin:
        @hookimpl
        def register_executors(self, register):
            register("recording", RecordingExecutor)

    engine = start_engine(tiny_llama_dir, Plugin(), executor="recording")
    executor = engine.executor
    assert isinstance(executor, RecordingExecutor)
    assert engine.block_manager.num_blocks == executor.num_kv_blocks == 32
    generate(engine, PROMPTS)
    assert executor.batches == [(4, 3)] + [(1, 1)] * 5  # both prompts prefilled at once, then decodes
    assert sorted(executor.freed) == ["0", "1"]


# ---- observers -----------------------------------------------------------------------------------------


def test_observers_see_the_engine_each_step_and_each_finished_request(tiny_llama_dir, start_engine, generate):
    class Observer:
        def __init__(self):
            self.engines, self.steps, self.finished = [], [], []

        @hookimpl
        def on_engine_start(self, engine):
            self.engines.append(engine)

        @hookimpl
        def on_step_end(self, stats):
            self.steps.append(stats)

        @hookimpl
        def on_request_finished(self, output):
            self.finished.append(output)

    observer = Observer()
    engine = start_engine(tiny_llama_dir, observer)
    assert observer.engines == [engine]
    generate(engine, PROMPTS)
    assert all(isinstance(s, StepStats) for s in observer.steps) and len(observer.steps) == 6
    assert observer.steps[0].num_prompt_tokens == 7
    assert sum(s.num_generation_tokens for s in observer.steps) == 12
    assert all(isinstance(o, RequestOutput) and o.finished for o in observer.finished)
    assert sorted(o.request_id for o in observer.finished) == ["0", "1"]
