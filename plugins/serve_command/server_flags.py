"""``pegboard serve``'s server flags with vLLM's names (the engine's are core/cli_args.py): CORS, the root path, the
logs, the API key's sources; connection timeouts and cap; what one request may ask for."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from typing import TYPE_CHECKING

from pegboard.core.errors import InvalidParameterError
from pegboard.server.connection_limits import (DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
                                               DEFAULT_KEEP_ALIVE_TIMEOUT, FDS_KEPT_FREE, ConnectionLimits,
                                               connection_cap_for_open_file_limit)
from pegboard.server.protocol import DEFAULT_MAX_PROMPTS, DEFAULT_MAX_SEQUENCES, MAX_LOGPROBS, RequestLimits

if TYPE_CHECKING:
    from pegboard.server.app import CORSSettings

logger = logging.getLogger("pegboard.server")

API_KEY_ENVS = ("PEGBOARD_API_KEY", "VLLM_API_KEY")  # the first one set wins
VLLM_ENV_EQUIVALENTS = {"VLLM_ATTENTION_BACKEND": "--attention-backend", "VLLM_LOGGING_LEVEL": "--log-level",
                        "VLLM_CACHE_ROOT": "$PEGBOARD_CACHE", "VLLM_USE_V1": None, "VLLM_HOST_IP": "--host",
                        "VLLM_PORT": "--port"}
UVICORN_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def json_string_list(text: str) -> list[str]:
    """A JSON list of strings, as vLLM takes ``--allowed-origins '["https://a.example"]'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise argparse.ArgumentTypeError(f'must be a JSON list of strings, e.g. \'["*"]\', got {text!r}')
    return value


def add_http_arguments(group: argparse._ArgumentGroup) -> None:
    """CORS, root path, access log and uvicorn's log level."""
    for flag, what in (("--allowed-origins", "origins"), ("--allowed-methods", "methods"),
                       ("--allowed-headers", "headers")):
        group.add_argument(flag, type=json_string_list, default=["*"], metavar="JSON",
                           help=f"CORS: the {what} browsers may call from, a JSON list (default: [\"*\"], every one; "
                                "'[]' for none)")
    group.add_argument("--allow-credentials", action="store_true",
                       help="CORS: let browsers send cookies and credentials (default: off)")
    group.add_argument("--root-path", default="",
                       help="the path prefix a proxy serves the app under and strips, e.g. /llm (default: none)")
    group.add_argument("--disable-log-requests", "--disable-uvicorn-access-log", dest="disable_log_requests",
                       action="store_true",
                       help="do not log a line per HTTP request (uvicorn's access log; request contents are never "
                            "logged) (default: logged)")
    group.add_argument("--uvicorn-log-level", choices=UVICORN_LOG_LEVELS,
                       help="level of uvicorn's own log messages (default: --log-level's)")


def cors_from_args(args: argparse.Namespace) -> CORSSettings | None:
    """The CORS settings the flags ask for; None when they allow no origin (no CORS headers at all)."""
    from pegboard.server.app import CORSSettings  # the app (starlette) loads only when serving

    if not args.allowed_origins:
        return None
    return CORSSettings(tuple(args.allowed_origins), tuple(args.allowed_methods), tuple(args.allowed_headers),
                        args.allow_credentials)


def root_path_from_args(args: argparse.Namespace) -> str:
    """``--root-path`` as uvicorn takes it: empty, or starting with / and not ending with one."""
    root = args.root_path.rstrip("/")
    if root and not root.startswith("/"):
        raise InvalidParameterError(f"--root-path must start with '/', got {args.root_path!r}")
    return root


def api_key_from(args: argparse.Namespace, environ: os._Environ | dict[str, str] = os.environ) -> str | None:
    """``--api-key``, else $PEGBOARD_API_KEY, else $VLLM_API_KEY; where it came from is logged."""
    if args.api_key:
        logger.info("API key: from --api-key")
        return args.api_key
    given = [(name, environ[name]) for name in API_KEY_ENVS if environ.get(name)]
    if not given:
        return None
    if len(given) > 1 and given[0][1] != given[1][1]:
        logger.warning("API key: $%s and $%s differ; $%s is used", given[0][0], given[1][0], given[0][0])
    logger.info("API key: from $%s", given[0][0])
    return given[0][1]


def warn_unread_vllm_variables(environ: os._Environ | dict[str, str] = os.environ) -> list[str]:
    """Log one warning naming each VLLM_* variable set that Pegboard does not read (all but VLLM_API_KEY), with
    Pegboard's equivalent where there is one; returns their names."""
    unread = sorted(name for name in environ if name.startswith("VLLM_") and name not in API_KEY_ENVS)
    for name in unread:
        instead = VLLM_ENV_EQUIVALENTS.get(name)
        logger.warning("$%s is set; pegboard does not read it%s", name, f" (use {instead})" if instead else "")
    return unread


SECONDS, COUNT = dict(type=float, metavar="SECONDS"), dict(type=int, metavar="N")
CONNECTION_FLAGS = {  # the flags bounding how long and how many clients may hold a connection
    "--header-read-timeout": dict(SECONDS, default=DEFAULT_HEADER_READ_TIMEOUT,
                                  help="seconds a client has to send a request's headers, from connecting or from "
                                       "the request's first byte; then it gets 408 and its connection is closed "
                                       f"(default: {DEFAULT_HEADER_READ_TIMEOUT:g})"),
    "--body-read-timeout": dict(SECONDS, default=DEFAULT_BODY_READ_TIMEOUT,
                                help="seconds a client has to send a request's body once its headers are in; then it "
                                     f"gets 408 and its connection is closed (default: {DEFAULT_BODY_READ_TIMEOUT:g})"),
    "--timeout-keep-alive": dict(SECONDS, default=DEFAULT_KEEP_ALIVE_TIMEOUT,
                                 help="seconds an idle connection is kept open after a response, waiting for the next "
                                      f"request (default: {DEFAULT_KEEP_ALIVE_TIMEOUT:g})"),
    "--limit-concurrency": dict(COUNT, help="open connections (idle ones included), and requests running, past which "
                                            "a request is answered 503 with Retry-After and its connection closed "
                                            f"(default: the open-file limit less {FDS_KEPT_FREE}, here "
                                            f"{connection_cap_for_open_file_limit()})"),
}
REQUEST_LIMIT_FLAGS = {  # the flags capping what one request may ask for (more is a 400 naming the field)
    "--max-prompts-per-request": dict(COUNT, default=DEFAULT_MAX_PROMPTS,
                                      help="prompts one /v1/completions request may list; more is a 400 naming "
                                           f"'prompt' (default: {DEFAULT_MAX_PROMPTS})"),
    "--max-sequences-per-request": dict(COUNT, default=DEFAULT_MAX_SEQUENCES,
                                        help="sequences (n x prompts) one request may ask for; more is a 400 naming "
                                             f"'n' (default: {DEFAULT_MAX_SEQUENCES})"),
    "--max-logprobs": dict(COUNT, default=MAX_LOGPROBS,
                           help="the most logprobs, top_logprobs or prompt_logprobs a request may ask for; more is a "
                                f"400 (default and most the engine computes: {MAX_LOGPROBS})"),
}


def add_flags(group: argparse._ArgumentGroup, flags: dict[str, dict]) -> None:
    """Add each flag of a table (flag -> add_argument's keywords)."""
    for flag, keywords in flags.items():
        group.add_argument(flag, **keywords)


def add_request_limit_arguments(group: argparse._ArgumentGroup) -> None:
    """The flags capping what one request may ask for."""
    add_flags(group, REQUEST_LIMIT_FLAGS)


def connection_limits_from_args(args: argparse.Namespace) -> ConnectionLimits:
    """The ConnectionLimits the flags ask for; InvalidParameterError for a value that bounds nothing."""
    for flag, value in (("--header-read-timeout", args.header_read_timeout),
                        ("--body-read-timeout", args.body_read_timeout),
                        ("--timeout-keep-alive", args.timeout_keep_alive)):
        if not 0 < value < math.inf:
            raise InvalidParameterError(f"{flag} must be a number of seconds > 0, got {value}")
    require_at_least(1, {"--limit-concurrency": args.limit_concurrency})
    cap = connection_cap_for_open_file_limit() if args.limit_concurrency is None else args.limit_concurrency
    return ConnectionLimits(header_read_timeout=args.header_read_timeout, body_read_timeout=args.body_read_timeout,
                            keep_alive_timeout=args.timeout_keep_alive, limit_concurrency=cap)


def request_limits_from_args(args: argparse.Namespace) -> RequestLimits:
    """The RequestLimits the flags ask for; InvalidParameterError for a cap below 1."""
    require_at_least(1, {"--max-prompts-per-request": args.max_prompts_per_request,
                         "--max-sequences-per-request": args.max_sequences_per_request})
    if not 0 <= args.max_logprobs <= MAX_LOGPROBS:
        raise InvalidParameterError(f"--max-logprobs must be in [0, {MAX_LOGPROBS}] (the engine computes at most "
                                    f"{MAX_LOGPROBS} per position), got {args.max_logprobs}")
    return RequestLimits(max_prompts=args.max_prompts_per_request, max_sequences=args.max_sequences_per_request,
                         max_logprobs=args.max_logprobs)


def require_at_least(minimum: int, values: dict[str, float | None]) -> None:
    """InvalidParameterError naming the first flag whose value is below ``minimum`` (None: not given)."""
    for flag, value in values.items():
        if value is not None and value < minimum:
            raise InvalidParameterError(f"{flag} must be >= {minimum}, got {value}")
