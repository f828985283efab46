"""vLLM's ``speculative_config`` (``--speculative-config '{"method": "ngram", ...}'``) mapped onto pegboard's
speculative settings (no torch): ``ngram`` is the built-in prompt-lookup proposer; any other method must be a
registered proposer's name, and is refused at start naming it when none is (``core/settings.py``)."""

from __future__ import annotations

from typing import Any

from pegboard.core.errors import InvalidParameterError

NGRAM_KEYS = ("prompt_lookup_min", "prompt_lookup_max")
KEYS = ("method", "model", "num_speculative_tokens", *NGRAM_KEYS)
VLLM_NGRAM_LOOKUP = 5  # vLLM's prompt_lookup_min and _max when neither is given


def _refuse(message: str) -> InvalidParameterError:
    return InvalidParameterError(f"speculative_config: {message}", param="speculative_config")


def normalized_speculative_config(spec: Any) -> dict[str, Any]:
    """The config with its method resolved and vLLM's ngram defaults filled in; refusals name the key."""
    if not isinstance(spec, dict):
        raise _refuse(f"must be a JSON object, got {spec!r}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise _refuse(f"{', '.join(map(repr, unknown))} not supported (supported keys: {', '.join(KEYS)})")
    method, model = spec.get("method"), spec.get("model")
    if method in (None, "[ngram]") and model in ("ngram", "[ngram]"):
        method = "ngram"
    if method == "[ngram]":
        method = "ngram"
    if method is None:
        raise _refuse("needs 'method' ('ngram', or a registered proposer's name); draft models are not supported")
    if not isinstance(method, str):
        raise _refuse(f"'method' must be a string, got {method!r}")
    if model is not None and method != "ngram":
        raise _refuse(f"'model' {model!r}: draft models are not supported (method {method!r} needs no model)")
    k = spec.get("num_speculative_tokens")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise _refuse(f"'num_speculative_tokens' must be a positive integer, got {k!r}")
    resolved: dict[str, Any] = {"method": method, "num_speculative_tokens": k}
    if method != "ngram":
        given = [key for key in NGRAM_KEYS if key in spec]
        if given:
            raise _refuse(f"{', '.join(given)} apply to method 'ngram' only, not {method!r}")
        return resolved
    low, high = spec.get("prompt_lookup_min"), spec.get("prompt_lookup_max")
    if low is None and high is None:
        low = high = VLLM_NGRAM_LOOKUP
    low, high = (high if low is None else low), (low if high is None else high)  # one given: both are it
    for key, value in (("prompt_lookup_min", low), ("prompt_lookup_max", high)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _refuse(f"{key!r} must be a positive integer, got {value!r}")
    if low > high:
        raise _refuse(f"prompt_lookup_min={low} must be <= prompt_lookup_max={high}")
    return {**resolved, "prompt_lookup_min": low, "prompt_lookup_max": high}


def speculative_model_of(spec: dict[str, Any]) -> str:
    """The ``speculative_model`` a normalized config stands for: ``[ngram]`` or the proposer's name."""
    return "[ngram]" if spec["method"] == "ngram" else spec["method"]
