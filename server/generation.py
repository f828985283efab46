"""The engine requests of one HTTP request (one per prompt): started together, merged, aborted together."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import AsyncIterator, Awaitable, TypeVar

from starlette.requests import Request

from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.outputs import RequestOutput
from pegboard.core.sampling_params import SamplingParams
from pegboard.server.errors import ClientDisconnected

T = TypeVar("T")


class Generation:
    """Streams ``(prompt index, RequestOutput)`` of every prompt; closing it aborts what is still running.

    The request's n x prompts sequences are admitted at once, before any prompt's task exists: a request that
    could never fit is a 400, one that does not fit now a 503, and neither costs a task per prompt.
    """

    def __init__(self, engine: AsyncLLMEngine, prompts: list[list[int]], params: SamplingParams,
                 request_id: str, *, final_output_only: bool = False) -> None:
        self._admission = engine.admit(params.n * len(prompts))
        self._queue: asyncio.Queue = asyncio.Queue()
        self._buffer: deque[tuple[int, RequestOutput]] = deque()
        self._tasks = [asyncio.create_task(self._pump(i, engine.generate(
            ids, params, f"{request_id}-{i}", admission=self._admission, final_output_only=final_output_only)))
                       for i, ids in enumerate(prompts)]

    async def _pump(self, index: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for output in stream:
                self._queue.put_nowait((index, output))
        except Exception as exc:  # overloaded, invalid input, a dead engine: the reader raises it
            self._queue.put_nowait((index, exc))

    async def _next(self) -> tuple[int, RequestOutput]:
        index, item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        return index, item

    async def started(self) -> None:
        """Wait until every prompt has its first output; errors (overload, bad input) are raised here."""
        seen: set[int] = set()
        while len(seen) < len(self._tasks):
            index, output = await self._next()
            self._buffer.append((index, output))
            seen.add(index)

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Every prompt's outputs as they come, until all are finished."""
        running = len(self._tasks)
        while running:
            index, output = self._buffer.popleft() if self._buffer else await self._next()
            running -= output.finished
            yield index, output

    async def final_outputs(self) -> list[RequestOutput]:
        """The finished output of every prompt, in prompt order."""
        final: dict[int, RequestOutput] = {}
        async for index, output in self.outputs():
            final[index] = output
        return [final[i] for i in range(len(self._tasks))]

    async def aclose(self) -> None:
        """Abort the engine requests still running."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._admission.release()  # the room of prompts whose task ended before it started


async def until_disconnected(request: Request) -> None:
    """Return when the client has gone away (call once the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task not in done:
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected()
    return task.result()
