"""Running the app on uvicorn: in the foreground with a clean exit on signals, or in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Iterator

import uvicorn

from pegboard.server.accept_errors import log_accept_errors
from pegboard.server.connection_limits import ConnectionLimits
from pegboard.server.http_connections import ServerConfig

logger = logging.getLogger("pegboard.server")

ENDING_GRACE_SECONDS = 5.0  # for requests ended at the shutdown timeout to send their last events
POLL_SECONDS = 0.05


class GracefulServer(uvicorn.Server):
    """A uvicorn server whose shutdown ends every request with a response, and after which the process exits 0.

    On SIGTERM/SIGINT it stops accepting connections and lets running requests finish for up to the config's
    ``timeout_graceful_shutdown`` seconds. Then it calls ``end_requests`` (which makes every request still running
    fail with an error: streams send an error event and ``[DONE]``, others a 503) and gives them
    ENDING_GRACE_SECONDS to send it. Only a client that stops reading has its connection closed, and only a request
    that then still runs is cancelled.
    """

    config: ServerConfig

    def __init__(self, config: ServerConfig, end_requests: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.end_requests = end_requests  # blocking; it runs in a worker thread

    def handle_exit(self, sig: int, frame: Any) -> None:
        logger.info("signal %d: finishing in-flight requests, then shutting down", sig)
        super().handle_exit(sig, frame)
        # plain uvicorn re-raises the signal once it has shut down, which would kill the process with it
        getattr(self, "_captured_signals", []).clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        log_accept_errors(asyncio.get_running_loop(), self.config.warnings)
        await super().startup(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle connections close now, busy ones after their response
        timeout = self.config.timeout_graceful_shutdown
        logger.info("shutting down: %d request(s) running may finish within %s s", len(self.server_state.tasks),
                    timeout)
        if not await self._requests_done(timeout):
            logger.warning("ending %d request(s) still running %s s after the shutdown began",
                           len(self.server_state.tasks), timeout)
            if self.end_requests is not None:
                await asyncio.to_thread(self.end_requests)
            if not await self._requests_done(ENDING_GRACE_SECONDS):
                self._close_connections()
                if not await self._requests_done(1.0):
                    for task in self.server_state.tasks:
                        task.cancel()
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _requests_done(self, timeout: float | None) -> bool:
        """Wait until no connection or request is left (True), or ``timeout`` passes or exit is forced (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.server_state.connections or self.server_state.tasks:
            if self.force_exit or (deadline is not None and time.monotonic() >= deadline):
                return False
            await asyncio.sleep(POLL_SECONDS)
        return True

    def _close_connections(self) -> None:
        """Close the connections still open: their clients do not read what is sent to them."""
        logger.warning("closing %d connection(s) whose clients stopped reading", len(self.server_state.connections))
        for connection in list(self.server_state.connections):
            connection.transport.close()


@contextlib.contextmanager
def serving_in_thread(app: Any, host: str = "127.0.0.1", startup_timeout: float = 30.0, *,
                      sock: socket.socket | None = None, limits: ConnectionLimits = ConnectionLimits(),
                      shutdown_timeout: float = 5.0, end_requests: Callable[[], None] | None = None) -> Iterator[str]:
    """Serve ``app`` from a background thread on a free port of ``host`` (or on ``sock``, bound to it); yields the
    base URL, stops on exit."""
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
    config = ServerConfig(app, limits, log_level="warning", timeout_graceful_shutdown=shutdown_timeout)
    server = GracefulServer(config, end_requests)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="pegboard-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10 + shutdown_timeout + ENDING_GRACE_SECONDS)
        sock.close()
