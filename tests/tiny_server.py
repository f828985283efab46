"""A test helper (not a test): the tiny random Llama served on a free loopback port, and a JSON POST to it."""

from __future__ import annotations

import http.client
import json
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.config import EngineConfig
from pegboard.core.plugins import DEFAULT_PLUGINS, load_board
from pegboard.server.app import build_app
from pegboard.server.protocol import RequestLimits
from pegboard.server.uvicorn_server import serving_in_thread


@contextmanager
def serving(model, *, max_num_seqs: int = 4, max_waiting_requests: int = 4, num_kv_blocks: int = 64,
            limits: RequestLimits | None = None, **app_options):
    """The tiny model served on a free loopback port: yields (base URL, app); ``app_options`` go to build_app."""
    config = EngineConfig(model=str(model), load_format="dummy", device="cpu", max_num_seqs=max_num_seqs,
                          num_kv_blocks=num_kv_blocks)
    engine = AsyncLLMEngine.from_config(config, max_waiting_requests=max_waiting_requests)
    try:
        app = build_app(engine, ("tiny",), limits=limits, **app_options)
        with serving_in_thread(app) as url:
            yield url, app
    finally:
        engine.shutdown()


def connect(url: str, path: str, body: dict[str, Any]) -> http.client.HTTPResponse:
    """POST a JSON body and return the open response."""
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    return connection.getresponse()


def board_with_fake_grammars(*plugins: object):
    """The built-in plugins except those registering grammars (a real backend), plus ``plugins``: a test's stand-in
    grammars then own the kinds they register."""
    builtins = load_board()
    keep = [name for name in DEFAULT_PLUGINS if "grammars" not in builtins.registered_by(name)]
    return load_board([*keep, *plugins], builtins=False)
