"""Connection hygiene, on raw sockets against a server in a thread: clients that send nothing, trickle their
headers or body, or idle after a response are disconnected in bounded time; long responses are not; the
connection cap answers 503 past exactly N; failed accepts (EMFILE) are logged once per interval."""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import socket
import time
from contextlib import contextmanager
from urllib.parse import urlparse

import pytest

from pegboard.core import cli
from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.config import EngineConfig
from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import load_board
from pegboard.server.app import build_app
from pegboard.plugins.serve_command.server_flags import connection_limits_from_args
from pegboard.server.connection_limits import ConnectionLimits, connection_cap_for_open_file_limit
from pegboard.server.rate_limited_log import RateLimitedLog
from pegboard.server.uvicorn_server import serving_in_thread

TIMEOUT = 0.5  # every read deadline and the keep-alive timeout in these tests
SHORT = ConnectionLimits(header_read_timeout=TIMEOUT, body_read_timeout=TIMEOUT, keep_alive_timeout=TIMEOUT)
BODY = json.dumps({"prompt": [1, 2, 3], "max_tokens": 2}).encode()
REQUEST = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


class SlowSteps:
    """Each engine step takes at least 20 ms, so a 100-token stream outlasts every deadline above."""

    @hookimpl
    def on_step_end(self, stats, engine):
        time.sleep(0.02)


@pytest.fixture(scope="module")
def app(tiny_llama_dir):
    config = EngineConfig(model=str(tiny_llama_dir), load_format="dummy", skip_tokenizer_init=True, device="cpu",
                          max_num_seqs=4, num_kv_blocks=64)
    engine = AsyncLLMEngine.from_config(config, load_board([SlowSteps()]))
    try:
        yield build_app(engine, ("tiny",))
    finally:
        engine.shutdown()


@contextmanager
def server(app, limits: ConnectionLimits = SHORT, **kwargs):
    """The app on a free loopback port; yields a function that opens a raw connection to it."""
    with serving_in_thread(app, limits=limits, **kwargs) as url:
        parsed = urlparse(url)
        address = (parsed.hostname, parsed.port)
        yield lambda: socket.create_connection(address, timeout=10)


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, received = time.monotonic(), b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - started


def trickle(sock: socket.socket, data: bytes, interval: float) -> float:
    """Send ``data`` a byte per ``interval`` until the server ends the connection; seconds until it did."""
    started = time.monotonic()
    for byte in data:
        if select.select([sock], [], [], interval)[0]:  # the server answered (408) or closed
            break
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
    else:
        raise AssertionError("the server kept the connection open while all of it trickled in")
    return time.monotonic() - started


def status_and_body(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# ---- read deadlines -----------------------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout(app):
    with server(app) as connect:
        received, seconds = read_until_closed(connect())
    assert received == b"" and TIMEOUT * 0.9 < seconds < TIMEOUT + 2


@pytest.mark.parametrize("sent_first, cut_short", [
    (b"", REQUEST[:REQUEST.index(b"\r\n\r\n")]),  # part of the headers
    (REQUEST[:-5], REQUEST[-5:-1]),  # the headers and part of the body
], ids=["headers", "body"])
def test_a_request_that_stops_short_gets_408_and_its_connection_closed(app, sent_first, cut_short):
    with server(app) as connect:
        sock = connect()
        sock.sendall(sent_first + cut_short)
        received, seconds = read_until_closed(sock)
        assert app.state.pegboard.engine.num_pending == 0  # nothing reached the engine
    assert status_and_body(received) == (408, b"") and TIMEOUT * 0.9 < seconds < TIMEOUT + 2


@pytest.mark.parametrize("sent_first, trickled", [
    (b"", REQUEST),  # the headers a byte at a time
    (REQUEST[:REQUEST.index(b"\r\n\r\n") + 4], BODY),  # then the body a byte at a time
], ids=["headers", "body"])
def test_trickling_bytes_does_not_extend_the_deadline(app, sent_first, trickled):
    with server(app) as connect:
        sock = connect()
        sock.sendall(sent_first)
        seconds = trickle(sock, trickled, interval=TIMEOUT / 5)  # the whole of it would take 5 to 20 timeouts
    assert seconds < TIMEOUT + 1.5


def test_an_idle_kept_alive_connection_is_closed_at_the_keep_alive_timeout(app):
    with server(app) as connect:
        sock = connect()
        sock.sendall(REQUEST)
        time.sleep(TIMEOUT * 0.6)  # under the timeout: the connection stays usable
        sock.sendall(REQUEST)
        received, seconds = read_until_closed(sock)
    assert received.count(b"HTTP/1.1 200 OK") == 2 and seconds < TIMEOUT + 2


def test_the_next_request_on_a_kept_alive_connection_has_a_header_deadline_too(app):
    with server(app, ConnectionLimits(header_read_timeout=TIMEOUT, keep_alive_timeout=60)) as connect:
        sock = connect()
        sock.sendall(REQUEST + b"POST /v1/completions HTTP/1.1\r\nHo")
        received, seconds = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.1 408 Request Timeout" in received
    assert seconds < TIMEOUT + 2


def test_a_response_that_outlasts_every_deadline_is_not_cut(app):
    with server(app) as connect:
        sock = connect()
        body = json.dumps({"prompt": [1], "max_tokens": 100, "ignore_eos": True, "stream": True}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        received, seconds = read_until_closed(sock)  # the keep-alive timeout closes it after [DONE]
    assert seconds > 3 * TIMEOUT and b'"finish_reason":"length"' in received and b"data: [DONE]" in received


# ---- the connection cap -------------------------------------------------------------------------------------


def test_the_connection_cap_admits_exactly_n_connections_and_answers_503_past_it(app):
    with server(app, ConnectionLimits(limit_concurrency=2)) as connect:
        idle = connect()
        admitted = connect()
        admitted.sendall(REQUEST)
        assert admitted.recv(65536).startswith(b"HTTP/1.1 200 OK")  # two open connections: within the cap
        refused = connect()
        refused.sendall(REQUEST)
        response, _ = read_until_closed(refused)  # and then it is closed
        status, body = status_and_body(response)
        assert status == 503 and b"retry-after: 1" in response.lower()
        assert json.loads(body)["error"] == {"message": "the server has reached its limit of 2 connections; "
                                             "retry later", "type": "server_error", "param": None,
                                             "code": "too_many_connections"}
        idle.close()
        time.sleep(0.2)  # the server notices the close
        later = connect()
        later.sendall(REQUEST)
        assert later.recv(65536).startswith(b"HTTP/1.1 200 OK")


# ---- accept errors ------------------------------------------------------------------------------------------


class FailingAccepts(socket.socket):
    """A listening socket whose accept() fails with EMFILE while ``failing`` is set, as at the open-file limit."""

    failing = True
    attempts = 0

    def accept(self):
        if self.failing:
            self.attempts += 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return super().accept()


def test_failed_accepts_are_logged_once_per_interval_and_serving_resumes(app, caplog):
    sock = FailingAccepts(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    with caplog.at_level(logging.WARNING), server(app, sock=sock) as connect:
        client = connect()  # waits in the listen backlog while accept() fails
        client.sendall(REQUEST)
        time.sleep(2.5)  # asyncio retries every second, a backlog's worth of accept() each time
        failures = sock.attempts
        sock.failing = False
        assert client.recv(65536).startswith(b"HTTP/1.1 200 OK")
    logged = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert failures > 1000 and len(logged) == 1
    assert "Too many open files" in logged[0].getMessage() and logged[0].exc_info is None


def test_a_rate_limited_log_counts_what_it_did_not_log(caplog):
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.rate_limited"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.rate_limited"):
        for second in range(25):
            now[0] = float(second)
            log.warning("refused", "refused %s", "a connection")
        log.warning("timed-out", "timed out")
    assert [r.getMessage() for r in caplog.records] == ["refused a connection", "refused a connection (and 9 more times in the last 10 s)",
                     "refused a connection (and 9 more times in the last 10 s)", "timed out"]


# ---- flags --------------------------------------------------------------------------------------------------


def parse_serve(*flags: str):
    return cli.build_parser(load_board()).parse_args(["serve", "m", *flags])


def test_connection_flags_have_defaults_and_reach_the_limits():
    assert connection_limits_from_args(parse_serve()) == ConnectionLimits(
        header_read_timeout=10, body_read_timeout=60, keep_alive_timeout=5,
        limit_concurrency=connection_cap_for_open_file_limit())
    given = parse_serve("--header-read-timeout", "2", "--body-read-timeout", "3", "--timeout-keep-alive", "4",
                        "--limit-concurrency", "5")
    assert connection_limits_from_args(given) == ConnectionLimits(2, 3, 4, 5)


@pytest.mark.parametrize("flag, value", [("--header-read-timeout", "0"), ("--body-read-timeout", "nan"),
                                         ("--timeout-keep-alive", "inf"), ("--limit-concurrency", "0")])
def test_a_connection_flag_that_bounds_nothing_stops_the_server_at_start(capsys, flag, value):
    assert cli.main(["serve", "some-model", flag, value]) == 2
    assert flag in capsys.readouterr().err
