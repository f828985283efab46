"""CUDA graphs for steps that carry prefill chunks: the model forward cut at its attention calls, each piece
between two of them captured once per bucketed token count, attention run eagerly between the pieces.

A mixed step's attention depends on its requests (how many, how long, how much cached), which a graph cannot
capture without padding every one of them; everything else in the forward (GEMMs, norms, rotary, the MLP)
depends on the token count alone. So a step of n tokens replays the pieces of the smallest bucket >= n over
persistent buffers: piece i ends by copying layer i's q, k, v into shared buffers, attention reads their
first n rows eagerly and writes its output where piece i + 1 reads it. The bucket's padding rows compute
junk that attention never sees and no one reads. One step then launches one graph per layer plus the
attention kernels, where an eager step launches every kernel of every layer from Python.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from pegboard.core.attention import AttentionBackend

logger = logging.getLogger("pegboard.cuda_graphs")


def token_buckets(max_tokens: int) -> list[int]:
    """Captured token counts: 16 to 256 by doubling, every 128 up to 2048, every 512 beyond, up to max_tokens.

    Below 256 tokens a step's GEMMs are bound by reading the weights, so padding costs little; beyond, a step
    pads fewer than 128 tokens up to 2048 and fewer than 512 (under 20%) past it."""
    sizes = [n for n in (16, 32, 64, 128, 256) if n < max_tokens]
    sizes += [n for n in range(384, min(max_tokens, 2048) + 1, 128)]
    sizes += [n for n in range(2560, max_tokens + 1, 512)]
    if not sizes or sizes[-1] != max_tokens:
        sizes.append(max_tokens)
    return sizes


class _PieceCutter:
    """Stands in for the attention context while a forward runs: each attention call copies q, k, v into the
    shared buffers and returns the output buffer; when capturing, it also ends one piece and begins the next."""

    def __init__(self, owner: "PiecewiseGraphs", pool: Any = None, capturing: bool = False) -> None:
        self.owner = owner
        self.pool = pool
        self.pieces: list[torch.cuda.CUDAGraph] = []
        self.layers: list[int] = []  # the layer of each attention call, in forward order
        self.graph: torch.cuda.CUDAGraph | None = None
        if capturing:
            self._begin()

    def _begin(self) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.graph.capture_begin(pool=self.pool)

    def end(self) -> list[torch.cuda.CUDAGraph]:
        """Close the last piece; the pieces in forward order."""
        if self.graph is not None:
            self.graph.capture_end()
            self.pieces.append(self.graph)
            self.graph = None
        return self.pieces

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = q.shape[0]
        self.layers.append(layer)
        owner = self.owner
        owner.q[:n].copy_(q)
        owner.k[:n].copy_(k)
        owner.v[:n].copy_(v)
        if self.graph is not None:
            self.end()
            self._begin()
        return owner.out[:n]


class PiecewiseGraphs:
    """The model forward of steps with prefill chunks, as captured pieces per token bucket sharing one memory pool."""

    def __init__(self, model: torch.nn.Module, backend: AttentionBackend, *, max_tokens: int, num_heads: int,
                 num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.model = model
        self.backend = backend
        self.buckets = token_buckets(max_tokens)
        self.input_ids = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self.q = torch.zeros(max_tokens, num_heads, head_dim, dtype=dtype, device=device)
        self.k = torch.zeros(max_tokens, num_kv_heads, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.out = torch.zeros_like(self.q)
        self.pieces: dict[int, list[torch.cuda.CUDAGraph]] = {}
        self.hidden: dict[int, torch.Tensor] = {}
        self.layers: list[int] = []  # the layer whose attention runs after each piece but the last

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first, into one shared memory pool."""
        started, reserved = time.perf_counter(), torch.cuda.memory_reserved()
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for n in reversed(self.buckets):
                self.model(self.input_ids[:n], self.positions[:n], _PieceCutter(self))  # warm-up
                torch.cuda.synchronize()
                cutter = _PieceCutter(self, pool, capturing=True)
                self.hidden[n] = self.model(self.input_ids[:n], self.positions[:n], cutter)
                self.pieces[n] = cutter.end()
                self.layers = cutter.layers
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs for %d prefill token counts (%d..%d, %d pieces each) in %.1f s, "
                    "%.2f GiB more reserved", len(self.buckets), self.buckets[0], self.buckets[-1],
                    len(self.pieces[self.buckets[-1]]), time.perf_counter() - started,
                    (torch.cuda.memory_reserved() - reserved) / 2**30)

    def fits(self, num_tokens: int) -> bool:
        return num_tokens <= self.buckets[-1]

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: Any) -> torch.Tensor:
        """The final hidden states [n, D] of a step's n tokens, attention over the step's ``metadata``."""
        n = input_ids.shape[0]
        bucket = next(b for b in self.buckets if b >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        pieces = self.pieces[bucket]
        q, k, v, out = self.q[:n], self.k[:n], self.v[:n], self.out[:n]
        for layer, piece in zip(self.layers, pieces):
            piece.replay()
            out.copy_(self.backend.forward(layer, q, k, v, metadata))
        pieces[-1].replay()
        return self.hidden[bucket][:n]
