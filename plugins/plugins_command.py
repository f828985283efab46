"""``pegboard plugins [--json]``: every loaded plugin, what it registered per family, and the plugins that failed."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import FAMILIES, Board


@hookimpl
def register_commands(register) -> None:
    register("plugins", add_arguments, run, help="list loaded plugins and what they registered")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, board: Board) -> int:
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
