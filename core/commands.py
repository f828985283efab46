"""A ``pegboard`` subcommand as a plugin registers it: its name, how it adds its arguments, how it runs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from pegboard.core.errors import PluginError

if TYPE_CHECKING:
    from pegboard.core.plugins import Board

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, "Board"], int]


@dataclass(frozen=True)
class Command:
    """``register(name, add_arguments, run, help=...)``: a name of one or more words (``"bench serve"`` is
    ``serve`` under the group ``bench``), ``add_arguments(parser)``, ``run(args, board) -> exit status``."""

    name: str
    add_arguments: AddArguments
    run: Run
    help: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.split() or " ".join(self.name.split()) != self.name:
            raise PluginError(f"command name {self.name!r} must be words separated by single spaces")
        for part in ("add_arguments", "run"):
            if not callable(getattr(self, part)):
                raise PluginError(f"command {self.name!r}: {part} must be callable")

    @property
    def words(self) -> tuple[str, ...]:
        """The name's words: the groups, then the command itself."""
        return tuple(self.name.split())
