"""The vocabulary-parallel token embedding and LM head: each rank holds vocab_size / tp_size rows (float)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pegboard.core.parallel import ParallelContext, copy_part, divide
from pegboard.core.quantization import linear_param


class VocabParallelEmbedding(nn.Module):
    """Token ids [T] -> embeddings [T, D]; a rank looks up the ids in its rows, the group sums the parts."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, parallel: ParallelContext,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.parallel = parallel
        rows = divide(num_embeddings, parallel.tp_size, "vocabulary size")
        self.vocab_start = parallel.tp_rank * rows
        self.vocab_end = self.vocab_start + rows
        self.weight = linear_param(torch.empty(rows, embedding_dim, dtype=dtype), input_dim=None,
                                   weight_loader=self.weight_loader)  # [V / tp_size, D]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: None = None) -> None:
        """Copy this rank's rows of the whole [V, D] checkpoint tensor."""
        copy_part(param.data, loaded_weight, {0: (self.vocab_start, self.num_embeddings)})

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [T] -> [T, D]."""
        if self.parallel.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        mine = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)  # [T]
        x = F.embedding((input_ids - self.vocab_start) * mine, self.weight) * mine.unsqueeze(-1)
        return self.parallel.all_reduce(x)


class ParallelLMHead(VocabParallelEmbedding):
    """Hidden states [N, D] -> logits [N, V]: each rank scores its vocabulary rows, the group gathers them."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, D] -> [N, V] in the weights' dtype."""
        logits = F.linear(hidden, self.weight)  # [N, V / tp_size]
        if self.parallel.tp_size == 1:
            return logits
        return self.parallel.all_gather(logits)
