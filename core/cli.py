"""The ``pegboard`` command: builds the top-level parser, asks the board for its commands, runs the chosen one.

Every subcommand (``plugins``, ``generate``, ``serve``, ``bench throughput``, ...) is registered by a plugin
through ``register_commands``; plugins add flags to each through ``add_cli_arguments``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import sys
from typing import Collection, Iterator

from pegboard import __version__
from pegboard.core.cli_args import add_plugin_argument, add_plugin_arguments
from pegboard.core.commands import Command
from pegboard.core.config_file import apply_config_file, read_config_file
from pegboard.core.errors import PegboardError, PluginError, PluginLoadError
from pegboard.core.plugins import Board, env_plugins, load_board

logger = logging.getLogger("pegboard.cli")

LOG_LEVELS = ("debug", "info", "warning", "error")

def main(argv: list[str] | None = None) -> int:
    """Run the ``pegboard`` command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    early = _early_options(argv)
    try:
        file_values = read_config_file(early.config) if early.config else {}
    except PegboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plugins = [*_as_list(file_values.get("plugin")), *(early.plugins or [])]
    level = early.log_level or file_values.get("log_level")
    with logging_to_stderr(level if level in LOG_LEVELS else "info"):
        try:
            if early.command not in (None, "plugins"):  # `pegboard plugins` lists failures instead
                check_named_plugins_exist([*env_plugins(), *plugins])
            board = load_board(plugins)
            for failure in board.failures:
                logger.debug("plugin %r failed to load:\n%s", failure.name, failure.traceback)
            parser = build_parser(board, only=(early.command,) if early.command else ())
            if early.config:
                apply_config_file(_command_parser(parser, argv), file_values, early.config)
            args = parser.parse_args(argv)
            args.plugins = plugins  # every --plugin, wherever it was given (the config file's first)
            return args.run(args, board)
        except PegboardError as exc:
            logger.debug("traceback of the error below", exc_info=True)
            print(f"error: {exc}", file=sys.stderr)
            return 2


def check_named_plugins_exist(names: list[str]) -> None:
    """A plugin named by ``--plugin``, the config file or PEGBOARD_PLUGINS that is no importable module stops the
    command at once, in one line (one that fails while importing is refused by name when the engine starts)."""
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package that does not exist, an empty name
            found = False
        if not found:
            raise PluginLoadError(f"plugin {name!r} (--plugin, the --config file or PEGBOARD_PLUGINS) is not an "
                                  "importable module: is it mistyped, or not installed?")


def _early_options(argv: list[str]) -> argparse.Namespace:
    """``--plugin``, ``--log-level`` and ``--config`` (anywhere in argv) and the command, read before the parsers
    exist."""
    early = argparse.ArgumentParser(prog="pegboard", add_help=False, allow_abbrev=False)
    early.add_argument("--plugin", action="append", dest="plugins")
    early.add_argument("--log-level")
    early.add_argument("--config")
    early.add_argument("command", nargs="?")
    return early.parse_known_args(argv)[0]


def _as_list(value: object) -> list[str]:
    return [] if value is None else [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub)command ``argv`` names: ``serve``'s for ``pegboard serve ...``."""
    current = parser
    for token in argv:
        subcommands = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        if subcommands is None:
            break
        if token in subcommands.choices:
            current = subcommands.choices[token]
    return current


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


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the flag, with a pointer to ``--help`` (not the usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser(board: Board, *, only: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every registered command; only the commands whose first word is in ``only`` (default:
    all) add their arguments, so ``pegboard --help`` imports no command's module."""
    parser = OneLineErrorParser(prog="pegboard", description="Pegboard: a plugin-first LLM inference engine.")
    parser.add_argument("--version", action="version", version=f"pegboard {__version__}")
    _add_log_level(parser)
    add_plugin_argument(parser)
    groups = {(): parser.add_subparsers(dest="command", metavar="COMMAND", required=True)}
    for name, command in board.commands.items():
        sub = _group(groups, command.words[:-1], board).add_parser(command.words[-1], help=command.help)
        sub.set_defaults(command=name, run=command.run)
        if only is None or command.words[0] in only:
            _add_arguments(sub, command, board)
    return parser


def _group(groups: dict[tuple[str, ...], argparse._SubParsersAction], words: tuple[str, ...],
           board: Board) -> argparse._SubParsersAction:
    """The subparsers of the command group ``words`` (``("bench",)``), made on first use."""
    if words not in groups:
        members = dict.fromkeys(c.words[len(words)] for _, c in board.commands.items() if c.words[:len(words)] == words)
        group = _group(groups, words[:-1], board).add_parser(words[-1], help=f"commands: {', '.join(members)}")
        groups[words] = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return groups[words]


def _add_arguments(parser: argparse.ArgumentParser, command: Command, board: Board) -> None:
    """The command's own arguments, then ``--log-level``, ``--plugin`` and the flags plugins add."""
    try:
        command.add_arguments(parser)
    except PegboardError:
        raise
    except Exception as exc:
        owner = board.commands.owners[command.name]
        raise PluginError(f"the command 'pegboard {command.name}' (plugin {owner!r}) is unavailable: "
                          f"{type(exc).__name__}: {exc}") from exc
    _add_log_level(parser)
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="take flags from a YAML file, one 'flag-name: value' per line; the command line "
                             "overrides it (default: none)")
    with contextlib.suppress(argparse.ArgumentError):  # add_engine_arguments added it already
        add_plugin_argument(parser)
    add_plugin_arguments(parser, board, command.name)


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="level of pegboard's log messages on stderr (default: info)")


if __name__ == "__main__":
    sys.exit(main())
