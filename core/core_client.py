"""CoreProcessClient: an engine core in a child process, behind the methods of an in-process EngineCore.

The parent never imports the model: it holds the tokenizer, the output processor and the HTTP server. If the
child dies (a device failure, a kill), ``step()`` raises EngineCoreDiedError: the caller fails its requests
and stops, never hangs.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from typing import Any

from pegboard.core.config import EngineConfig
from pegboard.core.errors import PegboardError
from pegboard.core.messages import EngineCoreOutputs, EngineCoreRequest, EngineGauges

logger = logging.getLogger("pegboard.core_client")

POLL_SECONDS = 0.002  # how long one step() waits for outputs before the caller gets to read its inbox


class EngineCoreDiedError(PegboardError):
    """The engine core process is gone."""


class CoreProcessClient:
    """Starts the core process, sends it requests and aborts, receives its outputs."""

    def __init__(self, config: EngineConfig, *, startup_timeout: float | None = None) -> None:
        from pegboard.core.core_process import run_engine_core

        context = multiprocessing.get_context("spawn")  # no forked CUDA state, a fresh interpreter
        self._conn, child = context.Pipe()
        self.process = context.Process(target=run_engine_core, name="pegboard-engine-core", daemon=True,
                                       args=(config, child, logging.getLogger("pegboard").getEffectiveLevel()))
        self.process.start()
        child.close()
        if not self._conn.poll(startup_timeout):
            self.shutdown()
            raise EngineCoreDiedError(f"the engine core did not start within {startup_timeout} s")
        message = self._recv()
        if message[0] == "failed":
            self.process.join(10)
            logger.debug("the engine core's traceback:\n%s", message[2])
            raise PegboardError(f"the engine core failed to start: {message[1]}")
        _, self.model_info, self.files = message
        self._gauges = EngineGauges(0, 0, 0.0)
        self._live: set[str] = set()  # sequences sent and not finished

    def _recv(self) -> Any:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise EngineCoreDiedError(f"the engine core process exited (status {self._exit_status()})") from None

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, OSError):
            raise EngineCoreDiedError(f"the engine core process exited (status {self._exit_status()})") from None

    def _exit_status(self) -> int | None:
        self.process.join(1)
        return self.process.exitcode

    def add_request(self, request: EngineCoreRequest) -> None:
        self._send(("add", request))
        self._live.add(request.request_id)

    def abort_requests(self, request_ids: list[str]) -> None:
        if request_ids:
            self._send(("abort", list(request_ids)))
            self._live.difference_update(request_ids)
            if not self._live:  # nothing runs or waits, every block is free (the core says so too, unread)
                self._gauges = EngineGauges(0, 0, 0.0)

    def has_unfinished_requests(self) -> bool:
        return bool(self._live)

    def gauges(self) -> EngineGauges:
        """The core's fullness as of its latest message."""
        return self._gauges

    def step(self) -> EngineCoreOutputs:
        """The next outputs the core sent, or empty ones when none arrived within POLL_SECONDS."""
        try:
            ready = self._conn.poll(POLL_SECONDS)
        except (EOFError, OSError):
            ready = True  # _recv reports it
        if not ready:
            if not self.process.is_alive():
                raise EngineCoreDiedError(f"the engine core process exited (status {self._exit_status()})")
            return EngineCoreOutputs(())
        outputs: EngineCoreOutputs = self._recv()
        for output in outputs.outputs:
            if output.finished:
                self._live.discard(output.request_id)
        if outputs.gauges is not None:
            self._gauges = outputs.gauges
        return outputs

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the core to stop; kill it if it does not within ``timeout`` seconds."""
        try:
            self._conn.send(("shutdown",))
        except (BrokenPipeError, OSError):
            pass
        deadline = time.monotonic() + timeout
        while self.process.is_alive() and time.monotonic() < deadline:
            self._drain(min(0.05, max(0.0, deadline - time.monotonic())))
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()

    def _drain(self, seconds: float) -> None:
        """Read and drop what the core sends, so a core blocked writing a step's outputs gets to read its
        shutdown message; otherwise just wait ``seconds``."""
        try:
            while self._conn.poll(seconds):
                self._conn.recv()
                seconds = 0
        except (EOFError, OSError):
            self.process.join(0.05)
