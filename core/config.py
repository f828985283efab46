"""Engine configuration (no torch): what to load, how big the batch and the KV cache are."""

from __future__ import annotations

from dataclasses import dataclass, field

from pegboard.core.errors import InvalidParameterError

DEFAULT_MODEL = "smollm2"
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # what gpu_memory_utilization=None means on CUDA


@dataclass
class EngineConfig:
    """Every knob of one engine; ``LLM(**kwargs)`` and ``pegboard serve`` flags map onto it."""

    model: str = DEFAULT_MODEL
    tokenizer: str | None = None
    dtype: str = "auto"  # auto, float32, bfloat16, float16
    max_model_len: int | None = None  # None: the model's context length
    max_num_seqs: int = 128
    max_num_batched_tokens: int | None = None  # None: core/batch_defaults.py (small on CPU)
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: sized from kv_cache_memory_gb / gpu_memory_utilization
    kv_cache_memory_gb: float | None = None  # KV cache size; None: 4 GiB on CPU, gpu_memory_utilization on CUDA
    gpu_memory_utilization: float | None = None  # CUDA only; None: DEFAULT_GPU_MEMORY_UTILIZATION
    load_format: str = "auto"  # auto, safetensors, gguf, dummy
    quantization: str | None = None
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    attention_backend: str = "auto"
    sampler: str = "default"
    block_allocator: str | None = None  # None: "prefix-caching" with enable_prefix_caching, else "plain"
    executor: str = "uniproc"
    enable_prefix_caching: bool = False
    speculative_model: str | None = None  # a draft model name, or "[ngram]"
    num_speculative_tokens: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    enforce_eager: bool = False
    cpu_weights: str = "auto"  # auto, fp32, packed: GGUF blocks kept for CPU decode (core/cpu_weights.py)
    cpu_threads: int | None = None  # torch threads of the engine on CPU; None: every core this process may use
    async_scheduling: bool | None = None  # overlap the host's step work with the device; None: on for CUDA
    revision: str | None = None
    trust_remote_code: bool = False
    skip_tokenizer_init: bool = False
    disable_progress_bar: bool = False
    plugins: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)  # options for plugins

    def __post_init__(self) -> None:
        self.plugins = tuple(self.plugins)
        if self.block_allocator is None:
            self.block_allocator = "prefix-caching" if self.enable_prefix_caching else "plain"
        for name in ("max_num_seqs", "block_size", "tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}", param=name)
        for name in ("max_model_len", "max_num_batched_tokens", "num_kv_blocks", "num_speculative_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}", param=name)
        if self.cpu_weights not in ("auto", "fp32", "packed"):
            raise InvalidParameterError(f"cpu_weights must be one of auto, fp32, packed; got {self.cpu_weights!r}",
                                        param="cpu_weights")
        if self.cpu_threads is not None and (not isinstance(self.cpu_threads, int) or self.cpu_threads < 1):
            raise InvalidParameterError(f"cpu_threads must be a positive integer, got {self.cpu_threads!r}",
                                        param="cpu_threads")
        if not isinstance(self.seed, int):
            raise InvalidParameterError(f"seed must be an integer, got {self.seed!r}", param="seed")
        if self.kv_cache_memory_gb is not None and not 0 < self.kv_cache_memory_gb < float("inf"):
            raise InvalidParameterError(f"kv_cache_memory_gb must be a number of GiB > 0, got "
                                        f"{self.kv_cache_memory_gb!r}", param="kv_cache_memory_gb")
        if self.dtype not in ("auto", "float32", "float", "bfloat16", "float16", "half"):
            raise InvalidParameterError(
                f"dtype must be one of auto, float32, bfloat16, float16; got {self.dtype!r}", param="dtype")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise InvalidParameterError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}",
                param="gpu_memory_utilization")
