"""Grammars compiled off the engine loop: a request that asks for one waits in its own state
(``RequestStatus.WAITING_FOR_GRAMMAR``) while a worker thread compiles it, and reaches the scheduler once its
grammar is ready; the loop keeps stepping the other requests meanwhile.

The thread calls the grammar's ``compile`` once and drops the matcher: a grammar caches what it compiled
(per spec and tokenizer), so the runner's own ``compile`` when the request is scheduled is a cache hit.
A compile that fails ends its request with the error (finish reason ``error``).
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable

from pegboard.core.grammar_processor import grammar_spec
from pegboard.core.request import Request, RequestStatus

COMPILE_THREADS = 2


class GrammarCompiler:
    """The requests whose grammars are compiling, and the threads compiling them."""

    def __init__(self, grammars: Any, *, vocab_size: int, tokenizer: Callable[[], Any],
                 backend: str = "pegboard") -> None:
        self.grammars = grammars
        self.backend = backend
        self.vocab_size = vocab_size
        self.tokenizer = tokenizer
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._waiting: dict[str, tuple[Request, concurrent.futures.Future]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._waiting)

    def holds(self, request_id: str) -> bool:
        return request_id in self._waiting

    def submit(self, request: Request) -> bool:
        """Start compiling the request's grammar; False when it asks for none (schedule it at once)."""
        spec = grammar_spec(request.sampling_params, self.grammars, self.backend)
        if spec is None:
            return False
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(COMPILE_THREADS, thread_name_prefix="pegboard-grammar")
        request.status = RequestStatus.WAITING_FOR_GRAMMAR
        self._waiting[request.request_id] = (request, self._pool.submit(self._compile, *spec))
        return True

    def _compile(self, name: str, body: Any) -> None:
        with self._lock:  # one tokenizer load, shared by the threads
            tokenizer = self.tokenizer()
        self.grammars.get(name).compile(body, vocab_size=self.vocab_size, tokenizer=tokenizer)

    def ready(self) -> list[tuple[Request, BaseException | None]]:
        """The requests whose compile ended, in arrival order, each with its error (None: compiled)."""
        done = [(rid, request, future) for rid, (request, future) in self._waiting.items() if future.done()]
        for rid, _, _ in done:
            del self._waiting[rid]
        return [(request, future.exception()) for _, request, future in done]

    def wait(self, timeout: float) -> None:
        """Block until some compile ends, at most ``timeout`` seconds (the loop has nothing else to do)."""
        if self._waiting:
            concurrent.futures.wait([f for _, f in self._waiting.values()], timeout,
                                    return_when=concurrent.futures.FIRST_COMPLETED)

    def abort(self, request_ids: list[str]) -> list[Request]:
        """Forget waiting requests (their compiles finish unobserved: the cache keeps the result)."""
        return [self._waiting.pop(rid)[0] for rid in request_ids if rid in self._waiting]

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
