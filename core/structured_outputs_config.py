"""``--structured-outputs-config`` (vLLM's flag): which backend's grammars serve a request's kind (no torch).

``pegboard`` (the built-in, ``auto`` picks it) registers each kind under its own name; another backend's plugin
registers ``BACKEND:KIND`` (``xgrammar:json_schema``). vLLM's ``guidance`` names llguidance.
"""

from __future__ import annotations

import json
from typing import Any

from pegboard.core.errors import InvalidParameterError, PluginError

BACKENDS = {"auto": "pegboard", "pegboard": "pegboard", "xgrammar": "xgrammar", "llguidance": "llguidance",
            "guidance": "llguidance"}
PARAM = "structured_outputs_config"


def structured_outputs_backend(value: Any) -> str:
    """The backend ``EngineConfig.structured_outputs_config`` selects (``pegboard`` when None), its keys checked."""
    if value is None:
        return "pegboard"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(f"{PARAM} must be a JSON object: {exc}", param=PARAM) from None
    if not isinstance(value, dict):
        raise InvalidParameterError(f"{PARAM} must be a JSON object, got {value!r}", param=PARAM)
    unknown = sorted(set(value) - {"backend"})
    if unknown:
        raise InvalidParameterError(f"{PARAM}: key {unknown[0]!r} is not supported (supported: backend)", param=PARAM)
    backend = value.get("backend", "auto")
    if backend not in BACKENDS:
        raise InvalidParameterError(f"{PARAM}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}",
                                    param=PARAM)
    return BACKENDS[backend]


def registered_name(kind: str, backend: str) -> str:
    """The registry name of ``kind`` in ``backend``."""
    return kind if backend == "pegboard" else f"{backend}:{kind}"


def check_backend(config: Any, grammars: Any) -> None:
    """Fail at start when the selected backend's plugin registered nothing (its package is not installed)."""
    backend = structured_outputs_backend(config.structured_outputs_config)
    if backend != "pegboard" and not any(n.startswith(backend + ":") for n in grammars.names()):
        raise PluginError(f'{PARAM} backend {backend!r} needs the {backend} package, which is not installed: '
                          f"pip install 'pegboard[{backend}]'")
