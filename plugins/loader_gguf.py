"""Built-in loader "gguf": a single GGUF file -> HF config, fast tokenizer and dequantized weights in HF names."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Container, Iterator

from pegboard.core.errors import UnsupportedModelError
from pegboard.core.hookspecs import hookimpl
from pegboard.core.cpu_threads import one_cpu_thread
from pegboard.core.load_settings import load_settings
from pegboard.core.model_files import ModelFiles

if TYPE_CHECKING:
    import torch

    from pegboard.plugins.gguf_file import GGUFFile, TensorInfo

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_SKIPPED = {"rope_freqs.weight"}  # folded into the config's rope scaling
_NAME = re.compile(r"(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str | None:
    """The HF parameter name of a GGUF tensor name, None when it has no counterpart here."""
    match = _NAME.fullmatch(gguf_name)
    if not match:
        return None
    layer, part, kind = match.groups()
    base = _GLOBAL_NAMES.get(part) if layer is None else _LAYER_NAMES.get(part)
    if base is None:
        return None
    return f"{base}.{kind}" if layer is None else f"model.layers.{layer}.{base}.{kind}"


class GGUFLoader:
    """Loads llama / mistral / qwen2 / qwen3 GGUF files; the file is parsed once and shared by every step."""

    def load_config(self, files: ModelFiles) -> Any:
        from pegboard.plugins.gguf_metadata import gguf_config

        return gguf_config(_open(files))

    def load_tokenizer(self, files: ModelFiles) -> Any:
        from pegboard.plugins.gguf_metadata import gguf_tokenizer

        _check_format(files)
        return gguf_tokenizer(files.path)

    def iter_weights(self, files: ModelFiles, config: Any, device: Any = None) -> Iterator[tuple[str, "torch.Tensor"]]:
        """(HF name, float32 tensor) for every weight, q/k rows restored to HF's rotary layout; dequantized
        on ``device`` (default CPU), so a GPU load moves only the quantized bytes."""
        import torch

        device = torch.device(device or "cpu")
        with one_cpu_thread(device):
            for name, info, raw in self._raw_tensors(files, config, device):
                yield name, _dequantize(raw, info)

    def iter_quantized_blocks(self, files: ModelFiles, config: Any,
                              ggml_types: Container[int]) -> Iterator[tuple[str, int, "torch.Tensor", tuple[int, ...]]]:
        """(HF name, ggml type, flat uint8 GGUF bytes on the CPU, shape) of every weight stored in one of
        ``ggml_types``, rows in HF's order (as ``iter_weights``), for kernels that keep the blocks."""
        for name, info, raw in self._raw_tensors(files, config, None, keep=ggml_types):
            yield name, info.ggml_type, raw, info.shape

    def _raw_tensors(self, files: ModelFiles, config: Any, device: Any, keep: Container[int] | None = None
                     ) -> Iterator[tuple[str, "TensorInfo", "torch.Tensor"]]:
        """(HF name, tensor, raw bytes on ``device``) in file order, q/k rows unpermuted; only ``keep`` types."""
        gguf = _open(files)
        heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
        permute = gguf.architecture == "llama"  # llama.cpp's converter permutes q/k of llama-arch models only
        for name, info in self._plan(gguf):
            if keep is not None and info.ggml_type not in keep:
                continue
            raw = gguf.raw(info) if device is None else gguf.raw(info).to(device)
            part = info.name.split(".")[2] if info.name.startswith("blk.") else ""
            if permute and part in heads:
                raw = _unpermute_rows(raw, info.shape[0], heads[part])
            yield name, info, raw

    def load_weights(self, model: "torch.nn.Module", files: ModelFiles, config: Any) -> None:
        from tqdm.auto import tqdm

        device = next(model.parameters()).device
        weights = self.iter_weights(files, config, device=None if device.type == "meta" else device)
        total = len(self._plan(_open(files)))
        model.load_weights(tqdm(weights, total=total, desc="loading GGUF weights", unit="tensor",
                                mininterval=0.5, disable=load_settings().tqdm_disable))

    @staticmethod
    def _plan(gguf: "GGUFFile") -> list[tuple[str, "TensorInfo"]]:
        """(HF name, tensor) pairs; checks the architecture and every name and type before any work."""
        from pegboard.plugins.gguf_dequant import block_layout
        from pegboard.plugins.gguf_metadata import check_architecture

        check_architecture(gguf)
        plan = []
        for info in gguf.tensors.values():
            if info.name in _SKIPPED:
                continue
            name = hf_name(info.name)
            if name is None:
                raise UnsupportedModelError(
                    f"GGUF tensor {info.name!r} ({gguf.path}) has no counterpart in the "
                    f"{gguf.architecture} model; is this a variant (MoE, vision) pegboard does not support?")
            block_layout(info.ggml_type, info.name)
            plan.append((name, info))
        return plan


def _dequantize(raw: "torch.Tensor", info: "TensorInfo") -> "torch.Tensor":
    from pegboard.plugins.gguf_dequant import dequantize

    return dequantize(raw, info.ggml_type, info.shape, info.name)


def _unpermute_rows(raw: "torch.Tensor", rows: int, n_head: int) -> "torch.Tensor":
    """Undo llama.cpp's q/k row permutation on the raw bytes (rows hold whole blocks), as transformers'
    reverse_permute does on floats: rows [n_head, dim/2, 2] -> [n_head, 2, dim/2]."""
    row_bytes = raw.numel() // rows
    grouped = raw.view(n_head, rows // n_head // 2, 2, row_bytes)
    return grouped.transpose(1, 2).reshape(-1)


def _open(files: ModelFiles) -> "GGUFFile":
    from pegboard.plugins.gguf_file import open_gguf

    _check_format(files)
    return open_gguf(files.path)


def _check_format(files: ModelFiles) -> None:
    if files.format != "gguf":
        raise UnsupportedModelError(f"the gguf loader needs a .gguf file, got {files.format!r} files at {files.path}")


@hookimpl
def register_model_loaders(register) -> None:
    """Register the "gguf" loader."""
    register("gguf", GGUFLoader())
