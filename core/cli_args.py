"""Engine flags with vLLM's names, shared by every command that starts an engine, mapped onto EngineConfig."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any

from pegboard.core.batch_defaults import CPU_MAX_NUM_BATCHED_TOKENS
from pegboard.core.config import CPU_WEIGHTS, DEFAULT_GPU_MEMORY_UTILIZATION, EngineConfig

logger = logging.getLogger("pegboard.cli")

PLUGIN_OPTIONS = "plugin_options"  # args attribute: dests of the flags plugins added (-> EngineConfig.extra)

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EngineConfig)}

def token_count(text: str) -> int:
    """A count of tokens as vLLM writes them: 4096, 4k (x1000), 4K (x1024), 1m (x10^6), 1M (x2^20), 25.6k."""
    scale = {"k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = float(number) * scale if scale > 1 else int(number)
        whole = value == int(value)
    except (ValueError, OverflowError):
        whole = False
    if not whole or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of tokens (e.g. 4096, 4k, 4K)")
    return int(value)


def json_object(text: str) -> dict:
    """A JSON object given on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}, column {exc.colno}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object ({{...}}), got {text!r}")
    return value


# EngineConfig field -> argparse keywords; the flag is the field name in kebab case, ``aliases`` add vLLM's others.
_ENGINE_FLAGS: dict[str, dict[str, Any]] = {
    "dtype": dict(choices=("auto", "float32", "float", "bfloat16", "float16", "half"),
                  help="weight and activation dtype; auto: float32 on CPU, the checkpoint's half type on GPU"),
    "max_model_len": dict(type=token_count, help="context length, e.g. 4096, 4k (4000) or 4K (4096) "
                                                 "(default: the model's)"),
    "max_num_seqs": dict(type=int, help="most sequences in one step"),
    "max_num_batched_tokens": dict(type=int, help=f"most tokens in one step (default: {CPU_MAX_NUM_BATCHED_TOKENS} "
                                                  "on CPU, else max(2048, max_model_len) capped at 8192)"),
    "enable_chunked_prefill": dict(action=argparse.BooleanOptionalAction,
                                   help="prefill a prompt longer than the step's token budget in chunks (default: "
                                        "always on; --no-enable-chunked-prefill is refused)"),
    "block_size": dict(type=int, help="tokens per KV-cache block"),
    "num_kv_blocks": dict(type=int, aliases=("--num-gpu-blocks-override",),
                          help="KV-cache blocks, exactly (default: sized from the memory budget)"),
    "kv_cache_memory_gb": dict(type=float, help="KV-cache size in GiB (default: 4 on CPU; on CUDA what "
                                                "--gpu-memory-utilization leaves)"),
    "gpu_memory_utilization": dict(type=float, help="fraction of GPU memory the engine may fill, CUDA only "
                                                    f"(default: {DEFAULT_GPU_MEMORY_UTILIZATION})"),
    "kv_cache_dtype": dict(help="the KV cache's dtype: auto (the model's; float16 on the packed CPU path), float32, "
                                "float16 or bfloat16 (another than the model's: torch attention backend only); fp8 "
                                "is not implemented"),
    "load_format": dict(help="weight loader: auto, safetensors, gguf, dummy or a plugin's"),
    "download_dir": dict(help="directory hub and packaged models are downloaded to (default: the Hugging Face "
                              "cache; packaged models $PEGBOARD_CACHE or ~/.cache/pegboard)"),
    "quantization": dict(help="quantization scheme, a registered name (default: none: the weights' dtype)"),
    "seed": dict(type=int, help="engine seed"),
    "device": dict(help="auto, cpu, cuda or cuda:N"),
    "attention_backend": dict(help="attention backend: auto, torch, triton or a plugin's"),
    "sampler": dict(help="sampler (a registered name)"),
    "block_allocator": dict(help="KV block allocator, a registered name (default: prefix-caching with "
                                 "--enable-prefix-caching, else plain)"),
    "executor": dict(help="executor (a registered name)"),
    "scheduling_policy": dict(help="fcfs (first come, first served) is the only policy; priority is refused"),
    "tokenizer": dict(help="tokenizer name or path (default: the model's)"),
    "revision": dict(help="hub revision (branch, tag or commit) of the model (default: the main branch)"),
    "generation_config": dict(help="vllm: requests get SamplingParams' defaults; auto or a folder (applying a "
                                   "generation_config.json) is refused"),
    "speculative_model": dict(help="proposer for speculative decoding: [ngram] or a proposer plugin's name "
                                   "(default: none)"),
    "num_speculative_tokens": dict(type=int, help="tokens the proposer guesses per step (default: none)"),
    "speculative_config": dict(type=json_object, metavar="JSON",
                               help='vLLM\'s form, e.g. \'{"method": "ngram", "num_speculative_tokens": 3, '
                                    '"prompt_lookup_max": 4}\'; instead of --speculative-model and '
                                    '--num-speculative-tokens (default: none)'),
    "tensor_parallel_size": dict(type=int, aliases=("-tp",),
                                 help="GPUs per tensor-parallel group (needs a multi-process executor)"),
    "pipeline_parallel_size": dict(type=int, aliases=("-pp",), help="pipeline stages (needs a multi-process executor)"),
    "enable_prefix_caching": dict(action=argparse.BooleanOptionalAction,
                                  help="reuse the KV cache of shared prompt prefixes"),
    "enforce_eager": dict(action="store_true", help="never capture CUDA graphs; on CPU's packed path, no C++ call "
                                                  "of a layer's work around attention (each op from Python)"),
    "cudagraph_mode": dict(type=str.lower, choices=("full_and_piecewise", "full_decode_only"),
                           help="CUDA graphs for decode steps (full_decode_only) or also, cut at attention, for "
                                "steps with prefill chunks"),
    "cpu_weights": dict(choices=CPU_WEIGHTS,
                        help="on CPU: packed keeps a GGUF file's Q4_0/Q4_1/Q8_0 blocks for decode (other block "
                             "types as 8-bit blocks), int8 / int4 requantize any checkpoint's linear layers to 8- / "
                             "4-bit blocks, fp32 keeps float32 (exact); auto: packed where possible"),
    "cpu_threads": dict(type=int, help="torch threads of the engine on CPU (default: every core it may use)"),
    "async_scheduling": dict(action=argparse.BooleanOptionalAction,
                             help="schedule the next step while the device runs this one (default: on for CUDA)"),
    "trust_remote_code": dict(action="store_true", help="let transformers run code shipped with the model's or "
                                                        "the tokenizer's files (custom config or tokenizer classes)"),
    "skip_tokenizer_init": dict(action="store_true", help="load no tokenizer (prompts must be token ids)"),
    "structured_outputs_config": dict(type=json.loads, metavar="JSON",
                                      help='structured-outputs backend, e.g. \'{"backend": "xgrammar"}\' (auto, '
                                           'pegboard, xgrammar, llguidance or guidance; default: the built-in)'),
    "disable_progress_bar": dict(action="store_true", help="show no progress bars (download, weights, prompts; "
                                                           "they show only on a terminal anyway)"),
}


def add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--plugin MODULE`` flag (dest ``plugins``)."""
    parser.add_argument("--plugin", action="append", dest="plugins", metavar="MODULE",
                        help="load this plugin module too (repeatable; PEGBOARD_PLUGINS works as well; default: the "
                             "built-in plugins and installed ones only)")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the engine flags (``--dtype``, ``--max-model-len``, ...); ``--model`` is left to the caller."""
    group = parser.add_argument_group("engine")
    for name, kwargs in _ENGINE_FLAGS.items():
        kwargs = dict(kwargs)
        aliases = kwargs.pop("aliases", ())
        if "(default:" not in kwargs["help"]:
            kwargs["help"] += f" (default: {_default_text(_DEFAULTS[name])})"
        group.add_argument("--" + name.replace("_", "-"), *aliases, dest=name, default=None, **kwargs)
    add_plugin_argument(group)


def _default_text(value: Any) -> str:
    return {True: "on", False: "off", None: "none"}.get(value, str(value)) if isinstance(value, (bool, type(None))) \
        else str(value)


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
