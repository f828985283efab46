"""Pegboard: a plugin-architecture LLM inference and serving engine.

``from pegboard import LLM, SamplingParams`` is the offline API; ``pegboard serve`` the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_params import StructuredOutputsParams

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "StructuredOutputsParams", "__version__"]

if TYPE_CHECKING:
    from pegboard.core.llm import LLM


def __getattr__(name: str):
    if name == "LLM":  # imports torch: only when asked for
        from pegboard.core.llm import LLM

        return LLM
    raise AttributeError(name)
