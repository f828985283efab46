"""GGUF blocks kept for CPU decode: each linear layer (and the LM head) whose checkpoint tensors are Q4_0, Q4_1 or
Q8_0 also holds them packed, one in another block type (K-quants, Q5_*, IQ*) its float32 weight requantized to
8-bit blocks of 32 (Q8_0's format), and batches of up to ``PACKED_MAX_ROWS`` rows multiply by those (a quarter to an
eighth of float32's memory traffic: kernels/cpu_gguf_matmul.py), a decoder layer whose projections are all packed
as two C++ calls around attention (core/cpu_decoder_blocks.py). Larger batches (prefill chunks) run a GEMM of the
dequantized weights: bfloat16 on a CPU with AMX tiles or AVX512-BF16 (2.5-3.9x float32's speed there), float32
elsewhere. The LM head multiplies by its packed blocks at every batch size (faster than its float32 GEMM at all).
``cpu_weights="fp32"`` keeps float32 everywhere (the exact path); the packed one computes nearly the same products
(16-bit activations against the integer quants; bfloat16 prompt products where the CPU runs them natively).
"""

from __future__ import annotations

import logging
from typing import Any, Hashable, Iterable

import torch
from torch import nn

from pegboard.core.cpu_threads import one_cpu_thread
from pegboard.core.errors import InvalidParameterError
from pegboard.core.linear import LinearBase
from pegboard.core.quantization import QuantizationScheme
from pegboard.core.weight_loading import route

logger = logging.getLogger("pegboard.cpu_weights")

# Decode batches (up to 64 rows) use the packed kernel: 1.8-7x float32 F.linear's speed there on SmolLM2's shapes
# (2-core Xeon and AMD EPYC, tests/cpu/bench_cpu_kernels.py). Steps with prefill chunks (256 prompt rows and more on
# CPU) measured slower through it than through the float32 GEMM in the engine (docs/benchmarks.md).
PACKED_MAX_ROWS = 64


def prefill_gemm_dtype() -> torch.dtype:
    """bfloat16 where the CPU multiplies it natively, with AMX tiles (30 layers of SmolLM2 at 290 rows: 61 against
    235 ms in float32, 2-core Xeon) or AVX512-BF16 (SmolLM2's shapes at 256-512 rows: 300-390 against 100-155
    GFLOP/s, 2-core AMD EPYC); float32 elsewhere (bfloat16 there is converted to float32 on the fly)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return torch.bfloat16 if native else torch.float32


def wants_packed_weights(setting: str, device: torch.device, dtype: torch.dtype, loader: Any, tp_size: int) -> bool:
    """Whether this engine packs weights: ``auto`` where it can (CPU, float32, a loader that gives GGUF blocks,
    one rank), ``packed`` there or a clear error, ``int8`` and ``int4`` the same but any checkpoint, ``fp32``
    never."""
    if setting == "fp32":
        return False
    any_checkpoint = setting in ("int8", "int4")
    possible = {"device is not the CPU": device.type != "cpu", "dtype is not float32": dtype != torch.float32,
                "the weights are not a GGUF file": not any_checkpoint and not hasattr(loader, "iter_quantized_blocks"),
                "tensor parallelism splits the blocks": tp_size > 1}
    reasons = [why for why, blocked in possible.items() if blocked]
    if not reasons:
        try:
            from pegboard.kernels.cpu_build import compiled_ops

            compiled_ops()  # built once (about a minute), then loaded from torch's extension cache
        except Exception as exc:  # no C++ compiler, or one that cannot build it
            reasons.append(f"its C++ kernels did not build ({type(exc).__name__}: {str(exc)[:200]})")
            if setting == "auto":
                logger.warning("keeping float32 weights on CPU: the packed GGUF kernels %s", reasons[-1][4:])
    if setting != "auto" and reasons:
        raise InvalidParameterError(f"cpu_weights={setting!r} cannot be used: {'; '.join(reasons)}",
                                    param="cpu_weights")
    return not reasons


class PackedCPUScheme:
    """A layer's own scheme: up to ``max_rows`` rows through its packed GGUF blocks, more through ``base`` (or, given
    ``prefill_weight``, a bfloat16 copy of the layer's weight)."""

    def __init__(self, base: QuantizationScheme, weight: Any, max_rows: int,
                 prefill_weight: torch.Tensor | None = None) -> None:
        self.name = f"{base.name}+gguf{weight.bits}"
        self.base = base
        self.weight = weight  # kernels.cpu_gguf_matmul.PackedGGUFWeight
        self.max_rows = max_rows
        self.prefill_weight = prefill_weight

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], dtype: torch.dtype) -> None:
        raise RuntimeError("a packed scheme is set on a loaded layer; it creates no weights")

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        self.base.process_weights_after_loading(layer)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.shape[0] > self.max_rows:
            if self.prefill_weight is None:
                return self.base.apply(layer, x, bias)
            y = torch.nn.functional.linear(x.to(self.prefill_weight.dtype), self.prefill_weight).float()
        else:
            from pegboard.kernels.cpu_gguf_matmul import packed_matmul

            y = packed_matmul(x, self.weight)
        return y if bias is None else y.add_(bias)


class PackedLMHead(nn.Module):
    """The LM head through its packed blocks at every batch size: faster than its float32 GEMM at all of 1-512 rows
    on SmolLM2's (1.9x at 512, more below: tests/cpu/bench_cpu_kernels.py, docs/benchmarks.md). The float weight
    stays as ``weight`` (a tied embedding's)."""

    def __init__(self, head: nn.Module, weight: Any) -> None:
        super().__init__()
        self.weight = head.weight
        self.packed = weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, D] -> [N, V] float32."""
        from pegboard.kernels.cpu_gguf_matmul import packed_matmul

        return packed_matmul(hidden, self.packed)


def _requantized(weight: torch.Tensor, bits: int) -> Any:
    """8- or 4-bit blocks of a float32 weight (kernels/cpu_gguf_matmul.py: quantize_rows_q8, quantize_rows_q4), or
    None for a width that is not whole blocks."""
    from pegboard.kernels.cpu_gguf_matmul import quantize_rows_q4, quantize_rows_q8

    try:
        return quantize_rows_q8(weight) if bits == 8 else quantize_rows_q4(weight)
    except ValueError:
        return None


def quantized_gguf_types() -> frozenset[int]:
    """Every ggml block type (a block of more than one value): the ones with a kernel are packed as they are, the
    others (K-quants, Q5_*, IQ*) requantized to 8-bit blocks from the loaded float32 weights."""
    from gguf import GGML_QUANT_SIZES

    return frozenset(int(t) for t, (block_size, _) in GGML_QUANT_SIZES.items() if block_size > 1)


def pack_model_weights(model: nn.Module, blocks: Iterable[tuple[str, int, torch.Tensor, tuple[int, ...]]] | None,
                       max_rows: int = PACKED_MAX_ROWS, requantize_bits: int = 8, decoder_blocks: bool = True) -> int:
    """Give every linear layer (and the LM head) whose checkpoint tensors all come in ``blocks`` (HF name, ggml
    type, raw bytes, shape) its packed weights, on one thread (memory-bound copies); returns the bytes packed.
    Other layers stay float32. ``blocks=None`` (``cpu_weights="int8"`` or ``"int4"``): every linear layer gets its
    float32 weight requantized to ``requantize_bits`` blocks (the LM head to 8 bits), whatever the checkpoint.
    ``decoder_blocks=False`` (``enforce_eager``): no C++ call of a layer's work around attention; each op of a
    decode step is dispatched from Python, as on the exact path."""
    with one_cpu_thread():
        shards = _every_layer_requantized(model) if blocks is None else _gguf_shards(model, blocks)
        return _install(model, shards, max_rows, requantize_bits, decoder_blocks)


def _every_layer_requantized(model: nn.Module) -> dict[str, dict[Hashable, Any]]:
    """Each unquantized linear layer and the LM head, every shard marked for 8-bit requantization."""
    shards: dict[str, dict[Hashable, Any]] = {"lm_head": {None: None}} if hasattr(model, "lm_head") else {}
    for name, module in model.named_modules():
        if isinstance(module, LinearBase) and module.scheme.name == "none":
            shards[name] = {shard: None for shard in (module.shard_ids or (None,))}
    return shards


def _gguf_shards(model: nn.Module, blocks: Iterable[tuple[str, int, torch.Tensor, tuple[int, ...]]]
                 ) -> dict[str, dict[Hashable, Any]]:
    """module name -> shard id -> its packed GGUF blocks, or None where the block type has no kernel."""
    from pegboard.kernels.cpu_gguf_matmul import PACKED_TYPES, pack_gguf_rows

    mapping = getattr(model, "packed_modules_mapping", {})
    prefix = getattr(model, "checkpoint_prefix", "")
    shards: dict[str, dict[Hashable, Any]] = {}
    for name, ggml_type, raw, shape in blocks:
        if len(shape) != 2 or not name.endswith(".weight"):
            continue
        param, shard_id = route(name.removeprefix(prefix), mapping)
        module_name = param.removesuffix(".weight")
        if name == f"{prefix}embed_tokens.weight" and getattr(model, "tie_word_embeddings", False):
            module_name, shard_id = "lm_head", None  # the tied head multiplies by the embedding's blocks
        if ggml_type in PACKED_TYPES:
            try:
                packed = pack_gguf_rows(raw, ggml_type, shape)
            except ValueError:
                continue  # a width the kernel does not take: that layer stays float32
        else:
            packed = None  # another block type: the layer's float32 weight is requantized to 8-bit blocks below
        shards.setdefault(module_name, {})[shard_id] = packed
    return shards


def _install(model: nn.Module, shards: dict[str, dict[Hashable, Any]], max_rows: int, bits: int,
             decoder_blocks: bool) -> int:
    """Wrap each layer of ``shards`` in its packed scheme (the LM head in PackedLMHead; a shard without blocks of
    its own requantized to ``bits``), then the C++ norms, rotary and decoder blocks; returns the bytes packed."""
    from pegboard.kernels.cpu_build import compiled_ops
    from pegboard.kernels.cpu_gguf_matmul import concat_packed

    total = 0
    prefill_dtype = prefill_gemm_dtype()
    for module_name, parts in shards.items():
        module = model.get_submodule(module_name)
        if isinstance(module, LinearBase):
            if module.scheme.name != "none":  # another scheme's weights are its own business
                continue
            order = module.shard_ids or (None,)
            if set(parts) != set(order) or module.input_slice not in (None, (0, module.input_size)):
                continue
            if any(parts[s] is None for s in order):  # a shard without a kernel of its own
                weight = _requantized(module.weight, bits)
            else:
                try:
                    weight = concat_packed([parts[s] for s in order])
                except ValueError:  # shards of different kinds (4- and 8-bit): one 8-bit weight
                    weight = _requantized(module.weight, bits)
            if weight is None or weight.shape != tuple(module.weight.shape):
                continue
            prefill = None if prefill_dtype == module.weight.dtype else module.weight.detach().to(prefill_dtype)
            module.scheme = PackedCPUScheme(module.scheme, weight, max_rows, prefill)
        elif module_name == "lm_head" and None in parts:
            # the head stays 8-bit under int4 too, as llama.cpp's 4-bit mixes keep the output tensor at 6-8 bits
            weight = parts[None] if parts[None] is not None else _requantized(module.weight, 8)
            if weight is None or weight.shape != tuple(module.weight.shape):
                continue
            model.lm_head = PackedLMHead(module, weight)
        else:
            continue
        total += weight.nbytes()
    rotary = getattr(model, "rotary", None)
    if rotary is not None and hasattr(rotary, "fused_qk"):
        rotary.fused_qk = compiled_ops().rotary_qk_
    blocks = 0
    decoder_blocks = decoder_blocks and rotary is not None and rotary.fused_qk is not None
    for module in model.modules():  # the packed path is not bit-equal to the exact one anyway: one C++ pass a norm
        if hasattr(module, "fused_add_norm"):
            module.fused_add_norm = compiled_ops().add_rms_norm
        if decoder_blocks and hasattr(module, "use_packed_blocks"):
            blocks += module.use_packed_blocks(compiled_ops(), max_rows)
    logger.info("packed GGUF blocks for CPU decode: %.1f MB (batches up to %d rows; %d layers as C++ blocks); "
                "larger batches: %s GEMMs", total / 1e6, max_rows, blocks, str(prefill_dtype).removeprefix("torch."))
    return total
