"""Running the app on uvicorn: in the foreground with a clean exit on signals, or in a background thread."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any, Iterator

import uvicorn

logger = logging.getLogger("pegboard.server")


class GracefulServer(uvicorn.Server):
    """A uvicorn server after whose graceful shutdown on SIGTERM/SIGINT the process exits 0."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        logger.info("signal %d: finishing in-flight requests, then shutting down", sig)
        super().handle_exit(sig, frame)
        # plain uvicorn re-raises the signal once it has shut down, which would kill the process with it
        getattr(self, "_captured_signals", []).clear()


@contextlib.contextmanager
def serving_in_thread(app: Any, host: str = "127.0.0.1", startup_timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on a free port of ``host`` from a background thread; yields the base URL, stops on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="pegboard-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
