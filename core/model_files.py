"""Where a model comes from (sources) and how its files become config, tokenizer and weights (loaders)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pegboard.core.errors import ModelNotFoundError, PluginError

if TYPE_CHECKING:  # keep this module torch-free at import time
    import torch


@dataclass(frozen=True)
class ModelFiles:
    """A resolved model: an HF directory (``format="hf"``) or a single GGUF file (``format="gguf"``)."""

    path: str
    format: str
    name: str  # the name users asked for (served model name by default)
    source: str = ""  # which source resolved it


@runtime_checkable
class ModelSource(Protocol):
    """Resolves a model string to files; sources are tried by ascending ``priority``."""

    priority: int

    def resolve(self, model: str, *, revision: str | None = None) -> ModelFiles | None:
        """Files for ``model``, None when this source does not handle it; raise ModelNotFoundError when
        it does handle it but the files cannot be had."""


@runtime_checkable
class ModelLoader(Protocol):
    """Turns model files into an HF config, a tokenizer and weights in HF parameter names."""

    def load_config(self, files: ModelFiles) -> Any:
        """The model's config: a ``transformers.PretrainedConfig``, or any object with its fields (the GGUF
        loader's ``GGUFModelConfig``)."""

    def load_tokenizer(self, files: ModelFiles) -> Any:
        """A ``transformers`` fast tokenizer with the chat template set, or None when the files have none."""

    def load_weights(self, model: torch.nn.Module, files: ModelFiles, config: Any) -> None:
        """Fill ``model``'s parameters in place, typically via ``model.load_weights(named_tensors)``."""


def resolve_model(sources: Any, model: str, *, revision: str | None = None) -> ModelFiles:
    """Ask each registered source, lowest priority first, for the model's files."""
    ordered = sorted(sources.items(), key=lambda item: item[1].priority)
    for _, source in ordered:
        files = source.resolve(model, revision=revision)
        if files is not None:
            return files
    names = ", ".join(name for name, _ in ordered) or "none"
    raise ModelNotFoundError(
        f"model {model!r} was not found: it is not a local path, a packaged model or a hub id "
        f"(sources tried: {names})")


def pick_loader(loaders: Any, files: ModelFiles, load_format: str) -> tuple[str, ModelLoader]:
    """The loader for ``load_format``; ``auto`` picks by the files' format."""
    name = load_format
    if load_format == "auto":
        name = {"hf": "safetensors", "gguf": "gguf"}.get(files.format, files.format)
    if name not in loaders:
        available = ", ".join(loaders.names()) or "none"
        raise PluginError(f"no model loader for load format {name!r} (available: {available})")
    return name, loaders.get(name)

