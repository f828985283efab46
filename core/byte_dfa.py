"""ByteDFA: a compiled grammar in the form the device follows (core/device_grammar_processor.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ByteDFA:
    """A compiled grammar as a DFA over bytes, with the tokens' bytes: what a step needs to follow its requests on
    the device (kernels/dfa_walk.py). Host tensors; state 0 is dead."""

    masks: torch.Tensor  # [S, ceil(V / 32)] int32: the tokens each state allows
    transitions: torch.Tensor  # [S, 256] int32
    accepting: torch.Tensor  # [S] bool
    token_bytes: torch.Tensor  # [V, L] uint8, zero-padded
    token_lengths: torch.Tensor  # [V] int32
