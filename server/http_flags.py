"""``pegboard serve``'s HTTP front-end flags with vLLM's names: CORS, the root path, the logs, the API key's sources."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass

from pegboard.core.errors import InvalidParameterError

logger = logging.getLogger("pegboard.server")

API_KEY_ENVS = ("PEGBOARD_API_KEY", "VLLM_API_KEY")  # the first one set wins
VLLM_ENV_EQUIVALENTS = {"VLLM_ATTENTION_BACKEND": "--attention-backend", "VLLM_LOGGING_LEVEL": "--log-level",
                        "VLLM_CACHE_ROOT": "$PEGBOARD_CACHE", "VLLM_USE_V1": None, "VLLM_HOST_IP": "--host",
                        "VLLM_PORT": "--port"}
UVICORN_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass(frozen=True)
class CORSSettings:
    """starlette's CORSMiddleware arguments; vLLM's defaults allow every origin, method and header."""

    allow_origins: tuple[str, ...] = ("*",)
    allow_methods: tuple[str, ...] = ("*",)
    allow_headers: tuple[str, ...] = ("*",)
    allow_credentials: bool = False


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
