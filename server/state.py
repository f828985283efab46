"""What every route needs: the async engine, the served model's facts, its tokenizer and chat template."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.server.protocol import ServedModel


@dataclass
class ServerState:
    """Shared by the routes of one app (``app.state.pegboard``)."""

    engine: AsyncLLMEngine
    model: ServedModel
    tokenizer: Any  # None with --skip-tokenizer-init
    chat_template: str | None = None  # overrides the tokenizer's
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def of(cls, engine: AsyncLLMEngine, served_model_names: tuple[str, ...], chat_template: str | None = None
           ) -> "ServerState":
        """The state for serving ``engine`` under the given names."""
        core = engine.engine
        model = ServedModel(names=served_model_names, vocab_size=core.hf_config.vocab_size,
                            max_model_len=core.max_model_len, grammars=frozenset(core.board.grammars.names()))
        return cls(engine, model, core.tokenizer, chat_template)


def state_of(request: Request) -> ServerState:
    """The ServerState of the app serving ``request``."""
    return request.app.state.pegboard
