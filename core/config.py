"""Engine configuration (no torch): what to load, how big the batch and the KV cache are."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pegboard.core.errors import InvalidParameterError
from pegboard.core.kv_cache_dtype import check_kv_cache_dtype_name
from pegboard.core.speculative_config import normalized_speculative_config, speculative_model_of
from pegboard.core.structured_outputs_config import structured_outputs_backend

DEFAULT_MODEL = "smollm2"
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # what gpu_memory_utilization=None means on CUDA
# vLLM's names: decode-only steps as whole captured graphs, and (piecewise) steps with prefill chunks too.
CUDAGRAPH_MODES = ("full_and_piecewise", "full_decode_only")
CPU_WEIGHTS = ("auto", "fp32", "packed", "int8", "int4")  # core/cpu_weights.py


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
    enforce_eager: bool = False  # no CUDA graphs; on CPU's packed path, no C++ decoder blocks (core/cpu_weights.py)
    cudagraph_mode: str = "full_and_piecewise"  # CUDA graphs for which steps (enforce_eager: none); as vLLM
    cpu_weights: str = "auto"  # auto, fp32, packed (GGUF blocks kept for CPU decode), int8, int4 (core/cpu_weights.py)
    cpu_threads: int | None = None  # torch threads of the engine on CPU; None: every core this process may use
    async_scheduling: bool | None = None  # overlap the host's step work with the device; None: on for CUDA
    revision: str | None = None
    trust_remote_code: bool = False
    skip_tokenizer_init: bool = False
    disable_progress_bar: bool = False
    download_dir: str | None = None  # where hub and packaged models are downloaded; None: their caches
    kv_cache_dtype: str = "auto"  # auto (the model's; float16 on the packed CPU path), float32, float16, bfloat16
    enable_chunked_prefill: bool | None = None  # None or True: prompts over the step's budget go in chunks
    scheduling_policy: str = "fcfs"  # first come, first served; the only policy
    speculative_config: dict | None = None  # vLLM's JSON form of speculative_model / num_speculative_tokens
    generation_config: str = "vllm"  # vllm: the model's generation_config.json is not applied
    structured_outputs_config: dict | None = None  # {"backend": auto|pegboard|xgrammar|llguidance|guidance}
    plugins: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)  # options for plugins

    def __post_init__(self) -> None:
        self.plugins = tuple(self.plugins)
        check_vllm_only_values(self)
        if self.speculative_config is not None:
            self._take_speculative_config()
        structured_outputs_backend(self.structured_outputs_config)  # its keys and backend name, checked now
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
        if self.cpu_weights not in CPU_WEIGHTS:
            raise InvalidParameterError(f"cpu_weights must be one of {', '.join(CPU_WEIGHTS)}; got "
                                        f"{self.cpu_weights!r}", param="cpu_weights")
        if self.cpu_threads is not None and (not isinstance(self.cpu_threads, int) or self.cpu_threads < 1):
            raise InvalidParameterError(f"cpu_threads must be a positive integer, got {self.cpu_threads!r}",
                                        param="cpu_threads")
        if not isinstance(self.seed, int):
            raise InvalidParameterError(f"seed must be an integer, got {self.seed!r}", param="seed")
        if self.kv_cache_memory_gb is not None and not 0 < self.kv_cache_memory_gb < float("inf"):
            raise InvalidParameterError(f"kv_cache_memory_gb must be a number of GiB > 0, got "
                                        f"{self.kv_cache_memory_gb!r}", param="kv_cache_memory_gb")
        self.cudagraph_mode = str(self.cudagraph_mode).lower()  # vLLM writes FULL_AND_PIECEWISE
        if self.cudagraph_mode not in CUDAGRAPH_MODES:
            raise InvalidParameterError(f"cudagraph_mode must be one of {', '.join(CUDAGRAPH_MODES)}; got "
                                        f"{self.cudagraph_mode!r} (enforce_eager turns CUDA graphs off)",
                                        param="cudagraph_mode")
        if self.dtype not in ("auto", "float32", "float", "bfloat16", "float16", "half"):
            raise InvalidParameterError(
                f"dtype must be one of auto, float32, bfloat16, float16; got {self.dtype!r}", param="dtype")
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise InvalidParameterError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
                                        param="device")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise InvalidParameterError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}",
                param="gpu_memory_utilization")

    def _take_speculative_config(self) -> None:
        """``speculative_config`` sets speculative_model and num_speculative_tokens, so neither may be given too."""
        if self.speculative_model is not None or self.num_speculative_tokens is not None:
            raise InvalidParameterError("speculative_config and speculative_model / num_speculative_tokens say the "
                                        "same thing: pass one of them", param="speculative_config")
        self.speculative_config = normalized_speculative_config(self.speculative_config)
        self.speculative_model = speculative_model_of(self.speculative_config)
        self.num_speculative_tokens = self.speculative_config["num_speculative_tokens"]


def check_vllm_only_values(config: EngineConfig) -> None:
    """vLLM settings Pegboard takes only at the value that matches what it does; any other is refused by name."""
    check_kv_cache_dtype_name(config.kv_cache_dtype)
    if config.enable_chunked_prefill is False:
        raise InvalidParameterError(
            "enable_chunked_prefill=False: the scheduler always prefills a prompt that does not fit the step's "
            "token budget (max_num_batched_tokens) in chunks; turning that off is not implemented",
            param="enable_chunked_prefill")
    if config.scheduling_policy != "fcfs":
        reason = ("request priorities are not implemented" if config.scheduling_policy == "priority"
                  else "the policies are fcfs and, in vLLM, priority")
        raise InvalidParameterError(f"scheduling_policy={config.scheduling_policy!r}: {reason}; pass fcfs",
                                    param="scheduling_policy")
    if config.generation_config != "vllm":
        raise InvalidParameterError(
            f"generation_config={config.generation_config!r}: applying a generation_config.json's defaults to "
            "requests is not implemented; pass vllm (requests get SamplingParams' defaults, as vLLM's 'vllm')",
            param="generation_config")
