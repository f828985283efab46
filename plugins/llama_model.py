"""Llama-family decoder (Llama 2/3, Mistral, Qwen2/2.5, Qwen3, SmolLM) over a flat token batch.

Shapes: T = tokens in the step's batch, D = hidden size, H / Hkv = query / KV heads, Dh = head dim.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pegboard.core.attention import AttentionContext
from pegboard.core.errors import UnsupportedModelError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@functools.cache
def _fused_kernels():
    """The Triton kernels (RMSNorm, rotary, SiLU-and-mul) used on CUDA; imported on first use."""
    from types import SimpleNamespace

    from pegboard.kernels.rms_norm import rms_norm
    from pegboard.kernels.rotary import rotary_embedding
    from pegboard.kernels.silu_and_mul import silu_and_mul

    return SimpleNamespace(rms_norm=rms_norm, rotary_embedding=rotary_embedding, silu_and_mul=silu_and_mul)


class RMSNorm(nn.Module):
    """RMSNorm in float32 (as HF does), optionally adding a residual first: returns (normed, residual)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.is_cuda:
            return _fused_kernels().rms_norm(x, self.weight, eps=self.eps, residual=residual)
        if residual is not None:
            x = x + residual
        residual = x
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype), residual


def rope_parameters(config: Any) -> dict:
    """The config's rope settings in transformers 5 form, from either config generation."""
    params = getattr(config, "rope_parameters", None)
    if params:
        return dict(params)
    params = {"rope_theta": getattr(config, "rope_theta", 10000.0)}
    params.update(getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.get("type", "default"))
    return params


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (rotate-half layout) from a precomputed cos/sin table."""

    def __init__(self, config: Any, head_dim: int, max_positions: int) -> None:
        super().__init__()
        params = rope_parameters(config)
        rope_type = params.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
        if rope_type == "default":
            inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
            scaling = 1.0
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
        device = torch.empty(0).device  # where the model is being built
        positions = torch.arange(max_positions, dtype=torch.float, device=device)
        freqs = positions[:, None] * inv_freq.to(device=device, dtype=torch.float)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [P, Dh]
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * scaling, persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q: [T, H, Dh], k: [T, Hkv, Dh] -> both rotated."""
        if q.is_cuda:
            return _fused_kernels().rotary_embedding(positions, q, k, self.cos, self.sin, inplace=True)
        cos = self.cos[positions].unsqueeze(1).to(q.dtype)  # [T, 1, Dh]
        sin = self.sin[positions].unsqueeze(1).to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Self-attention with fused QKV projection, optional q/k norm (Qwen3), paged KV via the context."""

    def __init__(self, config: Any, layer: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = head_dim_of(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = bool(getattr(config, "attention_bias", False))
        qkv_bias = bias or config.model_type == "qwen2"  # Qwen2 always has q/k/v biases
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=bias)
        self.qk_norm = config.model_type == "qwen3"
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.rotary = rotary

    def forward(self, positions: torch.Tensor, x: torch.Tensor, attn: AttentionContext) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # [T, H, Dh]
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, Dh]
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, _ = self.q_norm(q)
            k, _ = self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        o = attn(self.layer, q, k, v)  # [T, H, Dh]
        return self.o_proj(o.reshape(-1, self.q_size))


class MLP(nn.Module):
    """SwiGLU feed-forward with fused gate/up projection."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        if getattr(config, "hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"activation {config.hidden_act!r} is not supported (only silu)")
        self.intermediate = config.intermediate_size
        bias = bool(getattr(config, "mlp_bias", False))
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * self.intermediate, bias=bias)
        self.down_proj = nn.Linear(self.intermediate, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if gate_up.is_cuda:
            return self.down_proj(_fused_kernels().silu_and_mul(gate_up))
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm attention and MLP blocks with the residual carried alongside."""

    def __init__(self, config: Any, layer: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer, rotary)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, positions, x, residual, attn: AttentionContext):
        h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(positions, h, attn)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


# HF checkpoint names folded into our fused parameters: (our name, HF name, shard index).
STACKED_PARAMS = (
    ("qkv_proj", "q_proj", 0),
    ("qkv_proj", "k_proj", 1),
    ("qkv_proj", "v_proj", 2),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)


class LlamaForCausalLM(nn.Module):
    """The whole model: embeddings, decoder layers, final norm and LM head."""

    def __init__(self, config: Any, max_positions: int | None = None) -> None:
        super().__init__()
        self.config = config
        max_positions = max_positions or config.max_position_embeddings
        rotary = RotaryEmbedding(config, head_dim_of(config), max_positions)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, rotary) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = rotary

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionContext) -> torch.Tensor:
        """input_ids, positions: [T] -> final hidden states [T, D]."""
        x = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, attn)
        x, _ = self.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, D] -> float32 logits [N, V]."""
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into our (partly fused) parameters; every parameter must be covered."""
        params = dict(self.named_parameters(remove_duplicate=False))
        filled: dict[str, int] = {}
        for hf_name, tensor in weights:
            name = hf_name.removeprefix("model.")
            if "rotary_emb" in name or (name == "lm_head.weight" and self.tie_word_embeddings):
                continue
            shard = None
            for fused, part, index in STACKED_PARAMS:
                if f".{part}." in name:
                    name, shard = name.replace(f".{part}.", f".{fused}."), index
                    break
            if name not in params:
                raise UnsupportedModelError(f"checkpoint tensor {hf_name!r} has no place in {type(self).__name__}")
            target = params[name].data
            if shard is not None:
                target = self._shard_of(name, target, shard)
            if target.shape != tensor.shape:
                raise UnsupportedModelError(
                    f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
            target.copy_(tensor)
            filled[name] = filled.get(name, 0) + 1
        missing = [n for n in params if n not in filled and not (n == "lm_head.weight" and self.tie_word_embeddings)]
        if missing:
            raise UnsupportedModelError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")

    def _shard_of(self, name: str, target: torch.Tensor, shard: int) -> torch.Tensor:
        """The rows of a fused parameter that one HF projection fills."""
        if "qkv_proj" in name:
            attn = self.layers[0].self_attn
            sizes = [attn.q_size, attn.kv_size, attn.kv_size]
        else:
            sizes = [self.config.intermediate_size] * 2
        return target.narrow(0, sum(sizes[:shard]), sizes[shard])


def head_dim_of(config: Any) -> int:
    """The attention head size: config.head_dim when given, else hidden / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
