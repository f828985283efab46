"""LaunchedStep: the promise of a RunnerOutput while the device still computes the step."""

from __future__ import annotations

from typing import Callable

from pegboard.core.messages import RunnerOutput


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
