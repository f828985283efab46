"""The Starlette app: OpenAI-compatible routes, the API-key check, OpenAI-shaped errors, plugin routes."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pegboard import __version__
from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.server.chat import create_chat_completion
from pegboard.server.completions import create_completion
from pegboard.server.errors import EXCEPTION_HANDLERS, APIError, error_response
from pegboard.server.protocol import RequestLimits
from pegboard.server.schemas import openapi_schema
from pegboard.server.served_name import default_served_name
from pegboard.server.state import ServerState, state_of
from pegboard.server.tokenize import detokenize, tokenize

OPEN_PATHS = frozenset({"/health"})  # answered without the API key


@dataclass(frozen=True)
class CORSSettings:
    """starlette's CORSMiddleware arguments; vLLM's defaults allow every origin, method and header."""

    allow_origins: tuple[str, ...] = ("*",)
    allow_methods: tuple[str, ...] = ("*",)
    allow_headers: tuple[str, ...] = ("*",)
    allow_credentials: bool = False


def build_app(engine: AsyncLLMEngine, served_model_names: tuple[str, ...] | None = None, *,
              api_key: str | None = None, chat_template: str | None = None,
              limits: RequestLimits | None = None, response_role: str = "assistant",
              cors: CORSSettings | None = None, tool_call_parser: str | None = None) -> Starlette:
    """The app serving ``engine`` under ``served_model_names`` (default: the model as given, a path's last part),
    plus plugin routes; CORS headers (outermost, so preflights need no key) when ``cors`` allows origins;
    ``tool_call_parser`` (a registered tool parser) answers tool_choice auto."""
    names = tuple(served_model_names or (default_served_name(engine.engine.config.model),))
    middleware = []
    if cors is not None:
        middleware.append(Middleware(CORSMiddleware, allow_origins=cors.allow_origins, allow_methods=cors.allow_methods,
                                     allow_headers=cors.allow_headers, allow_credentials=cors.allow_credentials))
    if api_key:
        middleware.append(Middleware(APIKeyMiddleware, api_key=api_key))
    app = Starlette(routes=ROUTES, middleware=middleware, exception_handlers=EXCEPTION_HANDLERS)
    app.state.pegboard = ServerState.of(engine, names, chat_template, limits, response_role,
                                          tool_call_parser)
    engine.engine.board.pm.hook.register_routes(app=app, engine=engine)
    return app


class APIKeyMiddleware:
    """401 unless ``Authorization: Bearer <key>`` matches, the scheme in any case (``/health`` is open)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) in OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                                  code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, credentials = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        # RFC 7235: the scheme is case-insensitive; the key is compared in constant time
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.lstrip(b" "), self.expected)


def _route_path(scope: Scope) -> str:
    """The path the routes see: without the root path (``--root-path``) that uvicorn puts in front of it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def list_models(request: Request) -> JSONResponse:
    """GET /v1/models."""
    state = state_of(request)
    return JSONResponse({"object": "list", "data": [_model_card(state, name) for name in state.model.names]})


async def get_model(request: Request) -> JSONResponse:
    """GET /v1/models/{model}."""
    state = state_of(request)
    name = request.path_params["model"]
    if name not in state.model.names:
        raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
    return JSONResponse(_model_card(state, name))


def _model_card(state: ServerState, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": state.created, "owned_by": "pegboard",
            "root": state.model.names[0], "parent": None, "max_model_len": state.model.max_model_len}


async def health(request: Request) -> Response:
    """GET /health: 200 while the engine loop runs, else 503."""
    engine = state_of(request).engine
    if engine.is_running:
        return Response(status_code=200)
    return error_response(503, f"the engine is not running: {engine.dead_error!r}", code="engine_dead")


async def version(request: Request) -> JSONResponse:
    """GET /version."""
    return JSONResponse({"version": __version__})


async def openapi(request: Request) -> JSONResponse:
    """GET /openapi.json: the POST bodies' schemas, generated from their pydantic models."""
    return JSONResponse(openapi_schema())


ROUTES = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/completions", create_completion, methods=["POST"]),
    Route("/v1/chat/completions", create_chat_completion, methods=["POST"]),
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/detokenize", detokenize, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/version", version, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
