"""``pegboard serve``'s connection flags: read timeouts, keep-alive timeout and the connection cap."""

from __future__ import annotations

import argparse
import math

from pegboard.core.errors import InvalidParameterError
from pegboard.server.connection_limits import (DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
                                               DEFAULT_KEEP_ALIVE_TIMEOUT, FDS_KEPT_FREE, ConnectionLimits,
                                               connection_cap_for_open_file_limit)


def add_connection_arguments(group: argparse._ArgumentGroup) -> None:
    """The flags bounding how long and how many clients may hold a connection."""
    group.add_argument("--header-read-timeout", type=float, default=DEFAULT_HEADER_READ_TIMEOUT, metavar="SECONDS",
                       help="seconds a client has to send a request's headers, from connecting or from the "
                            "request's first byte; then it gets 408 and its connection is closed "
                            f"(default: {DEFAULT_HEADER_READ_TIMEOUT:g})")
    group.add_argument("--body-read-timeout", type=float, default=DEFAULT_BODY_READ_TIMEOUT, metavar="SECONDS",
                       help="seconds a client has to send a request's body once its headers are in; then it gets "
                            f"408 and its connection is closed (default: {DEFAULT_BODY_READ_TIMEOUT:g})")
    group.add_argument("--timeout-keep-alive", type=float, default=DEFAULT_KEEP_ALIVE_TIMEOUT, metavar="SECONDS",
                       help="seconds an idle connection is kept open after a response, waiting for the next request "
                            f"(default: {DEFAULT_KEEP_ALIVE_TIMEOUT:g})")
    group.add_argument("--limit-concurrency", type=int, metavar="N",
                       help="open connections (idle ones included), and requests running, past which a request is "
                            "answered 503 with Retry-After and its connection closed (default: the open-file limit "
                            f"less {FDS_KEPT_FREE}, here {connection_cap_for_open_file_limit()})")


def connection_limits_from_args(args: argparse.Namespace) -> ConnectionLimits:
    """The ConnectionLimits the flags ask for; InvalidParameterError for a value that bounds nothing."""
    for flag, value in (("--header-read-timeout", args.header_read_timeout),
                        ("--body-read-timeout", args.body_read_timeout),
                        ("--timeout-keep-alive", args.timeout_keep_alive)):
        if not 0 < value < math.inf:
            raise InvalidParameterError(f"{flag} must be a number of seconds > 0, got {value}")
    if args.limit_concurrency is not None and args.limit_concurrency < 1:
        raise InvalidParameterError(f"--limit-concurrency must be >= 1, got {args.limit_concurrency}")
    cap = connection_cap_for_open_file_limit() if args.limit_concurrency is None else args.limit_concurrency
    return ConnectionLimits(header_read_timeout=args.header_read_timeout, body_read_timeout=args.body_read_timeout,
                            keep_alive_timeout=args.timeout_keep_alive, limit_concurrency=cap)
