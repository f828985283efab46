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
from pegboard.core.layer_factory import LayerFactory, current_layer_factory
from pegboard.core.weight_loading import load_named_weights

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
        self.fused_add_norm = None  # the packed CPU path's one-pass C++ op (core/cpu_weights.py); not bit-equal

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.is_cuda:
            return _fused_kernels().rms_norm(x, self.weight, eps=self.eps, residual=residual)
        if (self.fused_add_norm is not None and x.dim() == 2 and x.dtype == torch.float32 and x.is_contiguous()
                and (residual is None or residual.is_contiguous())):  # what the C++ op takes; else torch's steps
            return tuple(self.fused_add_norm(x, residual, self.weight, self.eps))
        if residual is not None:
            x = x + residual
        residual = x
        if x.dtype == torch.float32:  # one fused op, bit-equal to the steps below in float32
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps), residual
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
        self._step_tables: tuple | None = None  # (positions, dtype, cos, sin) of the last lookup
        self.fused_qk = None  # CPU: kernels/cpu_rotary.cpp's in-place rotation of qkv rows, when the engine set it

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q: [T, H, Dh], k: [T, Hkv, Dh] -> both rotated."""
        if q.is_cuda:
            return _fused_kernels().rotary_embedding(positions, q, k, self.cos, self.sin, inplace=True)
        cos, sin = self._tables(positions, q.dtype)
        qk = torch.cat((q, k), dim=1)  # [T, H + Hkv, Dh]: one pass for both
        qk = qk * cos + _rotate_half(qk) * sin
        return qk[:, :q.shape[1]], qk[:, q.shape[1]:]

    def _tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, Dh] of these positions; looked up once per step (every layer gets the same tensor)."""
        cached = self._step_tables
        if cached is not None and cached[0] is positions and cached[1] == dtype:
            return cached[2], cached[3]
        cos = self.cos[positions].unsqueeze(1).to(dtype)
        sin = self.sin[positions].unsqueeze(1).to(dtype)
        self._step_tables = (positions, dtype, cos, sin)
        return cos, sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Self-attention with fused QKV projection, optional q/k norm (Qwen3), paged KV; H, Hkv: this rank's heads."""

    def __init__(self, config: Any, layer: int, rotary: RotaryEmbedding, layers: LayerFactory) -> None:
        super().__init__()
        self.layer = layer
        total_heads = config.num_attention_heads
        total_kv_heads = getattr(config, "num_key_value_heads", None) or total_heads
        self.head_dim = head_dim_of(config)
        bias = bool(getattr(config, "attention_bias", False))
        qkv_bias = bias or config.model_type == "qwen2"  # Qwen2 always has q/k/v biases
        self.qkv_proj = layers.qkv(config.hidden_size, self.head_dim, total_heads, total_kv_heads, bias=qkv_bias)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = layers.row(total_heads * self.head_dim, config.hidden_size, bias=bias)
        self.qk_norm = config.model_type == "qwen3"
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.rotary = rotary

    def forward(self, positions: torch.Tensor, x: torch.Tensor, attn: AttentionContext) -> torch.Tensor:
        qkv = self.qkv_proj(x)  # [T, (H + 2 Hkv) Dh]
        fused = self.rotary.fused_qk is not None and not self.qk_norm
        if fused:  # one in-place op over the q and k heads, bit-equal to the torch rotary
            self.rotary.fused_qk(qkv, positions, self.rotary.cos, self.rotary.sin, self.num_heads + self.num_kv_heads,
                                 self.head_dim)
        return self.o_proj(self.attend(positions, qkv, attn, rotated=fused))

    def attend(self, positions: torch.Tensor, qkv: torch.Tensor, attn: AttentionContext, rotated: bool) -> torch.Tensor:
        """qkv [T, (H + 2 Hkv) Dh] (q and k already rotated, or not) -> attention output [T, H Dh]."""
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # [T, H, Dh]
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, Dh]
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if not rotated:
            if self.qk_norm:
                q, _ = self.q_norm(q)
                k, _ = self.k_norm(k)
            q, k = self.rotary(positions, q, k)
        return attn(self.layer, q, k, v).reshape(-1, self.q_size)  # [T, H, Dh] -> [T, H Dh]


class MLP(nn.Module):
    """SwiGLU feed-forward with fused gate/up projection (I: this rank's intermediate size)."""

    def __init__(self, config: Any, layers: LayerFactory) -> None:
        super().__init__()
        if getattr(config, "hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"activation {config.hidden_act!r} is not supported (only silu)")
        bias = bool(getattr(config, "mlp_bias", False))
        self.gate_up_proj = layers.merged_column(config.hidden_size, [config.intermediate_size] * 2, bias=bias)
        self.intermediate = self.gate_up_proj.output_size // 2
        self.down_proj = layers.row(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2I]
        if gate_up.is_cuda:
            return self.down_proj(_fused_kernels().silu_and_mul(gate_up))
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm attention and MLP blocks with the residual carried alongside."""

    def __init__(self, config: Any, layer: int, rotary: RotaryEmbedding, layers: LayerFactory) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer, rotary, layers)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, layers)
        self.packed_blocks = None  # the packed CPU path's C++ calls around attention (core/cpu_decoder_blocks.py)

    def forward(self, positions, x, residual, attn: AttentionContext):
        blocks = self.packed_blocks
        if blocks is not None and x.shape[0] <= blocks.max_rows:
            qkv, residual = blocks.attention_inputs(positions, x, residual)
            o = self.self_attn.attend(positions, qkv, attn, rotated=True)
            return blocks.attention_outputs(o, residual)
        h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(positions, h, attn)
        h, residual = self.post_attention_layernorm(h, residual)
        if blocks is not None and blocks.prompt_mlp is not None:  # a prompt chunk on the packed path
            return blocks.prompt_mlp(h), residual
        return self.mlp(h), residual

    def use_packed_blocks(self, ops: Any, max_rows: int) -> bool:
        """Run steps of up to max_rows rows as the packed CPU blocks, if every projection here is packed."""
        from pegboard.core.cpu_decoder_blocks import PackedDecoderBlocks, packed_tensors

        attn, mlp = self.self_attn, self.mlp
        linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        if attn.qk_norm or any(packed_tensors(m) is None for m in linears):
            return False
        self.packed_blocks = PackedDecoderBlocks(
            ops, input_norm=self.input_layernorm, qkv=attn.qkv_proj, rotary=attn.rotary,
            rotary_heads=attn.num_heads + attn.num_kv_heads, head_dim=attn.head_dim, o_proj=attn.o_proj,
            post_norm=self.post_attention_layernorm, gate_up=mlp.gate_up_proj, down=mlp.down_proj,
            max_rows=max_rows)
        return True


class LlamaForCausalLM(nn.Module):
    """The whole model (embeddings, decoder layers, final norm, LM head), its layers from a layer factory."""

    # HF checkpoint modules that are shards of our packed ones: name -> (packed name, shard id).
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }
    checkpoint_prefix = "model."  # HF nests all but lm_head under "model."
    skipped_modules = ("rotary_emb",)  # rotary tables some checkpoints store; we compute ours

    def __init__(self, config: Any, max_positions: int | None = None, layers: LayerFactory | None = None) -> None:
        super().__init__()
        layers = layers if layers is not None else current_layer_factory()  # the runner's, when it builds us
        self.config = config
        max_positions = max_positions or config.max_position_embeddings
        rotary = RotaryEmbedding(config, head_dim_of(config), max_positions)
        self.embed_tokens = layers.embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, rotary, layers)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = layers.lm_head(config.vocab_size, config.hidden_size)
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
        """Load HF-named tensors through each parameter's weight loader; every parameter must be covered."""
        skipped = {"lm_head.weight"} if self.tie_word_embeddings else set()  # a tied head is the embedding
        kept = ((name, tensor) for name, tensor in weights
                if name not in skipped and not any(part in self.skipped_modules for part in name.split(".")))
        load_named_weights(self, kept, self.packed_modules_mapping, prefix=self.checkpoint_prefix)


def head_dim_of(config: Any) -> int:
    """The attention head size: config.head_dim when given, else hidden / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
