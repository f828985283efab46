"""The packed CPU path's decoder layer as two C++ calls around attention (kernels/cpu_decoder_blocks.cpp): the
norms, projections, rotary and MLP of a step of up to ``max_rows`` rows run without returning to Python between
products. Set on a layer by core/cpu_weights.py when all four of its projections are packed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def packed_tensors(linear: nn.Module) -> list[torch.Tensor] | None:
    """A packed linear layer's weight as the C++ blocks take it ([dot_values, scales]), else None."""
    weight = getattr(getattr(linear, "scheme", None), "weight", None)
    return weight.tensors if hasattr(weight, "tensors") else None


def _bias(linear: nn.Module) -> torch.Tensor | None:
    return linear.bias if getattr(linear, "adds_bias", True) else None


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

    def attention_inputs(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None):
        """x: [T, D] -> (qkv [T, (H + 2 Hkv) Dh] with q and k rotated, x + residual)."""
        rotary, heads, head_dim = self._rotary
        return self.ops.attention_inputs(x.contiguous(), residual, *self._inputs, positions, rotary.cos, rotary.sin,
                                         heads, head_dim)

    def attention_outputs(self, o: torch.Tensor, residual: torch.Tensor):
        """o: [T, H Dh] attention output -> (MLP output [T, D], o projected + residual)."""
        return self.ops.attention_outputs(o, residual, *self._outputs)
