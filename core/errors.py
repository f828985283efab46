"""Exceptions that carry a clear message to the user (the server maps them to HTTP codes)."""

from __future__ import annotations


class PegboardError(Exception):
    """Base class of every error Pegboard raises on purpose."""


class InvalidParameterError(PegboardError, ValueError):
    """A request or engine parameter has an invalid value; ``param`` names it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def invalid(name: str, message: str) -> InvalidParameterError:
    """An error about field ``name``: ``'name' message``."""
    return InvalidParameterError(f"'{name}' {message}", param=name)


class PromptTooLongError(InvalidParameterError):
    """The prompt (plus the tokens asked for) can never fit in max_model_len."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="prompt")


class ModelNotFoundError(PegboardError):
    """No model source could resolve the model name, or its files are missing."""


class UnsupportedModelError(PegboardError):
    """The model's architecture, quantization or file format is not supported by any plugin."""


class PluginError(PegboardError):
    """A plugin is missing, misbehaves, or registered a duplicate name."""


class PluginLoadError(PluginError):
    """A plugin module failed to import or register (raised only in strict mode)."""


class RequestFailedError(PegboardError):
    """The engine step computing this request failed; the request ended, the engine serves on (HTTP 500)."""


def is_device_failure(exc: BaseException) -> bool:
    """Whether ``exc`` leaves the device unusable (a CUDA error, a device-side assert): the engine must stop.

    Out-of-memory is not one: the step's requests fail and the engine goes on.
    """
    if type(exc).__name__ == "AcceleratorError":  # torch >= 2.8 raises this for CUDA errors
        return True
    return isinstance(exc, RuntimeError) and "CUDA error" in str(exc) and "out of memory" not in str(exc)
