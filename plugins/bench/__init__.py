"""``pegboard bench throughput`` and ``pegboard bench serve``; each benchmark's module is imported only when chosen."""

from __future__ import annotations

import argparse
import importlib
from functools import partial
from types import ModuleType

from pegboard.core.errors import PegboardError
from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import Board

# name -> module with add_arguments(parser) / main(args)
BENCHMARKS = {"throughput": "pegboard.plugins.bench.throughput", "serve": "pegboard.plugins.bench.serve"}
HELP = {"throughput": "offline throughput of pegboard and HF transformers on the same prompts",
        "serve": "latency and throughput of an OpenAI-compatible server under load"}


@hookimpl
def register_commands(register) -> None:
    for name in BENCHMARKS:
        register(f"bench {name}", partial(add_arguments, name), partial(run, name), help=HELP.get(name, ""))


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    benchmark(name).add_arguments(parser)


def run(name: str, args: argparse.Namespace, board: Board) -> int:
    return benchmark(name).main(args)


def benchmark(name: str) -> ModuleType:
    """The benchmark's module; a PegboardError naming it when it cannot be imported."""
    try:
        return importlib.import_module(BENCHMARKS[name])
    except ImportError as exc:
        raise PegboardError(f"the {name} benchmark is unavailable: {type(exc).__name__}: {exc}") from exc
