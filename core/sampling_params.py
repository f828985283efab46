"""SamplingParams: how one request chooses its tokens (vLLM-compatible names, no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from pegboard.core.errors import InvalidParameterError
from pegboard.core.structured_outputs_params import StructuredOutputsParams

_MAX_LOGPROBS = 20


@dataclass
class SamplingParams:
    """Per-request sampling settings, validated on construction."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: all tokens
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to max_model_len
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    extra: dict = field(default_factory=dict)  # for plugins (e.g. guided decoding specs)
    structured_outputs: StructuredOutputsParams | None = None  # becomes extra["grammar"]

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        self.logit_bias = _token_biases(self.logit_bias or {})
        self._validate()
        if self.structured_outputs is not None:
            self._map_structured_outputs()

    def _map_structured_outputs(self) -> None:
        """structured_outputs -> extra["grammar"] (a different grammar already there is a conflict)."""
        if not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise InvalidParameterError("structured_outputs must be a StructuredOutputsParams, got "
                                        f"{type(self.structured_outputs).__name__}", param="structured_outputs")
        request = self.structured_outputs.grammar_request()
        if self.extra.get("grammar", request) != request:
            raise InvalidParameterError('structured_outputs and extra["grammar"] ask for different constraints; '
                                        "give one", param="structured_outputs")
        self.extra = {**self.extra, "grammar": request}

    def _validate(self) -> None:
        def check(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise InvalidParameterError(f"{name} {message}", param=name)

        check(_is_int(self.n) and self.n >= 1, "n", f"must be an integer >= 1, got {self.n!r}")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            check(_is_num(value), name, f"must be a finite number, got {value!r}")
        check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature!r}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p!r}")
        check(_is_int(self.top_k) and self.top_k >= 0, "top_k",
              f"must be -1 (disabled) or a positive integer, got {self.top_k!r}")
        check(0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p!r}")
        check(self.repetition_penalty > 0, "repetition_penalty", f"must be > 0, got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            check(-2 <= value <= 2, name, f"must be in [-2, 2], got {value!r}")
        check(self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1), "max_tokens",
              f"must be an integer >= 1, got {self.max_tokens!r}")
        check(_is_int(self.min_tokens) and self.min_tokens >= 0, "min_tokens",
              f"must be an integer >= 0, got {self.min_tokens!r}")
        check(self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
              f"({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        check(self.seed is None or _is_int(self.seed), "seed", f"must be an integer, got {self.seed!r}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            check(value is None or (_is_int(value) and 0 <= value <= _MAX_LOGPROBS), name,
                  f"must be an integer in [0, {_MAX_LOGPROBS}], got {value!r}")
        check(all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings")
        check(all(_is_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
              "must be non-negative integers")
        check(all(_is_num(v) and -100 <= v <= 100 for v in self.logit_bias.values()), "logit_bias",
              "values must be in [-100, 100]")

    @property
    def greedy(self) -> bool:
        """True when the request always takes the most likely token."""
        return self.temperature < 1e-5 or self.top_k == 1

    @property
    def penalties_used(self) -> tuple[bool, bool, bool]:
        """Whether the repetition, presence and frequency penalties each change anything."""
        return self.repetition_penalty != 1.0, self.presence_penalty != 0.0, self.frequency_penalty != 0.0

    def clone(self, **changes) -> "SamplingParams":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    """A real number that is finite as a float (NaN, infinities and huge integers mean nothing to a sampler)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def _token_biases(bias: dict) -> dict[int, float]:
    """``{token id: bias}`` with integer ids (JSON gives string keys); a value that is not a number is refused."""
    try:
        return {int(k): float(v) for k, v in bias.items()}
    except (TypeError, ValueError, OverflowError):
        raise InvalidParameterError("logit_bias must map token ids to numbers in [-100, 100]",
                                    param="logit_bias") from None
