"""RunnerOutput: what one model step hands back to the engine (plain Python lists, no tensors), and
LaunchedStep: the promise of one while the device still computes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# One position's logprobs: [(token_id, logprob, rank)], the chosen/target token first, then the top-k.
TokenLogprobs = list[tuple[int, float, int]]


@dataclass(frozen=True)
class RunnerOutput:
    """New tokens (and logprobs) of the requests whose step reached the end of their sequence."""

    request_ids: tuple[str, ...]
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...] | None = None
    # request id -> logprobs of prompt tokens computed this step, in prompt order
    prompt_logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)


class LaunchedStep:
    """A step whose device work is queued: ``result()`` waits for its tokens to reach the host, once."""

    def __init__(self, build: Callable[[], RunnerOutput], wait: Callable[[], None] | None = None) -> None:
        self._build = build
        self._wait = wait
        self._result: RunnerOutput | None = None

    def result(self) -> RunnerOutput:
        if self._result is None:
            if self._wait is not None:
                self._wait()
            self._result = self._build()
        return self._result
