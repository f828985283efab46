"""Built-in loader "dummy": the real config and tokenizer, small deterministic random weights (for benchmarks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pegboard.core.errors import UnsupportedModelError
from pegboard.core.hookspecs import hookimpl
from pegboard.core.model_files import ModelFiles

if TYPE_CHECKING:
    import torch

SEED = 0
SCALE = 1e-3
NORM_SUFFIX = "norm.weight"  # input_layernorm, post_attention_layernorm, model.norm, q_norm, k_norm


class DummyLoader:
    """Reads config and tokenizer through the loader of the files' format; never reads weight files."""

    def load_config(self, files: ModelFiles) -> Any:
        return _format_loader(files).load_config(files)

    def load_tokenizer(self, files: ModelFiles) -> Any:
        return _format_loader(files).load_tokenizer(files)

    def load_weights(self, model: "torch.nn.Module", files: ModelFiles, config: Any) -> None:
        """Norm weights 1.0, every other floating-point parameter uniform(-SCALE, SCALE), seeded, on its device."""
        import torch

        generators: dict[torch.device, torch.Generator] = {}
        with torch.no_grad():
            for name, param in model.named_parameters():
                if not param.is_floating_point():
                    continue
                if name.endswith(NORM_SUFFIX):
                    param.fill_(1.0)
                    continue
                if param.device not in generators:
                    generators[param.device] = torch.Generator(device=param.device).manual_seed(SEED)
                param.uniform_(-SCALE, SCALE, generator=generators[param.device])


def _format_loader(files: ModelFiles) -> Any:
    if files.format == "hf":
        from pegboard.plugins.loader_safetensors import SafetensorsLoader

        return SafetensorsLoader()
    if files.format == "gguf":
        from pegboard.plugins.loader_gguf import GGUFLoader

        return GGUFLoader()
    raise UnsupportedModelError(f"the dummy loader cannot read a config from {files.format!r} files ({files.path})")


@hookimpl
def register_model_loaders(register) -> None:
    """Register the "dummy" loader."""
    register("dummy", DummyLoader())
