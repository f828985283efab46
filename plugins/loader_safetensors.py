"""Built-in loader "safetensors": an HF directory (config.json, *.safetensors, tokenizer files)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from pegboard.core.errors import ModelNotFoundError, UnsupportedModelError
from pegboard.core.hookspecs import hookimpl
from pegboard.core.load_settings import load_settings
from pegboard.core.model_files import ModelFiles

if TYPE_CHECKING:
    import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class SafetensorsLoader:
    """Config and tokenizer through transformers, weights straight from the safetensors files."""

    def load_config(self, files: ModelFiles) -> Any:
        from transformers import AutoConfig

        with _custom_code_refused(files):
            return AutoConfig.from_pretrained(files.path, trust_remote_code=load_settings().trust_remote_code)

    def load_tokenizer(self, files: ModelFiles) -> Any:
        if not any((Path(files.path) / name).is_file() for name in TOKENIZER_FILES):
            return None
        from transformers import AutoTokenizer

        with _custom_code_refused(files):
            return AutoTokenizer.from_pretrained(files.path, trust_remote_code=load_settings().trust_remote_code)

    def weight_files(self, files: ModelFiles) -> dict[Path, list[str]]:
        """Each weight file with the tensor names to read from it (all of them for a single file)."""
        directory = Path(files.path)
        index = directory / INDEX_FILE
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            shards: dict[Path, list[str]] = {}
            for name, shard in weight_map.items():
                shards.setdefault(directory / shard, []).append(name)
            missing = sorted(p.name for p in shards if not p.is_file())
            if missing:
                raise ModelNotFoundError(f"{directory} is missing weight files listed in {INDEX_FILE}: "
                                         f"{', '.join(missing)}")
            return dict(sorted(shards.items()))
        single = directory / SINGLE_FILE
        if not single.is_file():
            raise ModelNotFoundError(
                f"{directory} has no weights: neither {SINGLE_FILE} nor {INDEX_FILE} "
                "(only safetensors weights are supported)")
        from safetensors import safe_open

        with safe_open(single, framework="pt") as f:
            return {single: list(f.keys())}

    def iter_weights(self, files: ModelFiles, config: Any) -> Iterator[tuple[str, "torch.Tensor"]]:
        """(HF name, tensor) for every tensor, shard by shard, in the stored dtype."""
        from safetensors import safe_open

        for path, names in self.weight_files(files).items():
            with safe_open(path, framework="pt") as f:
                for name in names:
                    yield name, f.get_tensor(name)

    def load_weights(self, model: "torch.nn.Module", files: ModelFiles, config: Any) -> None:
        from tqdm.auto import tqdm

        total = sum(len(names) for names in self.weight_files(files).values())
        model.load_weights(tqdm(self.iter_weights(files, config), total=total, desc="loading weights",
                                unit="tensor", mininterval=0.5, disable=load_settings().tqdm_disable))


@contextmanager
def _custom_code_refused(files: ModelFiles) -> Iterator[None]:
    """transformers' refusal of a config or tokenizer class shipped as code, as an error naming the setting."""
    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise UnsupportedModelError(f"{files.path} ships code for its config or tokenizer, which runs only with "
                                    "--trust-remote-code (trust_remote_code=True)") from None


@hookimpl
def register_model_loaders(register) -> None:
    """Register the "safetensors" loader."""
    register("safetensors", SafetensorsLoader())
