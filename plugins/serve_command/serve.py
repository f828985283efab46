"""``pegboard serve [MODEL]``: start the engine, serve the app on uvicorn, shut down gracefully on SIGTERM/SIGINT.

On a signal the server stops accepting connections, lets in-flight requests finish for up to
``--shutdown-timeout`` seconds, then stops the engine, which ends the rest with an error (an error event and
``[DONE]`` in a stream, 503 otherwise), and exits 0.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pegboard.core.cli_args import add_engine_arguments, engine_kwargs_from_args
from pegboard.core.config import DEFAULT_MODEL, EngineConfig
from pegboard.core.errors import InvalidParameterError
from pegboard.plugins.serve_command.refused_vllm_flags import add_refused_vllm_flags
from pegboard.plugins.serve_command.server_flags import (API_KEY_ENVS, CONNECTION_FLAGS, add_flags, add_http_arguments,
                                                         add_request_limit_arguments, api_key_from,
                                                         connection_limits_from_args, cors_from_args,
                                                         request_limits_from_args, require_at_least,
                                                         root_path_from_args, warn_unread_vllm_variables)
from pegboard.server.served_name import default_served_name

logger = logging.getLogger("pegboard.server")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model argument, the engine flags and the server flags (vLLM's names)."""
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"model name, path or hub id (default: {DEFAULT_MODEL})")
    add_engine_arguments(parser)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0, every interface)")
    group.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    group.add_argument("--served-model-name", nargs="+", metavar="NAME",
                       help="model name(s) clients use in 'model' (default: the MODEL argument)")
    group.add_argument("--api-key",
                       help="require 'Authorization: Bearer KEY' on every route but /health (default: "
                            f"${API_KEY_ENVS[0]}, else ${API_KEY_ENVS[1]}, else none)")
    group.add_argument("--max-waiting-requests", type=int, default=1024,
                       help="sequences allowed to wait beyond --max-num-seqs before answering 503; a request "
                            "counts n x prompts (default: 1024)")
    add_request_limit_arguments(group)
    group.add_argument("--shutdown-timeout", type=float, default=30.0,
                       help="seconds in-flight requests may run after SIGTERM/SIGINT; then streams end with an "
                            "error event and [DONE], other requests get 503 (default: 30)")
    add_flags(group, CONNECTION_FLAGS)
    group.add_argument("--chat-template", help="a Jinja chat template, or a file holding one (default: the model's)")
    group.add_argument("--response-role", default="assistant",
                       help="the role of chat answers when add_generation_prompt is true (default: assistant)")
    group.add_argument("--ssl-keyfile", help="serve HTTPS with this private key (default: none)")
    group.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (default: none, plain HTTP)")
    add_http_arguments(group)
    group.add_argument("--enable-auto-tool-choice", action="store_true",
                       help="answer tool_choice \"auto\" (the default with tools): find the model's tool calls "
                            "with --tool-call-parser (default: off, such requests get 400)")
    group.add_argument("--tool-call-parser", metavar="NAME",
                       help="the registered tool parser that finds tool calls in the output, e.g. hermes "
                            "(`pegboard plugins` lists them; needs --enable-auto-tool-choice; default: none)")
    group.add_argument("--disable-log-stats", action="store_true",
                       help="do not log throughput and load every 10 s (default: logged while the engine steps)")
    add_refused_vllm_flags(parser)


def main(args: argparse.Namespace, board: Any) -> int:
    """Load the model, serve until a signal, then stop; returns the exit status."""
    from pegboard.core.async_engine import AsyncLLMEngine
    from pegboard.server.app import build_app
    from pegboard.server.uvicorn_server import GracefulServer

    require_at_least(0, {"--max-waiting-requests": args.max_waiting_requests,
                         "--shutdown-timeout": args.shutdown_timeout, "--port": args.port})
    if args.port > 65535:
        raise InvalidParameterError(f"--port must be a TCP port, 0 to 65535, got {args.port}")
    limits = connection_limits_from_args(args)
    request_limits = request_limits_from_args(args)
    chat_template = read_chat_template(args.chat_template)
    tool_call_parser = tool_parser_from_args(args, board)
    check_ssl_files(args.ssl_keyfile, args.ssl_certfile)
    cors, root_path, api_key = cors_from_args(args), root_path_from_args(args), api_key_from(args)
    warn_unread_vllm_variables()
    names = tuple(args.served_model_name or (default_served_name(args.model),))
    config = EngineConfig(model=args.model, **engine_kwargs_from_args(args))
    config.extra["served_model_name"] = names[0]  # the metrics' model_name label
    config.extra["log_stats"] = not args.disable_log_stats  # the stats_logger plugin's line every 10 s
    engine = AsyncLLMEngine.from_config(config, board, core_process=True,  # the model lives in a child process
                                        max_waiting_requests=args.max_waiting_requests)
    try:
        app = build_app(engine, names, api_key=api_key, chat_template=chat_template, limits=request_limits,
                        response_role=args.response_role, cors=cors, tool_call_parser=tool_call_parser)
        server = GracefulServer(server_config(args, app, limits, root_path), end_requests=engine.shutdown)
        stop_when_dead(engine, server)
        server.run()
    finally:
        engine.shutdown()
    if engine.dead_error is not None:  # non-zero, so that a supervisor (systemd, Kubernetes) restarts us
        logger.error("exiting with status 1: the engine stopped after an unrecoverable error")
        return 1
    return 0 if server.started else 1


def tool_parser_from_args(args: argparse.Namespace, board: Any) -> str | None:
    """The tool parser --enable-auto-tool-choice uses; either flag without the other, or a name no plugin
    registers, is refused (as vLLM refuses the first)."""
    if args.enable_auto_tool_choice != (args.tool_call_parser is not None):
        given, missing = (("--enable-auto-tool-choice", "--tool-call-parser NAME") if args.enable_auto_tool_choice
                          else ("--tool-call-parser", "--enable-auto-tool-choice"))
        raise InvalidParameterError(f"{given} needs {missing} too")
    if args.tool_call_parser is not None and args.tool_call_parser not in board.tool_parsers:
        raise InvalidParameterError(f"--tool-call-parser {args.tool_call_parser!r}: no loaded plugin registers it "
                                    f"(available: {', '.join(board.tool_parsers.names()) or 'none'})")
    return args.tool_call_parser


def server_config(args: argparse.Namespace, app: Any, limits: Any, root_path: str) -> Any:
    """uvicorn's config as the flags ask: address, TLS, logs, root path, shutdown timeout, connection limits."""
    from pegboard.server.http_connections import ServerConfig

    return ServerConfig(app, limits, host=args.host, port=args.port,
                        log_level=args.uvicorn_log_level or args.log_level, access_log=not args.disable_log_requests,
                        root_path=root_path, ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
                        timeout_graceful_shutdown=args.shutdown_timeout)


def stop_when_dead(engine: Any, server: Any) -> None:
    """Shut the server down as soon as the engine dies (``/health`` answers 503 until it has stopped)."""
    def stop(exc: BaseException) -> None:
        server.should_exit = True

    engine.on_dead = stop
    if engine.dead_error is not None:  # it died before the callback was in place
        stop(engine.dead_error)


def read_chat_template(value: str | None) -> str | None:
    """A template given inline or as a path to a file; neither, or a template that does not parse, is an error."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        text = path.read_text()
    elif "{{" in value or "{%" in value:
        text = value
    else:
        raise InvalidParameterError(f"--chat-template {value!r} is neither a file nor a Jinja template")
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except TemplateSyntaxError as exc:
        raise InvalidParameterError(f"--chat-template does not parse: {exc.message} (line {exc.lineno})") from None
    return text


def check_ssl_files(keyfile: str | None, certfile: str | None) -> None:
    """HTTPS needs a certificate (its file may hold the key too); each file named must exist."""
    if keyfile and not certfile:
        raise InvalidParameterError("--ssl-keyfile needs --ssl-certfile too: HTTPS serves a certificate")
    for flag, value in (("--ssl-keyfile", keyfile), ("--ssl-certfile", certfile)):
        if value and not Path(value).expanduser().is_file():
            raise InvalidParameterError(f"{flag} {value!r} is not a file")
    if certfile:
        _load_certificate(str(Path(certfile).expanduser()), keyfile and str(Path(keyfile).expanduser()))


class _KeyPasswordAsked(Exception):
    pass


def _load_certificate(certfile: str, keyfile: str | None) -> None:
    """Load the certificate and key as uvicorn will, so that a bad file is refused at start in one line."""
    import ssl

    def no_password() -> str:
        raise _KeyPasswordAsked

    files = f"--ssl-certfile {certfile!r}" + (f" with --ssl-keyfile {keyfile!r}" if keyfile else "")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile, password=no_password)
    except _KeyPasswordAsked:
        raise InvalidParameterError(f"{files}: the private key is encrypted, and pegboard serve takes no key "
                                    "password; decrypt it (openssl pkey -in KEY -out KEY.plain)") from None
    except ssl.SSLError as exc:
        raise InvalidParameterError(f"{files}: not a PEM certificate and its private key ({exc.reason or exc})"
                                    ) from None
