"""An example Pegboard plugin: bans token ids (``--ban-token-id N`` or ``LLM(extra={"ban_token_ids": [N]})``).

This module is what Pegboard imports at start-up, so it stays cheap: no torch here, the
processor's module is imported only when an engine builds it.
"""

from __future__ import annotations

from typing import Any

from pegboard.core.hookspecs import hookimpl

NAME = "example_ban_tokens"
OPTION = "ban_token_ids"  # EngineConfig.extra key, and the dest of --ban-token-id
COMMANDS = ("generate", "serve", "bench throughput")  # the commands that start an engine get the flag


def make_processor(*, vocab_size: int, device: Any, config: Any) -> Any:
    """Build the processor for one engine (called once per engine, not per step)."""
    from pegboard_example_plugin.ban_tokens import BanTokens

    return BanTokens(config.extra.get(OPTION) or [], vocab_size=vocab_size, device=device)


@hookimpl
def register_logits_processors(register) -> None:
    register(NAME, make_processor)


@hookimpl
def add_cli_arguments(parser, command: str) -> None:
    if command in COMMANDS:
        parser.add_argument("--ban-token-id", dest=OPTION, type=int, action="append", metavar="ID",
                            help="never generate this token id (repeatable; example plugin)")
