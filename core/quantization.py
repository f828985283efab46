"""The quantization-scheme interface: what a linear layer's weights are and how it multiplies by them.

A scheme creates a layer's weight parameters (``create_weights``), may convert them once they are loaded
(``process_weights_after_loading``) and runs the layer's matmul (``apply``). The layer (core/linear.py)
owns the bias and the tensor-parallel split; it loads every parameter through its weight loader, which
narrows along the dims each parameter marks with ``linear_param``. ``UnquantizedScheme`` is plain float.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn


@runtime_checkable
class QuantizationScheme(Protocol):
    """How every linear layer of a model holds and applies its weights (registered by name)."""

    name: str

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: Sequence[int],
                       dtype: torch.dtype) -> None:
        """Register ``layer``'s parameters (``linear_param``) for input_size -> sum(output_sizes: packed shards)."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Turn the loaded parameters into their run-time form (once, after the loader filled them)."""

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [T, input_size] -> [T, sum(output_sizes)], plus ``bias`` when given."""


def linear_param(data: torch.Tensor, *, output_dim: int | None = 0, input_dim: int | None = 1,
                 weight_loader: Any = None) -> nn.Parameter:
    """A frozen parameter marked with its output and input feature dims (None: neither), where loaders narrow."""
    param = nn.Parameter(data, requires_grad=False)
    param.output_dim = output_dim
    param.input_dim = input_dim
    if weight_loader is not None:
        param.weight_loader = weight_loader
    return param


class UnquantizedScheme:
    """Plain float weights: one [out, in] matrix per layer in the model's dtype, applied with F.linear."""

    name = "none"

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: Sequence[int],
                       dtype: torch.dtype) -> None:
        layer.weight = linear_param(torch.empty(sum(output_sizes), input_size, dtype=dtype))  # [out, in]

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        pass

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, layer.weight, bias)
