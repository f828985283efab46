"""The layer factory a model is built from: one quantization scheme and one parallel context for every layer.

The model runner builds the model inside ``building_with(factory)``, so any architecture's constructor
(whatever its signature) finds the runner's factory through ``current_layer_factory()``; a model built
elsewhere gets plain float layers on one rank.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from pegboard.core.linear import (ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear,
                                  RowParallelLinear)
from pegboard.core.parallel import ParallelContext
from pegboard.core.quantization import QuantizationScheme, UnquantizedScheme
from pegboard.core.vocab_parallel import ParallelLMHead, VocabParallelEmbedding


@dataclass(frozen=True)
class LayerFactory:
    """Builds linear layers (weights from ``scheme``) and vocabulary layers, split as ``parallel`` says."""

    scheme: QuantizationScheme = field(default_factory=UnquantizedScheme)
    parallel: ParallelContext = ParallelContext()
    dtype: torch.dtype | None = None  # None: torch's default dtype when each layer is built

    def _linear(self) -> dict:
        return dict(scheme=self.scheme, parallel=self.parallel, dtype=self.dtype or torch.get_default_dtype())

    def column(self, input_size: int, output_size: int, *, bias: bool = False) -> ColumnParallelLinear:
        return ColumnParallelLinear(input_size, output_size, bias=bias, **self._linear())

    def merged_column(self, input_size: int, output_sizes: Sequence[int], *,
                      bias: bool = False) -> MergedColumnParallelLinear:
        return MergedColumnParallelLinear(input_size, output_sizes, bias=bias, **self._linear())

    def qkv(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, *,
            bias: bool = False) -> QKVParallelLinear:
        return QKVParallelLinear(hidden_size, head_dim, num_heads, num_kv_heads, bias=bias, **self._linear())

    def row(self, input_size: int, output_size: int, *, bias: bool = False) -> RowParallelLinear:
        return RowParallelLinear(input_size, output_size, bias=bias, **self._linear())

    def embedding(self, num_embeddings: int, embedding_dim: int) -> VocabParallelEmbedding:
        return VocabParallelEmbedding(num_embeddings, embedding_dim, parallel=self.parallel,
                                      dtype=self.dtype or torch.get_default_dtype())

    def lm_head(self, num_embeddings: int, embedding_dim: int) -> ParallelLMHead:
        return ParallelLMHead(num_embeddings, embedding_dim, parallel=self.parallel,
                              dtype=self.dtype or torch.get_default_dtype())


_BUILDING: ContextVar[LayerFactory | None] = ContextVar("pegboard_layer_factory", default=None)


@contextlib.contextmanager
def building_with(factory: LayerFactory) -> Iterator[LayerFactory]:
    """Within this block, models that are not handed a factory build their layers from ``factory``."""
    token = _BUILDING.set(factory)
    try:
        yield factory
    finally:
        _BUILDING.reset(token)


def current_layer_factory() -> LayerFactory:
    """The factory of the enclosing ``building_with`` block, else plain float layers on one rank."""
    return _BUILDING.get() or LayerFactory()
