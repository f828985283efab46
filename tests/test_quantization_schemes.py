"""Quantization schemes build the model's linear layers: plain float by default, any registered scheme by
name. A throwaway int8 weight-only scheme plugs in without core edits and runs the engine end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pegboard import LLM, SamplingParams
from pegboard.core.errors import PluginError
from pegboard.core.hookspecs import hookimpl
from pegboard.core.linear import LinearBase
from pegboard.core.plugins import load_board
from pegboard.core.quantization import QuantizationScheme, linear_param

PROMPTS = [[5, 17, 42, 9, 100, 3], [7] * 20 + [11, 12], [150, 2]]
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=1)


class Int8RowwiseScheme:
    """Weight-only int8: loads float weights, then keeps each output row as int8 with one float scale."""

    name = "int8-rowwise"

    def create_weights(self, layer, input_size, output_sizes, dtype):
        layer.weight = linear_param(torch.empty(sum(output_sizes), input_size, dtype=dtype))  # [out, in]

    def process_weights_after_loading(self, layer):
        weight = layer.weight.detach().float()  # [out, in]
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127  # [out]
        del layer.weight
        layer.weight = linear_param(torch.round(weight / scale[:, None]).to(torch.int8))
        layer.weight_scale = linear_param(scale, input_dim=None)

    def apply(self, layer, x, bias):  # x: [T, in] -> [T, out]
        y = F.linear(x, layer.weight.to(x.dtype)) * layer.weight_scale.to(x.dtype)
        return y if bias is None else y + bias


class Int8Plugin:
    @hookimpl
    def register_quantization_schemes(self, register):
        register("int8-rowwise", lambda hf_config: Int8RowwiseScheme())


@pytest.fixture(scope="module")
def random_llama(tmp_path_factory):
    """A tiny random HF Llama checkpoint (weights N(0, 0.15): logits far from ties), with q/k/v biases."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("random-llama")
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=200, max_position_embeddings=256, attention_bias=True,
                         initializer_range=0.15, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def generate(path, **options):
    """The engine's runner model and its greedy outputs on PROMPTS."""
    llm = LLM(str(path), skip_tokenizer_init=True, dtype="float32", device="cpu", num_kv_blocks=32, **options)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    return llm.engine.executor.runner.model, [o.outputs[0] for o in outputs]


def linear_layers(model):
    return [m for m in model.modules() if isinstance(m, LinearBase)]


def test_the_float_scheme_is_the_default_and_is_registered_as_none(random_llama):
    model, default = generate(random_llama)
    assert isinstance(load_board().quantization_schemes.get("none")(None), QuantizationScheme)
    layers = linear_layers(model)
    assert len(layers) == 2 * 4  # qkv, o, gate_up, down per decoder layer
    assert {layer.scheme.name for layer in layers} == {"none"}
    assert {layer.weight.dtype for layer in layers} == {torch.float32}
    _, named = generate(random_llama, quantization="none")
    assert [o.token_ids for o in named] == [o.token_ids for o in default]


def test_an_int8_scheme_plugin_builds_every_linear_layer_and_the_engine_runs_on_it(random_llama):
    _, floats = generate(random_llama)
    model, int8 = generate(random_llama, quantization="int8-rowwise", board=load_board(plugins=[Int8Plugin()]))
    layers = linear_layers(model)
    assert len(layers) == 8 and all(isinstance(layer.scheme, Int8RowwiseScheme) for layer in layers)
    assert all(layer.weight.dtype == torch.int8 and layer.weight_scale.shape == (layer.output_size,)
               for layer in layers)
    assert [o.token_ids for o in int8] == [o.token_ids for o in floats]
    gaps = [abs(q[t].logprob - f[t].logprob)
            for qo, fo in zip(int8, floats) for t, q, f in zip(qo.token_ids, qo.logprobs, fo.logprobs)]
    assert 0 < max(gaps) < 0.1  # the int8 matmul ran (not bit-equal), and stays close to float (nats)


def test_an_unknown_scheme_fails_at_start_naming_it_and_the_registered_ones(random_llama):
    with pytest.raises(PluginError, match=r"quantization scheme plugin named 'fp4'.*available: none, int8-rowwise"):
        LLM(str(random_llama), skip_tokenizer_init=True, device="cpu", quantization="fp4",
            board=load_board(plugins=[Int8Plugin()]))
