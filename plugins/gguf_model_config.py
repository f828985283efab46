"""A GGUF file's model config as a plain frozen record of the HF config fields the engine and models read.

The engine does not build a transformers config for a GGUF file: importing one (``LlamaConfig``) pulls in
transformers' configuration and rope machinery, 1.4-1.7 s of a 5 s start-up budget on a 2-core machine
(docs/benchmarks.md), for a dozen numbers. ``to_transformers()`` builds the real one where transformers needs it
(the HF reference model in ``pegboard bench throughput``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# general.architecture -> (transformers config class, HF model_type)
TRANSFORMERS_CONFIGS = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config"}


@dataclass(frozen=True)
class GGUFModelConfig:
    """The fields of a transformers config that a GGUF file's metadata gives, under transformers' names."""

    model_type: str  # llama, qwen2 or qwen3 (Mistral files say llama)
    architectures: list[str]
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    rope_scaling: dict[str, Any] | None = None  # transformers' form ("rope_type", "factor", ...), None: unscaled
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    hidden_act: str = "silu"
    dtype: Any = None  # a GGUF file states no dtype to run in (core/devices.py picks one)
    rope_parameters: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        params = {**(self.rope_scaling or {"rope_type": "default"}), "rope_theta": self.rope_theta}
        object.__setattr__(self, "rope_parameters", params)  # transformers 5's form of the two fields above

    def to_transformers(self) -> Any:
        """The transformers config (LlamaConfig, Qwen2Config, Qwen3Config) with these values."""
        import transformers

        kwargs = {k: v for k, v in asdict(self).items() if k not in ("model_type", "rope_parameters", "dtype")}
        if kwargs["rope_scaling"] is None:
            del kwargs["rope_scaling"]
        if self.model_type != "llama":  # Qwen configs have no such fields (Qwen2 always has q/k/v biases)
            del kwargs["attention_bias"], kwargs["mlp_bias"]
        return getattr(transformers, TRANSFORMERS_CONFIGS[self.model_type])(**kwargs)
