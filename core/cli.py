"""The ``pegboard`` command: ``plugins``, ``generate``, ``serve``, ``bench throughput|serve``; plugins add flags."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import sys
from typing import Any, Callable, Iterator

from pegboard import __version__
from pegboard.core.cli_args import (add_engine_arguments, add_plugin_argument, add_plugin_arguments,
                                    engine_kwargs_from_args)
from pegboard.core.config import DEFAULT_MODEL
from pegboard.core.errors import PegboardError
from pegboard.core.plugins import FAMILIES, Board, load_board
from pegboard.server import serve as serve_command

logger = logging.getLogger("pegboard.cli")

LOG_LEVELS = ("debug", "info", "warning", "error")
# name -> module with add_arguments / main
BENCHMARKS = {"throughput": "pegboard.plugins.bench.throughput", "serve": "pegboard.plugins.bench.serve"}

Command = Callable[[argparse.Namespace, Board], int]


def main(argv: list[str] | None = None) -> int:
    """Run the ``pegboard`` command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    early = _early_options(argv)
    with logging_to_stderr(early.log_level if early.log_level in LOG_LEVELS else "info"):
        try:
            board = load_board(early.plugins or ())
            for failure in board.failures:
                logger.debug("plugin %r failed to load:\n%s", failure.name, failure.traceback)
            parser = build_parser(board, load_benchmarks=early.command == "bench")
            args = parser.parse_args(argv)
            args.plugins = early.plugins or []  # every --plugin, wherever it was given
            return args.run(args, board)
        except PegboardError as exc:
            logger.debug("traceback of the error below", exc_info=True)
            print(f"error: {exc}", file=sys.stderr)
            return 2


def _early_options(argv: list[str]) -> argparse.Namespace:
    """``--plugin`` and ``--log-level`` (anywhere in argv) and the command, read before the parsers exist."""
    early = argparse.ArgumentParser(prog="pegboard", add_help=False, allow_abbrev=False)
    early.add_argument("--plugin", action="append", dest="plugins")
    early.add_argument("--log-level")
    early.add_argument("command", nargs="?")
    return early.parse_known_args(argv)[0]


@contextlib.contextmanager
def logging_to_stderr(level: str) -> Iterator[None]:
    """Send pegboard's log records at ``level`` and above to stderr while the command runs."""
    pegboard_logger = logging.getLogger("pegboard")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    previous_level = pegboard_logger.level
    pegboard_logger.addHandler(handler)
    pegboard_logger.setLevel(level.upper())
    try:
        yield
    finally:
        pegboard_logger.removeHandler(handler)
        pegboard_logger.setLevel(previous_level)


def build_parser(board: Board, *, load_benchmarks: bool = False) -> argparse.ArgumentParser:
    """The full parser, with the flags plugins add; benchmark modules are imported only when asked for."""
    parser = argparse.ArgumentParser(prog="pegboard", description="Pegboard: a plugin-first LLM inference engine.")
    parser.add_argument("--version", action="version", version=f"pegboard {__version__}")
    _add_log_level(parser)
    add_plugin_argument(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    plugins = commands.add_parser("plugins", help="list loaded plugins and what they registered")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    _add_log_level(plugins)
    add_plugin_argument(plugins)
    _finish(plugins, board, "plugins", run_plugins)

    generate = commands.add_parser("generate", help="generate text for prompts (offline)")
    _add_generate_arguments(generate)
    add_engine_arguments(generate)
    _add_log_level(generate)
    _finish(generate, board, "generate", run_generate)

    serve = commands.add_parser("serve", help="serve the OpenAI-compatible HTTP API")
    serve_command.add_arguments(serve)
    _add_log_level(serve)
    _finish(serve, board, "serve", serve_command.main)

    bench = commands.add_parser("bench", help="benchmarks")
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module_path in BENCHMARKS.items():
        sub = benchmarks.add_parser(name, help=f"the {name} benchmark")
        module = _import_benchmark(name, module_path) if load_benchmarks else None
        if module is not None:
            module.add_arguments(sub)
        _add_log_level(sub)
        _finish(sub, board, f"bench {name}", lambda args, _board, m=module: m.main(args))
    return parser


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="level of pegboard's log messages on stderr (default: info)")


def _finish(parser: argparse.ArgumentParser, board: Board, command: str, run: Command) -> None:
    add_plugin_arguments(parser, board, command)
    parser.set_defaults(run=run)


def _import_benchmark(name: str, module_path: str) -> Any:
    try:
        return importlib.import_module(module_path)
    except ImportError as exc:
        raise PegboardError(f"the {name} benchmark is unavailable: {type(exc).__name__}: {exc}") from exc


def _add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"model name, path or hub id (default: {DEFAULT_MODEL})")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    parser.add_argument("--chat", action="store_true", help="send each prompt as a user message of a chat")
    sampling = parser.add_argument_group("sampling (default: SamplingParams' defaults)")
    sampling.add_argument("--max-tokens", type=int, help="tokens to generate per prompt (default: 16)")
    sampling.add_argument("--temperature", type=float, help="0 for greedy (default: 1.0)")
    sampling.add_argument("--top-p", type=float)
    sampling.add_argument("--top-k", type=int)
    sampling.add_argument("--n", type=int, help="completions per prompt (default: 1)")


# ---- commands ------------------------------------------------------------------------------------


def run_plugins(args: argparse.Namespace, board: Board) -> int:
    """Print every loaded plugin with what it registered per family, then the plugins that failed."""
    report = plugins_report(board)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for plugin in report["plugins"]:
        print(plugin["name"])
        for family, names in plugin["registered"].items():
            print(f"  {family}: {', '.join(names)}")
        if plugin["hooks"]:
            print(f"  hooks: {', '.join(plugin['hooks'])}")
    if report["failures"]:
        print("\nfailed to load:")
        for failure in report["failures"]:
            print(f"  {failure['name']}: {failure['error']}")
    return 0


def plugins_report(board: Board) -> dict[str, list[dict[str, Any]]]:
    """Loaded plugins (registrations per family, other hooks implemented) and failed ones, as plain data."""
    discovery = set(FAMILIES.values())
    plugins = []
    for name in board.plugin_names():
        callers = board.pm.get_hookcallers(board.pm.get_plugin(name)) or []
        hooks = sorted(caller.name for caller in callers if caller.name not in discovery)
        plugins.append({"name": name, "registered": board.registered_by(name), "hooks": hooks})
    failures = [{"name": f.name, "error": f.error} for f in board.failures]
    return {"plugins": plugins, "failures": failures}


def run_generate(args: argparse.Namespace, board: Board) -> int:
    """Generate for each ``--prompt`` and print the texts."""
    from pegboard.core.llm import LLM
    from pegboard.core.sampling_params import SamplingParams

    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "top_k": args.top_k, "n": args.n}
    params = SamplingParams(**{k: v for k, v in sampling.items() if v is not None})
    llm = LLM(args.model, board=board, **engine_kwargs_from_args(args))
    show_progress = sys.stderr.isatty()
    if args.chat:
        conversations = [[{"role": "user", "content": prompt}] for prompt in args.prompt]
        outputs = llm.chat(conversations, params, use_tqdm=show_progress)
    else:
        outputs = llm.generate(args.prompt, params, use_tqdm=show_progress)
    several = len(outputs) > 1 or params.n > 1
    for i, output in enumerate(outputs):
        for completion in output.outputs:
            if several:
                print(f"--- prompt {i}" + (f", completion {completion.index}" if params.n > 1 else "") + " ---")
            print(completion.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
