"""The start-up check of an engine's settings: one that would do nothing, or contradicts another, is refused by name.

``EngineConfig.__post_init__`` checks each value alone; this checks them together and against the loaded plugins,
before the model loads. docs/settings.md says what each setting does.
"""

from __future__ import annotations

import argparse
from typing import Any

from pegboard.core.config import EngineConfig
from pegboard.core.errors import InvalidParameterError, PluginError, PluginLoadError

SERVER_OPTIONS = ("served_model_name", "log_stats")  # EngineConfig.extra keys pegboard serve sets itself
ENGINE_COMMANDS = ("generate", "serve", "bench throughput")


def check_settings(config: EngineConfig, board: Any) -> None:
    """Raise, naming the setting, when one would be ignored or asks for what nothing provides."""
    _check_plugins_loaded(config, board)
    _check_front_end(config)
    _check_kv_cache_size(config)
    if config.enable_prefix_caching and config.block_allocator != "prefix-caching":
        raise InvalidParameterError(
            f"enable_prefix_caching picks the 'prefix-caching' block allocator, but block_allocator="
            f"{config.block_allocator!r} was asked for: pass one of the two", param="enable_prefix_caching")
    if config.async_scheduling and (config.speculative_model or config.num_speculative_tokens):
        raise InvalidParameterError(
            "async_scheduling=True cannot run with speculative decoding (how many proposed tokens a step accepts "
            "decides the next step's inputs): drop one of them", param="async_scheduling")
    method = (config.speculative_config or {}).get("method", "ngram")
    if method != "ngram" and method not in board.proposers:
        raise PluginError(f"speculative_config method {method!r}: no loaded proposer plugin registers it (available: "
                          f"{', '.join(board.proposers.names()) or 'none'}); eagle, medusa, mtp and draft models are "
                          "not implemented")
    for registry, name, setting in ((board.samplers, config.sampler, "sampler"),
                                    (board.attention_backends, config.attention_backend, "attention_backend")):
        if name != "auto" and name not in registry:
            available = ", ".join(registry.names()) or "none"
            raise PluginError(f"{setting}={name!r}: no loaded plugin registers one by that name "
                              f"(available: {available})")
    _check_extra(config, board)


def _check_plugins_loaded(config: EngineConfig, board: Any) -> None:
    """A plugin named by ``--plugin`` / ``plugins=`` / PEGBOARD_PLUGINS that failed to load stops the engine."""
    from pegboard.core.plugins import env_plugins

    failed = {failure.name: failure.error for failure in board.failures}
    for name in (*env_plugins(), *config.plugins):
        if isinstance(name, str) and name in failed:
            raise PluginLoadError(f"plugin {name!r} (--plugin, plugins= or PEGBOARD_PLUGINS) failed to load: "
                                  f"{failed[name]}")


def _check_front_end(config: EngineConfig) -> None:
    from pegboard.core.tokenizer_loading import check_tokenizer_exists

    if config.tokenizer is not None:
        if config.skip_tokenizer_init:
            raise InvalidParameterError("tokenizer and skip_tokenizer_init contradict each other: with "
                                        "skip_tokenizer_init no tokenizer is loaded", param="tokenizer")
        check_tokenizer_exists(config.tokenizer)


def _check_kv_cache_size(config: EngineConfig) -> None:
    """One setting sizes the KV cache: num_kv_blocks, else kv_cache_memory_gb, else gpu_memory_utilization (CUDA)."""
    given = [name for name in ("num_kv_blocks", "kv_cache_memory_gb", "gpu_memory_utilization")
             if getattr(config, name) is not None]
    if len(given) > 1:
        raise InvalidParameterError(f"{' and '.join(given)} each size the KV cache: pass one of them", param=given[1])
    if config.gpu_memory_utilization is not None and not _on_cuda(config.device):
        raise InvalidParameterError(
            f"gpu_memory_utilization sizes the KV cache on a CUDA device, and this engine runs on the CPU "
            f"(device={config.device!r}): size it with kv_cache_memory_gb or num_kv_blocks",
            param="gpu_memory_utilization")


def _on_cuda(device: str) -> bool:
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def _check_extra(config: EngineConfig, board: Any) -> None:
    """Every ``extra`` key is an option a loaded plugin declares (its flag's dest) or one the server sets."""
    unknown = set(config.extra) - set(SERVER_OPTIONS)
    if not unknown:
        return
    known = plugin_options(board)
    unknown -= known
    if unknown:
        raise InvalidParameterError(
            f"extra option(s) {', '.join(map(repr, sorted(unknown)))}: no loaded plugin declares them (a plugin's "
            f"options are the dests of the flags it adds; declared now: {', '.join(sorted(known)) or 'none'}); "
            "is the plugin that reads them loaded?", param="extra")


def plugin_options(board: Any) -> set[str]:
    """The dests of the flags plugins add to the commands that start an engine."""
    from pegboard.core.cli_args import PLUGIN_OPTIONS, add_plugin_arguments

    options: set[str] = set()
    for command in {*ENGINE_COMMANDS, *board.commands.names()}:
        parser = argparse.ArgumentParser(add_help=False)
        add_plugin_arguments(parser, board, command, quiet=True)
        options.update(parser.get_default(PLUGIN_OPTIONS))
    return options
