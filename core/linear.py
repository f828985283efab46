"""Tensor-parallel linear layers whose weights and matmul come from a quantization scheme.

Column-parallel layers split the output features over the ranks (each rank computes its slice),
row-parallel ones split the input features (each rank computes a partial sum, summed over the group).
Packed layers (``MergedColumnParallelLinear``: gate and up; ``QKVParallelLinear``: q, k and v) hold
several checkpoint tensors in one parameter, each filled through the weight loader with its shard id.

Every parameter carries ``weight_loader(param, loaded_weight, shard_id=None)``: it takes the whole
checkpoint tensor (or one shard's), keeps this rank's part and copies it into place.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import torch
from torch import nn

from pegboard.core.parallel import ParallelContext, copy_part, divide
from pegboard.core.quantization import QuantizationScheme, linear_param

# shard id -> (offset in this rank's parameter, rows, first row of this rank's part in the checkpoint
# tensor, rows in the checkpoint tensor), along the parameter's output dim.
OutputSlices = dict[Hashable, tuple[int, int, int, int]]


class LinearBase(nn.Module):
    """A linear map of this rank's features: the scheme's weights, the layer's bias and split (set by subclasses)."""

    shard_ids: tuple[Hashable, ...] = ()  # the packed shards a checkpoint fills one by one (none: unpacked)

    def __init__(self, input_size: int, output_sizes: Sequence[int], *, bias: bool, scheme: QuantizationScheme,
                 parallel: ParallelContext, dtype: torch.dtype, output_slices: OutputSlices,
                 input_slice: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = sum(output_sizes)
        self.scheme = scheme
        self.parallel = parallel
        self.output_slices = output_slices
        self.input_slice = input_slice  # (first input feature of this rank, input features in all)
        scheme.create_weights(self, input_size, list(output_sizes), dtype)
        if bias:
            self.bias = linear_param(torch.empty(self.output_size, dtype=dtype), input_dim=None)
        else:
            self.register_parameter("bias", None)
        for param in self.parameters(recurse=False):
            if getattr(param, "weight_loader", None) is None:
                param.weight_loader = self.weight_loader

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in] -> [T, out]."""
        return self.scheme.apply(self, x, self.bias)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Hashable = None) -> None:
        """Copy this rank's part of a checkpoint tensor (the whole layer's, or shard ``shard_id``'s) into ``param``."""
        output_dim, input_dim = param.output_dim, param.input_dim
        if shard_id is None and self.shard_ids and output_dim is not None:  # a packed tensor stored whole
            sizes = [self.output_slices[s][3] for s in self.shard_ids]
            if loaded_weight.shape[output_dim] != sum(sizes):
                raise ValueError(f"has shape {tuple(loaded_weight.shape)}, expected {sum(sizes)} "
                                 f"along dim {output_dim}")
            for s, part in zip(self.shard_ids, loaded_weight.split(sizes, dim=output_dim)):
                self.weight_loader(param, part, s)
            return
        dst, parts = param.data, {}
        if output_dim is not None:
            offset, rows, start, full = self.output_slices[shard_id]
            dst = dst.narrow(output_dim, offset, rows)
            parts[output_dim] = (start, full)
        if input_dim is not None and self.input_slice is not None:
            parts[input_dim] = self.input_slice
        copy_part(dst, loaded_weight, parts)


def _column_slices(full_sizes: dict[Hashable, int], parallel: ParallelContext) -> OutputSlices:
    """Each shard's rows split evenly over the ranks, this rank's parts packed in shard order."""
    slices, offset = {}, 0
    for shard_id, full in full_sizes.items():
        rows = divide(full, parallel.tp_size, "output features")
        slices[shard_id] = (offset, rows, parallel.tp_rank * rows, full)
        offset += rows
    return slices


class ColumnParallelLinear(LinearBase):
    """Output features split over the ranks: x [T, in] -> this rank's slice [T, out / tp_size]."""

    def __init__(self, input_size: int, output_size: int, *, bias: bool = False, **layer: Any) -> None:
        slices = _column_slices({None: output_size}, layer["parallel"])
        super().__init__(input_size, [slices[None][1]], bias=bias, output_slices=slices, **layer)


class MergedColumnParallelLinear(LinearBase):
    """Several column-parallel projections of the same input in one matmul (gate and up: shards 0 and 1)."""

    def __init__(self, input_size: int, output_sizes: Sequence[int], *, bias: bool = False, **layer: Any) -> None:
        slices = _column_slices(dict(enumerate(output_sizes)), layer["parallel"])
        self.shard_ids = tuple(slices)
        super().__init__(input_size, [s[1] for s in slices.values()], bias=bias, output_slices=slices, **layer)


class QKVParallelLinear(LinearBase):
    """q, k and v in one matmul, whole heads per rank (KV heads replicated if fewer than ranks): [T, (H + 2Hkv) Dh]."""

    shard_ids = ("q", "k", "v")

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, *,
                 bias: bool = False, **layer: Any) -> None:
        parallel: ParallelContext = layer["parallel"]
        self.head_dim = head_dim
        self.num_heads = divide(num_heads, parallel.tp_size, "attention heads")
        if num_kv_heads >= parallel.tp_size:
            self.num_kv_heads = divide(num_kv_heads, parallel.tp_size, "KV heads")
            kv_head = parallel.tp_rank * self.num_kv_heads
        else:
            self.num_kv_heads = 1
            kv_head = parallel.tp_rank // divide(parallel.tp_size, num_kv_heads, "ranks per KV head")
        q_rows, kv_rows = self.num_heads * head_dim, self.num_kv_heads * head_dim
        kv_full = num_kv_heads * head_dim
        slices = {"q": (0, q_rows, parallel.tp_rank * q_rows, num_heads * head_dim),
                  "k": (q_rows, kv_rows, kv_head * head_dim, kv_full),
                  "v": (q_rows + kv_rows, kv_rows, kv_head * head_dim, kv_full)}
        super().__init__(hidden_size, [q_rows, kv_rows, kv_rows], bias=bias, output_slices=slices, **layer)


class RowParallelLinear(LinearBase):
    """Input features split over the ranks: partial sums [T, out] summed over the group; rank 0 adds the bias."""

    def __init__(self, input_size: int, output_size: int, *, bias: bool = False, **layer: Any) -> None:
        parallel: ParallelContext = layer["parallel"]
        local = divide(input_size, parallel.tp_size, "input features")
        super().__init__(local, [output_size], bias=bias, output_slices={None: (0, output_size, 0, output_size)},
                         input_slice=(parallel.tp_rank * local, input_size), **layer)
        self.reduce = parallel.tp_size > 1
        self.adds_bias = parallel.tp_rank == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in / tp_size] -> [T, out]."""
        y = self.scheme.apply(self, x, self.bias if self.adds_bias else None)
        if self.reduce:
            self.parallel.all_reduce(y)
        return y
