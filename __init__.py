"""Pegboard: a plugin-architecture LLM inference and serving engine.

``from pegboard import LLM, SamplingParams`` is the offline API; ``pegboard serve`` the server.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING


def _leave_off_sys_path(source_root: str) -> None:
    """Take a Pegboard source tree's own folder off sys.path (``python -m ...`` run in it puts it there)."""
    # There `core`, `server` and `kernels` would be top-level names, and `kernels` would shadow PyPI's `kernels`,
    # which transformers (>= 5.25) requires and imports.
    root = os.path.realpath(source_root)
    sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) != root]


_leave_off_sys_path(os.path.dirname(__file__))  # this package's own tree, where it is imported from one

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
