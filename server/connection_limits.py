"""How long a client may take over a request or stay idle, and how many may be connected (``pegboard serve``)."""

from __future__ import annotations

import resource
from dataclasses import dataclass

DEFAULT_HEADER_READ_TIMEOUT = 10.0
DEFAULT_BODY_READ_TIMEOUT = 60.0
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0
FDS_KEPT_FREE = 128  # file descriptors the default cap leaves for model files, logs and the engine


@dataclass(frozen=True)
class ConnectionLimits:
    """The read deadlines, keep-alive timeout and connection cap of one server (None: no cap)."""

    header_read_timeout: float = DEFAULT_HEADER_READ_TIMEOUT  # connecting (or a request's first byte) to its headers
    body_read_timeout: float = DEFAULT_BODY_READ_TIMEOUT  # a request's last header to its body's last byte
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT  # a response's end to the next request's first byte
    limit_concurrency: int | None = None  # open connections, and running requests, past which requests get 503


def connection_cap_for_open_file_limit() -> int | None:
    """A cap that leaves FDS_KEPT_FREE of the process's open-file limit unused (None when there is no limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(1, soft - FDS_KEPT_FREE)
