"""What every route needs: the async engine, the served model's facts, its tokenizer and chat template."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.token_bytes import TokenBytes
from pegboard.server.protocol import RequestLimits, ServedModel


@dataclass
class ServerState:
    """Shared by the routes of one app (``app.state.pegboard``)."""

    engine: AsyncLLMEngine
    model: ServedModel
    tokenizer: Any  # None with --skip-tokenizer-init
    chat_template: str | None = None  # overrides the tokenizer's
    limits: RequestLimits = field(default_factory=RequestLimits)
    token_bytes: TokenBytes | None = None  # each token's exact bytes (None without a tokenizer)
    response_role: str = "assistant"  # the role of chat answers to a generation prompt (--response-role)
    tool_parser: Any = None  # the --tool-call-parser's factory (tool_choice auto), None without one
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def of(cls, engine: AsyncLLMEngine, served_model_names: tuple[str, ...], chat_template: str | None = None,
           limits: RequestLimits | None = None, response_role: str = "assistant",
           tool_call_parser: str | None = None) -> "ServerState":
        """The state for serving ``engine`` under the given names (``tool_call_parser``: a registered tool
        parser's name, which turns tool_choice auto on)."""
        core = engine.engine
        parser = None
        if tool_call_parser is not None:  # each choice builds its own, checked against ToolParser
            core.board.tool_parsers.get(tool_call_parser)  # an unknown name fails now
            parser = functools.partial(core.board.tool_parsers.build, tool_call_parser)
        model = ServedModel(names=served_model_names, vocab_size=core.model_info.vocab_size,
                            max_model_len=core.max_model_len, grammars=frozenset(core.board.grammars.names()),
                            longest_token_chars=longest_token_chars(core.tokenizer), tool_parser=tool_call_parser)
        return cls(engine, model, core.tokenizer, chat_template, limits or RequestLimits(),
                   core.output_processor.token_bytes, response_role, parser)

    def bytes_of(self, token_id: int) -> bytes | None:
        """A token's exact bytes (None without a tokenizer)."""
        return None if self.token_bytes is None else self.token_bytes(token_id)


def longest_token_chars(tokenizer: Any) -> int | None:
    """Characters of the tokenizer's longest vocabulary entry, added tokens included (None without one)."""
    if tokenizer is None:
        return None
    return max(len(piece) for piece in tokenizer.get_vocab())


def state_of(request: Request) -> ServerState:
    """The ServerState of the app serving ``request``."""
    return request.app.state.pegboard
