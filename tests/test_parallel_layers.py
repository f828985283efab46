"""The parallel-layer family: each parameter's weight loader keeps its rank's part of a checkpoint tensor and
packs shards; split over two ranks (two processes, gloo), the Llama model computes the one-rank logits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pegboard.core.errors import UnsupportedModelError
from pegboard.core.layer_factory import LayerFactory
from pegboard.core.parallel import ParallelContext

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=200,
            max_position_embeddings=64, initializer_range=0.15, architectures=["LlamaForCausalLM"])
VARIANTS = {  # one KV head per rank; one KV head on both ranks, biases (rank 0 adds the row bias), tied head
    "kv-split": dict(num_key_value_heads=2),
    "kv-replicated": dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
}


def two_ranks() -> list[LayerFactory]:
    return [LayerFactory(parallel=ParallelContext(tp_size=2, tp_rank=rank)) for rank in range(2)]


def load(param, tensor, shard_id=None):
    param.weight_loader(param, tensor, shard_id)


def test_column_layers_keep_their_rows_and_row_layers_their_columns():
    weight, bias = torch.randn(8, 6), torch.randn(8)
    for rank, layers in enumerate(two_ranks()):
        column, row = layers.column(6, 8, bias=True), layers.row(6, 8, bias=True)
        for layer in (column, row):
            load(layer.weight, weight)
            load(layer.bias, bias)
        assert torch.equal(column.weight, weight[4 * rank:4 * rank + 4])  # [out / 2, in]
        assert torch.equal(column.bias, bias[4 * rank:4 * rank + 4])
        assert torch.equal(row.weight, weight[:, 3 * rank:3 * rank + 3])  # [out, in / 2]
        assert torch.equal(row.bias, bias) and row.adds_bias == (rank == 0)


@pytest.mark.parametrize("num_kv_heads", [2, 1])
def test_qkv_packs_this_ranks_heads_and_replicates_scarce_kv_heads(num_kv_heads):
    head_dim, hidden = 2, 3
    q = torch.arange(4 * head_dim * hidden, dtype=torch.float).view(-1, hidden)  # 4 heads
    k, v = (torch.randn(num_kv_heads * head_dim, hidden) for _ in range(2))
    for rank, layers in enumerate(two_ranks()):
        qkv = layers.qkv(hidden, head_dim, 4, num_kv_heads)
        for shard_id, tensor in zip("qkv", (q, k, v)):
            load(qkv.weight, tensor, shard_id)
        kv_head = rank if num_kv_heads == 2 else 0
        kv = slice(kv_head * head_dim, (kv_head + 1) * head_dim)
        assert (qkv.num_heads, qkv.num_kv_heads) == (2, 1)
        assert torch.equal(qkv.weight, torch.cat([q[4 * rank:4 * rank + 4], k[kv], v[kv]]))


def test_a_packed_tensor_stored_whole_loads_as_its_shards():
    gate, up = torch.randn(6, 4), torch.randn(6, 4)
    for rank, layers in enumerate(two_ranks()):
        by_shard, whole = layers.merged_column(4, [6, 6]), layers.merged_column(4, [6, 6])
        load(by_shard.weight, gate, 0)
        load(by_shard.weight, up, 1)
        load(whole.weight, torch.cat([gate, up]))
        assert torch.equal(whole.weight, torch.cat([gate[3 * rank:3 * rank + 3], up[3 * rank:3 * rank + 3]]))
        assert torch.equal(by_shard.weight, whole.weight)


def hf_llama(**overrides):
    """A seeded random transformers Llama (the same weights in every process)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})).eval()


def test_checkpoint_names_route_to_packed_shards_and_misfits_name_the_tensor():
    from pegboard.plugins.llama_model import LlamaForCausalLM

    reference = hf_llama(num_key_value_heads=2)
    state = reference.state_dict()
    model = LlamaForCausalLM(reference.config)
    model.load_weights(state.items())
    q, k, v = (state[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    assert torch.equal(model.layers[1].self_attn.qkv_proj.weight, torch.cat([q, k, v]))

    wrong = {**state, "model.layers.0.self_attn.k_proj.weight": torch.zeros(16, 60)}
    with pytest.raises(UnsupportedModelError, match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(16, 60\), "
                                                    r"expected \(32, 64\)"):
        model.load_weights(wrong.items())
    without_v = {n: t for n, t in state.items() if n != "model.layers.0.self_attn.v_proj.weight"}
    with pytest.raises(UnsupportedModelError, match=r"lacks 1 tensors.*layers.0.self_attn.qkv_proj.weight \(shard 'v'"):
        model.load_weights(without_v.items())


def causal_attention(layer, q, k, v):
    """One sequence, no KV cache: q [T, H, Dh], k/v [T, Hkv, Dh] -> [T, H, Dh]."""
    k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)
    return o.transpose(0, 1)


def run_rank(rank: int, init_file: str) -> None:
    """One of two gloo ranks: the split model's logits match the whole model's, for every variant."""
    from pegboard.plugins.llama_model import LlamaForCausalLM

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    split_layers = LayerFactory(parallel=ParallelContext(tp_size=2, tp_rank=rank))
    ids = torch.tensor([5, 17, 42, 9, 100, 3, 199, 0])
    positions = torch.arange(len(ids))
    with torch.no_grad():
        for name, overrides in VARIANTS.items():
            reference = hf_llama(**overrides)
            whole, split = LlamaForCausalLM(reference.config), LlamaForCausalLM(reference.config, layers=split_layers)
            for model in (whole, split):
                model.load_weights(reference.state_dict().items())
            logits = [m.compute_logits(m(ids, positions, causal_attention)) for m in (whole, split)]
            torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5, msg=name)
    torch.distributed.destroy_process_group()
    print(f"rank {rank} ok")


def test_two_ranks_compute_the_logits_of_one(tmp_path):
    command = [sys.executable, str(Path(__file__)), str(tmp_path / "rendezvous")]
    ranks = [subprocess.Popen([*command, str(rank)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in ranks]
    for rank, (process, output) in enumerate(zip(ranks, outputs)):
        assert process.returncode == 0 and f"rank {rank} ok" in output, output


if __name__ == "__main__":
    run_rank(int(sys.argv[2]), sys.argv[1])
