"""GGUF metadata -> a model config and a transformers fast tokenizer (llama, mistral-as-llama, qwen2, qwen3)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pegboard.core.errors import UnsupportedModelError
from pegboard.plugins.gguf_cache import cached_directory
from pegboard.plugins.gguf_file import GGUFFile, open_gguf
from pegboard.plugins.gguf_model_config import GGUFModelConfig

# general.architecture -> HF architecture name. Mistral GGUFs say "llama".
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

_CONFIG_TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "pad_token_id": "padding_token_id"}

# llama.cpp stores Llama 3.x rope scaling as a rope_freqs tensor; these are Meta's constants.
_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def check_architecture(gguf: GGUFFile) -> str:
    """The file's architecture, or UnsupportedModelError naming it and the supported ones."""
    arch = gguf.architecture
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} ({gguf.path}) is not supported; supported GGUF architectures: "
            f"{', '.join(ARCHITECTURES)} (Mistral GGUFs are 'llama')")
    return arch


def gguf_config(gguf: GGUFFile) -> GGUFModelConfig:
    """The model config the file's metadata describes (transformers' field names; gguf_model_config.py)."""
    arch = check_architecture(gguf)
    value = gguf.arch_value
    hidden, heads = value("embedding_length"), value("attention.head_count")
    head_dim = value("attention.key_length") or hidden // heads
    embed = gguf.tensors.get("token_embd.weight")
    kwargs: dict[str, Any] = dict(
        model_type=arch,
        architectures=[ARCHITECTURES[arch]],
        vocab_size=embed.shape[0] if embed is not None else len(gguf.metadata.get("tokenizer.ggml.tokens", ())),
        hidden_size=hidden,
        intermediate_size=value("feed_forward_length"),
        num_hidden_layers=value("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=value("attention.head_count_kv", heads),
        head_dim=head_dim,
        max_position_embeddings=value("context_length"),
        rms_norm_eps=value("attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=value("rope.freq_base", 10000.0),
        tie_word_embeddings="output.weight" not in gguf.tensors,
    )
    if arch == "llama":
        kwargs["attention_bias"] = "blk.0.attn_q.bias" in gguf.tensors
        kwargs["mlp_bias"] = "blk.0.ffn_up.bias" in gguf.tensors
    for config_key, gguf_key in _CONFIG_TOKEN_IDS.items():
        if f"tokenizer.ggml.{gguf_key}" in gguf.metadata:
            kwargs[config_key] = gguf.metadata[f"tokenizer.ggml.{gguf_key}"]
    kwargs["rope_scaling"] = _rope_scaling(gguf, head_dim, kwargs["rope_theta"])
    return GGUFModelConfig(**kwargs)


def _rope_scaling(gguf: GGUFFile, head_dim: int, theta: float) -> dict | None:
    """HF rope_scaling from {arch}.rope.scaling.* or a Llama 3 rope_freqs tensor; None when unscaled."""
    scaling_type = gguf.arch_value("rope.scaling.type", "none")
    factor = gguf.arch_value("rope.scaling.factor", 1.0)
    if scaling_type == "linear":
        return {"rope_type": "linear", "factor": factor}
    if scaling_type == "yarn":
        yarn = {"rope_type": "yarn", "factor": factor,
                "original_max_position_embeddings": gguf.arch_value("rope.scaling.original_context_length")}
        for hf_key in ("beta_fast", "beta_slow"):
            if gguf.arch_value(f"rope.scaling.yarn_{hf_key}") is not None:
                yarn[hf_key] = gguf.arch_value(f"rope.scaling.yarn_{hf_key}")
        return yarn
    if scaling_type != "none":
        raise UnsupportedModelError(f"GGUF rope scaling type {scaling_type!r} ({gguf.path}) is not supported")
    if "rope_freqs.weight" in gguf.tensors:
        return _llama3_rope(gguf, head_dim, theta)
    return None


def _llama3_rope(gguf: GGUFFile, head_dim: int, theta: float) -> dict:
    """Recover Llama 3 rope scaling from the rope_freqs tensor llama.cpp writes, checking every factor."""
    factors = gguf.dequantize(gguf.tensors["rope_freqs.weight"]).tolist()
    scaling = {"rope_type": "llama3", "factor": max(factors), **_LLAMA3_ROPE}
    if any(abs(a - b) > 1e-3 * b for a, b in zip(factors, llama3_rope_factors(scaling, head_dim, theta))):
        raise UnsupportedModelError(
            f"{gguf.path} has a rope_freqs tensor that is not Llama 3 rope scaling; custom rope factors are not supported")
    return scaling


def llama3_rope_factors(scaling: dict, head_dim: int, theta: float) -> list[float]:
    """Per-frequency divisors llama.cpp's converter derives from Llama 3 rope scaling."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old_len / high:
            out.append(1.0)
        elif wavelen > old_len / low:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def gguf_tokenizer(path: str) -> Any:
    """The file's own tokenizer through transformers' public GGUF path, or None without a vocabulary; converted
    once, then loaded from its ``save_pretrained`` copy in the cache (gguf_cache.py: 0.2 s against 1-1.5 s).

    ``PreTrainedTokenizerFast.from_pretrained(dir, gguf_file=name)`` is the call AutoTokenizer ends in for
    these files, minus its probe of the model type, which parses the whole file again (3-7 s here). It reads
    only the tokenizer's metadata, so a front end whose engine core runs in another process never parses the
    whole file (about 1 s); only a refusal looks at the whole metadata, for whether there is a vocabulary.
    ``tokenizer_file=""`` keeps transformers from preferring a tokenizer.json that sits beside the file.
    """
    from transformers import PreTrainedTokenizerFast

    file = Path(path)

    def convert() -> Any:
        try:
            return PreTrainedTokenizerFast.from_pretrained(file.parent, gguf_file=file.name, tokenizer_file="")
        except ValueError:
            if "tokenizer.ggml.tokens" not in open_gguf(path).metadata:
                return None
            raise

    def save(tokenizer: Any, directory: Path) -> None:
        if tokenizer is None:
            raise OSError("no vocabulary: nothing to keep")  # not cached; refused again quickly next time
        tokenizer.save_pretrained(directory)

    return cached_directory(path, "tokenizer", "transformers", PreTrainedTokenizerFast.from_pretrained, convert, save)
