"""``pegboard serve [MODEL]``: the OpenAI-compatible server (``serve.py``, the app of server/), imported when chosen."""

from __future__ import annotations

import argparse

from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import Board


@hookimpl
def register_commands(register) -> None:
    register("serve", add_arguments, run, help="serve the OpenAI-compatible HTTP API")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pegboard.plugins.serve_command import serve

    serve.add_arguments(parser)


def run(args: argparse.Namespace, board: Board) -> int:
    from pegboard.plugins.serve_command import serve

    return serve.main(args, board)
