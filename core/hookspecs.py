"""Pegboard's hook specifications: every extension point of the engine, in one file.

Discovery hooks (``register_*``) are called once at start-up with a ``register``
callback that fills a plain registry owned by the host; the per-step path calls the
registered objects directly and never goes through ``pm.hook``.  Observer hooks
(``on_*``) receive one batch-level object per call.  docs/hooks.md documents each hook
with its registered object's interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # annotations only: plugins import this module, which imports nothing heavy
    import argparse

    from starlette.applications import Starlette

    from pegboard.core.async_engine import AsyncLLMEngine
    from pegboard.core.engine import LLMEngine, StepStats
    from pegboard.core.outputs import RequestOutput

PROJECT_NAME = "pegboard"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[..., None]


@hookspec
def register_model_sources(register: Register) -> None:
    """Register model sources: ``register(name, source)``; a source resolves a model string to files."""


@hookspec
def register_model_loaders(register: Register) -> None:
    """Register weight loaders by load format: ``register("gguf", loader)``."""


@hookspec
def register_model_architectures(register: Register) -> None:
    """Register model classes by HF architecture name: ``register("LlamaForCausalLM", cls)``."""


@hookspec
def register_quantization_schemes(register: Register) -> None:
    """Register quantization-scheme factories: ``register("int8", f)``; ``f(hf_config)`` -> QuantizationScheme."""


@hookspec
def register_attention_backends(register: Register) -> None:
    """Register paged-attention backends by name: ``register("torch", backend_cls)``."""


@hookspec
def register_samplers(register: Register) -> None:
    """Register samplers by name: ``register("default", sampler_cls)``; one sampler runs per engine."""


@hookspec
def register_logits_processors(register: Register) -> None:
    """Register batch-wise logits processors by name: ``register("ban_tokens", processor_cls)``."""


@hookspec
def register_grammars(register: Register) -> None:
    """Register guided-decoding grammars by kind: ``register("json_schema", grammar)``."""


@hookspec
def register_tool_parsers(register: Register) -> None:
    """Register tool-call parsers by name: ``register("hermes", parser_cls)``; ``--tool-call-parser`` picks one."""


@hookspec
def register_proposers(register: Register) -> None:
    """Register speculative-decoding proposers by name: ``register("ngram", proposer_cls)``."""


@hookspec
def register_block_allocators(register: Register) -> None:
    """Register KV block allocators by name: ``register("plain", allocator_cls)``."""


@hookspec
def register_executors(register: Register) -> None:
    """Register executors (how model workers run) by name: ``register("uniproc", executor_cls)``."""


@hookspec
def add_cli_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add arguments to the ``pegboard COMMAND`` argument parser."""


@hookspec
def on_engine_start(engine: LLMEngine) -> None:
    """Observe an engine that has loaded its model and is ready to step."""


@hookspec
def on_step_end(stats: StepStats, engine: LLMEngine) -> None:
    """Observe one step of ``engine`` through its batch-level ``StepStats``."""


@hookspec
def on_request_finished(output: RequestOutput, engine: LLMEngine) -> None:
    """Observe a request of ``engine`` that finished, through its final ``RequestOutput``."""


@hookspec
def register_routes(app: Starlette, engine: AsyncLLMEngine) -> None:
    """Add HTTP routes to the server's Starlette ``app`` (e.g. ``/metrics``); ``engine`` is the AsyncLLMEngine."""


@hookspec
def register_commands(register: Register) -> None:
    """Register ``pegboard`` subcommands: ``register(name, add_arguments, run, help="...")`` (core/commands.py)."""
