"""Engine flags with vLLM's names, shared by every command that starts an engine, mapped onto EngineConfig."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

from pegboard.core.batch_defaults import CPU_MAX_NUM_BATCHED_TOKENS
from pegboard.core.config import DEFAULT_GPU_MEMORY_UTILIZATION, EngineConfig

logger = logging.getLogger("pegboard.cli")

PLUGIN_OPTIONS = "plugin_options"  # args attribute: dests of the flags plugins added (-> EngineConfig.extra)

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EngineConfig)}

# EngineConfig field -> argparse keywords; the flag is the field name in kebab case.
_ENGINE_FLAGS: dict[str, dict[str, Any]] = {
    "dtype": dict(choices=("auto", "float32", "float", "bfloat16", "float16", "half"),
                  help="weight and activation dtype; auto: float32 on CPU, the checkpoint's half type on GPU"),
    "max_model_len": dict(type=int, help="context length (default: the model's)"),
    "max_num_seqs": dict(type=int, help="most sequences in one step"),
    "max_num_batched_tokens": dict(type=int, help=f"most tokens in one step (default: {CPU_MAX_NUM_BATCHED_TOKENS} "
                                                  "on CPU, else max(2048, max_model_len) capped at 8192)"),
    "block_size": dict(type=int, help="tokens per KV-cache block"),
    "num_kv_blocks": dict(type=int, help="KV-cache blocks (default: sized from the memory budget)"),
    "kv_cache_memory_gb": dict(type=float, help="KV-cache size in GiB (default: 4 on CPU; on CUDA what "
                                                "--gpu-memory-utilization leaves)"),
    "gpu_memory_utilization": dict(type=float, help="fraction of GPU memory the engine may fill, CUDA only "
                                                    f"(default: {DEFAULT_GPU_MEMORY_UTILIZATION})"),
    "load_format": dict(help="weight loader: auto, safetensors, gguf, dummy or a plugin's"),
    "quantization": dict(help="quantization scheme (a registered name)"),
    "seed": dict(type=int, help="engine seed"),
    "device": dict(help="auto, cpu, cuda or cuda:N"),
    "attention_backend": dict(help="attention backend: auto, torch, triton or a plugin's"),
    "sampler": dict(help="sampler (a registered name)"),
    "block_allocator": dict(help="KV block allocator (a registered name)"),
    "executor": dict(help="executor (a registered name)"),
    "tokenizer": dict(help="tokenizer name or path (default: the model's)"),
    "revision": dict(help="hub revision (branch, tag or commit) of the model"),
    "speculative_model": dict(help="draft model for speculative decoding, or [ngram] (a proposer plugin)"),
    "num_speculative_tokens": dict(type=int, help="tokens the proposer guesses per step"),
    "tensor_parallel_size": dict(type=int, help="GPUs per tensor-parallel group (needs a multi-process executor)"),
    "pipeline_parallel_size": dict(type=int, help="pipeline stages (needs a multi-process executor)"),
    "enable_prefix_caching": dict(action="store_true", help="reuse the KV cache of shared prompt prefixes"),
    "enforce_eager": dict(action="store_true", help="never capture CUDA graphs"),
    "cpu_weights": dict(choices=("auto", "fp32", "packed"),
                        help="on CPU: packed keeps GGUF Q4_0/Q4_1/Q8_0 blocks for decode, fp32 dequantizes all "
                             "(exact); auto: packed where possible"),
    "cpu_threads": dict(type=int, help="torch threads of the engine on CPU (default: every core it may use)"),
    "async_scheduling": dict(action=argparse.BooleanOptionalAction,
                             help="schedule the next step while the device runs this one (default: on for CUDA)"),
    "trust_remote_code": dict(action="store_true", help="let transformers run code shipped with the model's or "
                                                        "the tokenizer's files (custom config or tokenizer classes)"),
    "skip_tokenizer_init": dict(action="store_true", help="load no tokenizer (prompts must be token ids)"),
    "disable_progress_bar": dict(action="store_true", help="show no progress bars (download, weights, prompts)"),
}


def add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--plugin MODULE`` flag (dest ``plugins``)."""
    parser.add_argument("--plugin", action="append", dest="plugins", metavar="MODULE",
                        help="load this plugin module too (repeatable; PEGBOARD_PLUGINS works as well)")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the engine flags (``--dtype``, ``--max-model-len``, ...); ``--model`` is left to the caller."""
    group = parser.add_argument_group("engine")
    for name, kwargs in _ENGINE_FLAGS.items():
        kwargs = dict(kwargs)
        if kwargs.get("action") != "store_true" and _DEFAULTS[name] is not None:
            kwargs["help"] += f" (default: {_DEFAULTS[name]})"
        group.add_argument("--" + name.replace("_", "-"), default=None, **kwargs)
    add_plugin_argument(group)


def engine_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """EngineConfig keyword arguments for the engine flags that were given, plus plugin flags as ``extra``."""
    kwargs = {name: getattr(args, name) for name in _ENGINE_FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "plugins", None):
        kwargs["plugins"] = tuple(args.plugins)
    extra = {dest: getattr(args, dest) for dest in getattr(args, PLUGIN_OPTIONS, ())
             if getattr(args, dest, None) is not None}
    if extra:
        kwargs["extra"] = extra
    return kwargs


def add_plugin_arguments(parser: argparse.ArgumentParser, board: Any, command: str, *, quiet: bool = False) -> None:
    """Let each plugin's ``add_cli_arguments`` add flags to ``parser``; a plugin that fails is skipped with a
    warning (none when ``quiet``).  The new flags' dests are remembered so their values reach ``EngineConfig.extra``."""
    before = {action.dest for action in parser._actions}
    kwargs = {"parser": parser, "command": command}
    for impl in board.pm.hook.add_cli_arguments.get_hookimpls():
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception as exc:
            if not quiet:
                logger.warning("plugin %r failed to add arguments to 'pegboard %s' and is skipped there: %s: %s",
                               impl.plugin_name, command, type(exc).__name__, exc)
    added = tuple(action.dest for action in parser._actions if action.dest not in before)
    parser.set_defaults(**{PLUGIN_OPTIONS: added})
