"""HTTP/1.1 connections with bounded reads and a cap: uvicorn's h11 protocol plus deadlines for a request's headers
and body, and a connection cap that admits exactly ``limit_concurrency`` connections, answering 503 past it.

uvicorn has a keep-alive timeout but no read timeouts: a client that connects and sends nothing, or trickles its
headers or body a byte at a time, keeps its socket (and a file descriptor) as long as it likes. Its own
``limit_concurrency`` counts the asking connection against the cap, so a cap of N admits N - 1 connections.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from pegboard.server.connection_limits import ConnectionLimits
from pegboard.server.errors import RETRY_AFTER_SECONDS, error_response
from pegboard.server.rate_limited_log import RateLimitedLog

logger = logging.getLogger("pegboard.server")


class ServerConfig(uvicorn.Config):
    """uvicorn's Config serving HTTP/1.1 through BoundedH11Protocol under ``limits``."""

    def __init__(self, app: Any, limits: ConnectionLimits = ConnectionLimits(), **kwargs: Any) -> None:
        super().__init__(app, http=BoundedH11Protocol, timeout_keep_alive=limits.keep_alive_timeout, **kwargs)
        self.limits = limits
        self.warnings = RateLimitedLog(logger)  # shared by the server's connections


@dataclass
class _ReadDeadline:
    """What the client still owes (h11.IDLE: a request's headers, h11.SEND_BODY: its body) and when it is due."""

    owed: Any
    timer: asyncio.TimerHandle = field(repr=False)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol whose reads have deadlines and whose connections are capped (see the module)."""

    def __init__(self, config: ServerConfig, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = config.limits
        self.warnings = config.warnings
        self.served_app = self.app
        self.app = self._app_within_cap
        self.read_deadline: _ReadDeadline | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect(h11.IDLE)  # a new connection owes its first request's headers

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._expect(self.conn.their_state)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        idle = self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]
        self._expect(None if idle else self.conn.their_state)  # idle between requests: the keep-alive timeout's turn

    def connection_lost(self, exc: Exception | None) -> None:
        self._expect(None)
        super().connection_lost(exc)

    def _expect(self, their_state: Any) -> None:
        """Keep a deadline running while the client owes headers (IDLE) or a body (SEND_BODY), none otherwise."""
        owed = their_state if their_state in (h11.IDLE, h11.SEND_BODY) else None
        if self.read_deadline is not None:
            if self.read_deadline.owed is owed:
                return  # the deadline bounds the whole read, not the gaps between bytes
            self.read_deadline.timer.cancel()
            self.read_deadline = None
        if owed is not None:
            timeout = self.limits.header_read_timeout if owed is h11.IDLE else self.limits.body_read_timeout
            self.read_deadline = _ReadDeadline(owed, self.loop.call_later(timeout, self._read_timed_out))

    def _read_timed_out(self) -> None:
        """Close the connection; a client that sent part of a request first gets 408 (Request Timeout)."""
        assert self.read_deadline is not None
        owed, self.read_deadline = self.read_deadline.owed, None
        partial = owed is h11.SEND_BODY or bool(self.conn.trailing_data[0])
        if partial:
            part, timeout = (("headers", self.limits.header_read_timeout) if owed is h11.IDLE
                             else ("body", self.limits.body_read_timeout))
            self.warnings.warning(f"slow-{part}", "closed a connection from %s that sent no complete request %s "
                                  "within %g s", self.client[0] if self.client else "?", part, timeout)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # as on a lost connection: the app's receive() sees a disconnect
            self.cycle.message_event.set()
        if partial and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            timeout_response = h11.Response(status_code=408, reason=b"Request Timeout",
                                            headers=[(b"content-length", b"0"), (b"connection", b"close")])
            self.transport.write(self.conn.send(timeout_response) + self.conn.send(h11.EndOfMessage()))
        self.transport.close()

    async def _app_within_cap(self, scope: Any, receive: Any, send: Any) -> None:
        """The app, or a 503 while more than ``limit_concurrency`` connections are open or requests are running."""
        cap = self.limits.limit_concurrency
        connections, requests = len(self.connections), len(self.tasks)  # both count this one
        if cap is None or (connections <= cap and requests <= cap):
            await self.served_app(scope, receive, send)
            return
        self.warnings.warning("cap", "answered 503: %d connections open and %d requests running "
                              "(--limit-concurrency %d)", connections, requests, cap)
        refusal = error_response(503, f"the server has reached its limit of {cap} connections; retry later",
                                 code="too_many_connections",
                                 headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"})
        await refusal(scope, receive, send)
