"""An engine core in its own process: a loop that reads requests and aborts from a pipe, steps, and writes
EngineCoreOutputs back. The front end (HTTP, tokenizing, detokenizing) stays in the parent process
(core_client.py); only frozen messages cross, pickled over a ``multiprocessing`` pipe.

Messages in: ``("add", EngineCoreRequest)``, ``("abort", [request ids])``, ``("shutdown",)``.
Messages out: ``("ready", ModelInfo, ModelFiles)`` once, then one ``EngineCoreOutputs`` per step, or
``("failed", text)`` when the core cannot start. A device failure ends the process with status 1.
"""

from __future__ import annotations

import logging
import sys
import traceback
from multiprocessing.connection import Connection

from pegboard.core.config import EngineConfig
from pegboard.core.messages import EngineCoreOutput, EngineCoreOutputs

logger = logging.getLogger("pegboard.core_process")


def run_engine_core(config: EngineConfig, conn: Connection, log_level: int) -> None:
    """The child process's main function."""
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from pegboard.core.engine_core import EngineCore  # plugins load here, by name and entry point
    from pegboard.core.load_settings import loading_with

    try:
        with loading_with(config):
            core = EngineCore(config)
    except BaseException as exc:  # the parent shows why, then exits
        conn.send(("failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    conn.send(("ready", core.model_info, core.files))
    try:
        serve(core, conn)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the front end went away
        return
    except BaseException:
        logger.exception("the engine core stopped")
        sys.exit(1)


def serve(core, conn: Connection) -> None:
    """Step while there is work; block on the pipe while there is none."""
    while True:
        if conn.poll(0 if core.has_unfinished_requests() else None):
            changed = False
            while conn.poll(0):
                message = conn.recv()
                if message[0] == "shutdown":
                    return
                changed |= _apply(core, message, conn)
            if changed and not core.has_unfinished_requests():  # aborts while idle: the gauges moved
                conn.send(EngineCoreOutputs((), None, core.gauges()))
        if core.has_unfinished_requests():
            outputs = core.step()
            if outputs.outputs or outputs.stats is not None:
                conn.send(outputs)


def _apply(core, message: tuple, conn: Connection) -> bool:
    """Apply one message; a request the core refuses comes back as an error output."""
    kind, payload = message
    if kind == "add":
        try:
            core.add_request(payload)
        except Exception as exc:
            conn.send(EngineCoreOutputs((EngineCoreOutput(payload.request_id, (), finish_reason="error",
                                                          error=f"the engine core refused the request: {exc}"),)))
        return False
    core.abort_requests(payload)
    return True
