"""CUDA graphs for decode steps: the model forward (and LM head) of batches of single-token requests,
captured once per bucketed batch size over persistent input buffers, replayed every decode step.

A step's batch of n requests runs in the smallest bucket >= n; the extra rows have context length 0
and cache slot -1, so the attention backend skips them and their outputs are ignored.
"""

from __future__ import annotations

import logging
import time
import torch

from pegboard.core.attention import AttentionContext, CudaGraphAttentionBackend

logger = logging.getLogger("pegboard.cuda_graphs")


def batch_buckets(max_batch: int) -> list[int]:
    """Captured batch sizes: 1, 2, 4, then multiples of 8 up to 64 and of 16 beyond, up to max_batch.

    A step runs in the smallest bucket that holds it, so the spacing bounds the padding rows (at most
    15 beyond 64, under 25%); each bucket costs about 0.1 s of start-up to capture.
    """
    sizes = [n for n in (1, 2, 4) if n < max_batch]
    sizes += [n for n in range(8, max_batch + 1, 8) if n <= 64 or n % 16 == 0]
    if not sizes or sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


class DecodeGraphs:
    """Captured decode forwards, one per bucket, sharing one memory pool and one set of input buffers."""

    def __init__(self, model: torch.nn.Module, backend: CudaGraphAttentionBackend, *, max_batch: int, max_blocks: int,
                 device: torch.device) -> None:
        self.model = model
        self.backend = backend
        self.buckets = batch_buckets(max_batch)
        self.max_blocks = max_blocks
        self.input_ids = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((max_batch,), -1, dtype=torch.long, device=device)
        self.context_lens = torch.zeros(max_batch, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_batch, max_blocks, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first, into one shared memory pool."""
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for n in reversed(self.buckets):
            self._forward(n)  # warm-up: compiles kernels, settles allocations
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[n] = self._forward(n)
            self.graphs[n] = graph
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs for %d decode batch sizes (1..%d) in %.1f s", len(self.buckets),
                    self.buckets[-1], time.perf_counter() - started)

    def _forward(self, n: int) -> torch.Tensor:
        metadata = self.backend.decode_metadata(self.slot_mapping[:n], self.block_tables[:n], self.context_lens[:n])
        hidden = self.model(self.input_ids[:n], self.positions[:n], AttentionContext(self.backend, metadata))
        return self.model.compute_logits(hidden)

    def fits(self, batch: int, max_table_len: int) -> bool:
        return batch <= self.buckets[-1] and max_table_len <= self.max_blocks

    @torch.inference_mode()
    def run(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, context_lens: torch.Tensor,
            block_tables: torch.Tensor) -> torch.Tensor:
        """Replay the bucket for these n decodes (device tensors of the step); logits [n, V] float32."""
        n = ids.shape[0]
        bucket = next(b for b in self.buckets if b >= n)
        self.input_ids[:n].copy_(ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(slots)
        self.slot_mapping[n:bucket].fill_(-1)
        self.context_lens[:n].copy_(context_lens)
        self.context_lens[n:bucket].zero_()
        self.block_tables[:n, :block_tables.shape[1]].copy_(block_tables)
        self.graphs[bucket].replay()
        return self.logits[bucket][:n]
