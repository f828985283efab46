"""The packed CPU path's decoder layer as two C++ calls around attention (kernels/cpu_decoder_blocks.cpp): the
norms, projections, rotary and MLP of a step of up to ``max_rows`` rows run without returning to Python between
products. Set on a layer by core/cpu_weights.py when all four of its projections are packed. Larger steps (prompt
chunks) run the layer's modules, with the MLP on its bfloat16 copies where both projections have one."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def packed_tensors(linear: nn.Module) -> list[torch.Tensor] | None:
    """A packed linear layer's weight as the C++ blocks take it ([dot_values, scales]), else None."""
    weight = getattr(getattr(linear, "scheme", None), "weight", None)
    return weight.tensors if hasattr(weight, "tensors") else None


def _bias(linear: nn.Module) -> torch.Tensor | None:
    return linear.bias if getattr(linear, "adds_bias", True) else None


def prompt_weight(linear: nn.Module) -> torch.Tensor | None:
    """A packed linear layer's bfloat16 copy for batches over its packed rows (core/cpu_weights.py), else None."""
    return getattr(getattr(linear, "scheme", None), "prefill_weight", None)


class BFloat16PromptMLP:
    """A prompt chunk's MLP on the bfloat16 copies: the gate/up GEMM's bfloat16 output goes through silu * up in
    one C++ pass (float32 inside, one rounding) straight into the down GEMM, with no float32 round trip between."""

    def __init__(self, ops: Any, gate_up: torch.Tensor, down: torch.Tensor) -> None:
        self.ops = ops
        self.gate_up = gate_up
        self.down = down

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, D] float32 -> [T, D] float32."""
        gate_up = F.linear(x.to(torch.bfloat16), self.gate_up)
        return F.linear(self.ops.silu_and_mul_bf16(gate_up), self.down).float()


class PackedDecoderBlocks:
    """One decoder layer's work before and after attention, each one C++ call."""

    def __init__(self, ops: Any, *, input_norm: nn.Module, qkv: nn.Module, rotary: nn.Module, rotary_heads: int,
                 head_dim: int, o_proj: nn.Module, post_norm: nn.Module, gate_up: nn.Module, down: nn.Module,
                 max_rows: int) -> None:
        self.ops = ops
        self.max_rows = max_rows
        self._inputs = (input_norm.weight, input_norm.eps, packed_tensors(qkv), _bias(qkv))
        self._rotary = (rotary, rotary_heads, head_dim)
        self._outputs = (packed_tensors(o_proj), _bias(o_proj), post_norm.weight, post_norm.eps,
                         packed_tensors(gate_up), _bias(gate_up), packed_tensors(down), _bias(down))
        copies = (prompt_weight(gate_up), prompt_weight(down))
        plain = _bias(gate_up) is None and _bias(down) is None
        self.prompt_mlp = BFloat16PromptMLP(ops, *copies) if plain and None not in copies else None

    def attention_inputs(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None):
        """x: [T, D] -> (qkv [T, (H + 2 Hkv) Dh] with q and k rotated, x + residual)."""
        rotary, heads, head_dim = self._rotary
        return self.ops.attention_inputs(x.contiguous(), residual, *self._inputs, positions, rotary.cos, rotary.sin,
                                         heads, head_dim)

    def attention_outputs(self, o: torch.Tensor, residual: torch.Tensor):
        """o: [T, H Dh] attention output -> (MLP output [T, D], o projected + residual)."""
        return self.ops.attention_outputs(o, residual, *self._outputs)
