"""AsyncLLMEngine: the engine loop in its own thread, streaming outputs to asyncio callers.

The boundary is message-shaped — ``_Add`` / ``_Abort`` messages in, ``RequestOutput`` objects out —
so the engine core can later move to its own process without changing callers.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.errors import InvalidParameterError, PegboardError, RequestFailedError
from pegboard.core.outputs import RequestOutput
from pegboard.core.plugins import Board
from pegboard.core.sampling_params import SamplingParams

logger = logging.getLogger("pegboard.async_engine")


class EngineOverloadedError(PegboardError):
    """Too many requests are waiting; the caller should retry later (HTTP 503)."""


class EngineDeadError(PegboardError):
    """The engine loop stopped after an error and serves no more requests."""


@dataclass(frozen=True)
class _Add:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    add_special_tokens: bool
    final_output_only: bool


@dataclass(frozen=True)
class _Abort:
    request_id: str


_STOP = object()


class AsyncLLMEngine:
    """Runs ``LLMEngine.step()`` in a background thread; ``generate()`` streams one request's outputs."""

    def __init__(self, engine: LLMEngine, *, max_waiting_requests: int = 1024) -> None:
        self.engine = engine
        self.max_waiting_requests = max_waiting_requests
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()
        self._pending = 0  # sequences admitted and not yet finished (a request with n choices counts n)
        self._sequences: dict[str, int] = {}  # request id -> the sequences its stream holds
        self.dead_error: BaseException | None = None
        self.on_dead: Callable[[BaseException], None] | None = None  # called in the engine thread if it dies
        self._thread = threading.Thread(target=self._run, name="pegboard-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: EngineConfig, board: Board | None = None, *, core_process: bool = False,
                    **kwargs) -> "AsyncLLMEngine":
        """An engine whose core runs in this process (a thread), or with ``core_process`` in a child process."""
        core = None
        if core_process:
            from pegboard.core.core_client import CoreProcessClient

            core = CoreProcessClient(config)
        try:
            return cls(LLMEngine(config, board, core=core), **kwargs)
        except BaseException:
            if core is not None:
                core.shutdown()
            raise

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self.dead_error is None

    @property
    def num_pending(self) -> int:
        """Sequences admitted and not yet finished (a request with n choices counts n)."""
        return self._pending

    @property
    def capacity(self) -> int:
        """Sequences that may be in flight at once: a full batch (max_num_seqs) plus max_waiting_requests."""
        return self.engine.config.max_num_seqs + self.max_waiting_requests

    def admit(self, num_sequences: int) -> Admission:
        """Reserve room for ``num_sequences`` sequences at once, all or none: a 400 (InvalidParameterError) when
        they could never fit, EngineOverloadedError (503) when they do not fit now."""
        if not self.is_running:
            raise EngineDeadError(f"the engine is not running: {self.dead_error!r}")
        with self._lock:
            if num_sequences > self.capacity:
                raise InvalidParameterError(
                    f"the request asks for {num_sequences} sequences (n x prompts), more than this server ever "
                    f"holds at once ({self.capacity}: max_num_seqs + max_waiting_requests)", param="n")
            if self._pending + num_sequences > self.capacity:
                raise EngineOverloadedError(f"the server is overloaded ({self._pending} sequences in flight, "
                                            f"{num_sequences} more asked for); retry later")
            self._pending += num_sequences
        return Admission(self, num_sequences)

    def _release(self, num_sequences: int) -> None:
        with self._lock:
            self._pending -= num_sequences

    async def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str, *,
                       add_special_tokens: bool = True, admission: Admission | None = None,
                       final_output_only: bool = False) -> AsyncIterator[RequestOutput]:
        """Yield the request's RequestOutput after every step that advanced it; the last one is finished (with
        ``final_output_only``, only that one: no snapshot is built for the steps before).

        Its ``params.n`` sequences come out of ``admission`` (one admission for all prompts of a request), else
        are admitted here. Leaving the iteration early (a client that disconnects) aborts the request and frees
        its blocks.
        """
        own = admission is None
        admission = self.admit(params.n) if own else admission
        try:
            with self._lock:
                if request_id in self._streams:
                    raise PegboardError(f"request id {request_id!r} is already in use")
                admission.take(params.n)
                stream: asyncio.Queue = asyncio.Queue()
                self._streams[request_id] = (asyncio.get_running_loop(), stream)
                self._sequences[request_id] = params.n
        finally:
            if own:
                admission.release()
        self._inbox.put(_Add(request_id, prompt, params, add_special_tokens, final_output_only))
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._inbox.put(_Abort(request_id))

    def abort(self, request_id: str) -> None:
        """Abort a request from any thread."""
        self._inbox.put(_Abort(request_id))

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the loop: in-flight requests are aborted; waits up to ``timeout`` seconds for the thread."""
        self._inbox.put(_STOP)
        self._thread.join(timeout)
        core_shutdown = getattr(self.engine.core, "shutdown", None)  # a core process is stopped too
        if core_shutdown is not None:
            core_shutdown()

    # ---- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                block = not engine.has_unfinished_requests()
                if not self._drain_inbox(block):
                    break
                if engine.has_unfinished_requests():
                    for output in engine.step():
                        if output.error is not None:  # its step failed; the engine serves the others on
                            self._deliver(output.request_id, RequestFailedError(output.error), True)
                        else:
                            self._deliver(output.request_id, output, output.finished)
        except BaseException as exc:  # a device error or a bug: fail every caller, never hang them
            logger.exception("engine loop failed")
            self.dead_error = exc
            if self.on_dead is not None:
                self.on_dead(exc)
            for request_id in list(self._streams):
                self._deliver(request_id, EngineDeadError(f"engine loop failed: {exc!r}"), True)
            return
        for request_id in list(self._streams):
            engine.abort_request(request_id)
            self._deliver(request_id, EngineDeadError("the engine was shut down"), True)

    def _drain_inbox(self, block: bool) -> bool:
        """Apply queued messages (waiting for one when idle); False once asked to stop."""
        try:
            message = self._inbox.get(block=block)
        except queue.Empty:
            return True
        while True:
            if message is _STOP:
                return False
            if isinstance(message, _Add):
                try:
                    self.engine.add_request(message.request_id, message.prompt, message.params,
                                            add_special_tokens=message.add_special_tokens,
                                            final_output_only=message.final_output_only)
                except Exception as exc:  # invalid input: the caller gets the error
                    self._deliver(message.request_id, exc, True)
            elif message.request_id in self._streams:
                self.engine.abort_request(message.request_id)
                self._forget(message.request_id)
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _deliver(self, request_id: str, item: object, last: bool) -> None:
        entry = self._streams.get(request_id)
        if entry is None:
            return
        loop, stream = entry
        if last:
            self._forget(request_id)
        try:
            loop.call_soon_threadsafe(stream.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed
            pass

    def _forget(self, request_id: str) -> None:
        with self._lock:
            if self._streams.pop(request_id, None) is not None:
                self._pending -= self._sequences.pop(request_id)


class Admission:
    """Room reserved for a request's sequences: each of its streams takes its share; ``release()`` gives back
    what no stream took (prompts never started because the request ended first)."""

    def __init__(self, engine: AsyncLLMEngine, num_sequences: int) -> None:
        self._engine = engine
        self.left = num_sequences

    def take(self, num_sequences: int) -> None:
        """Move ``num_sequences`` of the reserved room to a stream (which frees it when it finishes)."""
        if num_sequences > self.left:
            raise PegboardError(f"the admission has room for {self.left} more sequences, not {num_sequences}")
        self.left -= num_sequences

    def release(self) -> None:
        """Give back the room no stream took."""
        left, self.left = self.left, 0
        if left:
            self._engine._release(left)
