"""Warnings about recurring events (refused connections, timed-out reads, failed accepts) at most once per interval."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

LOG_INTERVAL_SECONDS = 10.0


@dataclass
class _EventLog:
    last_logged: float
    repeats: int = 0  # occurrences not logged since last_logged


class RateLimitedLog:
    """Logs the first occurrence of each kind of event, then at most one line per ``interval`` with a repeat count."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._events: dict[str, _EventLog] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        """Log ``message % args`` unless an event of this ``kind`` was logged less than ``interval`` ago."""
        now = self.clock()
        event = self._events.get(kind)
        if event is not None and now - event.last_logged < self.interval:
            event.repeats += 1
            return
        if event is not None and event.repeats:
            message += f" (and {event.repeats} more times in the last {now - event.last_logged:.0f} s)"
        self._events[kind] = _EventLog(now)
        self.logger.warning(message, *args)
