"""accept() failing for lack of resources (EMFILE at the open-file limit): one log line per interval, no tracebacks.

asyncio reports each failed accept() to the loop's exception handler, with a traceback, and retries every
second; on Linux it tries a whole backlog's worth of accepts each time, so at the file-descriptor limit the
default handler writes thousands of tracebacks a second.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from pegboard.server.rate_limited_log import RateLimitedLog

RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def log_accept_errors(loop: asyncio.AbstractEventLoop, log: RateLimitedLog) -> None:
    """Send ``loop``'s failed accepts for lack of resources to ``log``; other errors go where they went before."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in RESOURCE_ERRNOS and "accept" in context.get("message", ""):
            log.warning("accept", "cannot accept connections: %s; raise the open-file limit (ulimit -n) or lower "
                        "--limit-concurrency", error)
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
