"""`pegboard serve` flags, plugin routes, the API key, overload (503), client disconnects (abort) and SIGTERM
(graceful, exit 0), on the tiny random Llama with token-id prompts (no tokenizer needed)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from urllib.parse import urlparse

import openai
import pytest
from starlette.responses import PlainTextResponse

from pegboard.core import cli
from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.cli_args import engine_kwargs_from_args
from pegboard.core.config import EngineConfig
from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import load_board
from pegboard.server.app import build_app
from pegboard.server.served_name import default_served_name
from pegboard.server.uvicorn_server import serving_in_thread

LONG = {"prompt": [1, 2, 3], "max_tokens": 250, "ignore_eos": True}


class Recorder:
    """A plugin that records finished requests, adds a GET /hello route and a ``serve --shout`` flag."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    @hookimpl
    def on_request_finished(self, output):
        self.finished.append(output.request_id)

    @hookimpl
    def add_cli_arguments(self, parser, command):
        if command == "serve":
            parser.add_argument("--shout", action="store_true")

    @hookimpl
    def register_routes(self, app, engine):
        app.add_route("/hello", lambda request: PlainTextResponse(f"hello from {engine.engine.config.model}"))


@contextmanager
def tiny_server(model_dir, *, max_num_seqs: int = 4, max_waiting_requests: int = 16, plugin=None, **app_kwargs):
    """The tiny Llama served on a free loopback port: yields (base URL, AsyncLLMEngine)."""
    config = EngineConfig(model=str(model_dir), load_format="dummy", skip_tokenizer_init=True, device="cpu",
                          max_num_seqs=max_num_seqs, num_kv_blocks=128)
    board = load_board([plugin] if plugin else [])
    engine = AsyncLLMEngine.from_config(config, board, max_waiting_requests=max_waiting_requests)
    try:
        with serving_in_thread(build_app(engine, ("tiny",), **app_kwargs)) as url:
            yield url, engine
    finally:
        engine.shutdown()


def connect(url: str, body: dict, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """POST /v1/completions and return the open response (read it, or close it to disconnect)."""
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    connection.request("POST", "/v1/completions", body=json.dumps(body),
                       headers={"Content-Type": "application/json", **(headers or {})})
    return connection.getresponse()


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def all_blocks_free(engine: AsyncLLMEngine) -> bool:
    manager = engine.engine.block_manager
    return engine.num_pending == 0 and manager.num_free_blocks == manager.num_blocks


# ---- flags --------------------------------------------------------------------------------------------------


def test_serve_flags_reach_the_engine_config_and_the_server():
    args = cli.build_parser(load_board([Recorder()])).parse_args([
        "serve", "some-model", "--speculative-model", "[ngram]", "--num-speculative-tokens", "3",
        "--tensor-parallel-size", "2", "--pipeline-parallel-size", "2", "--port", "9000", "--host", "127.0.0.1",
        "--served-model-name", "a", "b", "--api-key", "k", "--max-waiting-requests", "5", "--shutdown-timeout", "2",
        "--shout"])
    config = EngineConfig(model=args.model, **engine_kwargs_from_args(args))
    assert (config.model, config.speculative_model, config.num_speculative_tokens) == ("some-model", "[ngram]", 3)
    assert (config.tensor_parallel_size, config.pipeline_parallel_size, config.extra) == (2, 2, {"shout": True})
    assert (args.port, args.host, args.served_model_name, args.api_key) == (9000, "127.0.0.1", ["a", "b"], "k")
    assert (args.max_waiting_requests, args.shutdown_timeout) == (5, 2.0)


@pytest.mark.parametrize("flags, missing", [
    (["--quantization", "fp8"], "quantization scheme plugin named 'fp8'"),
    (["--speculative-model", "some/draft-model", "--num-speculative-tokens", "2"], "proposer plugin named 'draft'"),
    (["--tensor-parallel-size", "2"], "needs a multi-process executor plugin"),
    (["--executor", "ray"], "executor plugin named 'ray'"),
])
def test_a_flag_no_plugin_provides_fails_at_start_naming_it(tiny_llama_dir, capsys, flags, missing):
    assert cli.main(["serve", str(tiny_llama_dir), "--load-format", "dummy", "--device", "cpu", *flags]) == 2
    assert missing in capsys.readouterr().err


# ---- plugins, API key, overload ---------------------------------------------------------------------------------


def test_register_routes_adds_plugin_routes(tiny_llama_dir):
    with tiny_server(tiny_llama_dir, plugin=Recorder()) as (url, _):
        parsed = urlparse(url)
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        connection.request("GET", "/hello")
        assert connection.getresponse().read().decode() == f"hello from {tiny_llama_dir}"


def test_an_api_key_guards_every_route_but_health(tiny_llama_dir):
    with tiny_server(tiny_llama_dir, api_key="sekrit") as (url, _):
        with pytest.raises(openai.AuthenticationError) as denied:
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert denied.value.status_code == 401 and denied.value.body["code"] == "invalid_api_key"
        missing = connect(url, {"prompt": [1], "max_tokens": 1})
        assert missing.status == 401 and json.loads(missing.read())["error"]["code"] == "invalid_api_key"
        client = openai.OpenAI(base_url=url + "/v1", api_key="sekrit", max_retries=0)
        assert client.completions.create(model="tiny", prompt=[1, 2], max_tokens=2).usage.completion_tokens == 2
        assert _healthy(url)


@pytest.mark.parametrize("authorization, status", [
    ("bearer sekrit", 200), ("BEARER sekrit", 200), ("bEaReR  sekrit", 200),  # RFC 7235: any case, 1*SP
    ("Basic sekrit", 401), ("Bearer sekri", 401), ("Bearer sekrit2", 401), ("sekrit", 401), ("Bearer", 401),
])
def test_the_bearer_scheme_is_case_insensitive_and_the_key_must_match(tiny_llama_dir, authorization, status):
    with tiny_server(tiny_llama_dir, api_key="sekrit") as (url, _):
        assert connect(url, {"prompt": [1], "max_tokens": 1}, {"Authorization": authorization}).status == status


def test_a_local_model_is_served_under_the_last_part_of_its_path(tmp_path):
    (tmp_path / "SmolLM2-Q4_1.gguf").touch()
    (tmp_path / "my-model").mkdir()
    assert default_served_name(str(tmp_path / "SmolLM2-Q4_1.gguf")) == "SmolLM2-Q4_1"
    assert default_served_name(f"{tmp_path}/my-model/") == "my-model"
    assert default_served_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_models_are_listed_by_name_never_by_the_model_path(tiny_llama_dir):
    config = EngineConfig(model=str(tiny_llama_dir), load_format="dummy", skip_tokenizer_init=True, device="cpu",
                          num_kv_blocks=16)
    engine = AsyncLLMEngine.from_config(config, load_board([]))
    try:
        with serving_in_thread(build_app(engine)) as url:  # no served names: the path's last part
            parsed = urlparse(url)
            connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
            connection.request("GET", "/v1/models")
            listing = connection.getresponse().read().decode()
    finally:
        engine.shutdown()
    assert [card["id"] for card in json.loads(listing)["data"]] == [tiny_llama_dir.name]
    assert str(tiny_llama_dir.parent) not in listing


def test_requests_beyond_the_waiting_limit_get_503_with_retry_after(tiny_llama_dir):
    with tiny_server(tiny_llama_dir, max_num_seqs=1, max_waiting_requests=0) as (url, engine):
        running = connect(url, {**LONG, "stream": True})
        assert running.status == 200 and running.readline().startswith(b"data: ")
        refused = connect(url, {"prompt": [1], "max_tokens": 1})
        error = json.loads(refused.read())["error"]
        assert refused.status == 503 and refused.getheader("Retry-After") == "1"
        assert (error["type"], error["code"]) == ("server_error", "engine_overloaded")
        running.close()
        wait_for(lambda: all_blocks_free(engine))
        assert connect(url, {"prompt": [1], "max_tokens": 1}).status == 200


def test_a_stopped_engine_makes_health_and_generation_503(tiny_llama_dir):
    with tiny_server(tiny_llama_dir) as (url, engine):
        engine.shutdown()
        assert not _healthy(url)
        refused = connect(url, {"prompt": [1], "max_tokens": 1})
        assert refused.status == 503 and json.loads(refused.read())["error"]["code"] == "engine_dead"


# ---- disconnects ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_aborts_its_request_and_frees_its_blocks(tiny_llama_dir, stream):
    recorder = Recorder()
    with tiny_server(tiny_llama_dir, plugin=recorder) as (url, engine):
        if stream:
            response = connect(url, {**LONG, "stream": True, "n": 2})
            assert response.readline().startswith(b"data: ")
            response.close()
        else:
            parsed = urlparse(url)
            client = socket.create_connection((parsed.hostname, parsed.port))
            body = json.dumps({**LONG, "n": 2}).encode()
            client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: engine.num_pending == 2)  # its n=2 sequences
            client.close()
        wait_for(lambda: all_blocks_free(engine))
        assert recorder.finished == []  # aborted, not finished
        assert connect(url, {"prompt": [1], "max_tokens": 1}).status == 200


# ---- SIGTERM ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_process(model_dir, *flags: str, pythonpath: str | None = None):
    """``pegboard serve`` of the tiny Llama in a subprocess on a free port: yields (process, base URL)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "pegboard.core.cli", "serve", str(model_dir), "--load-format", "dummy",
         "--skip-tokenizer-init", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
         "--served-model-name", "tiny", "--log-level", "warning", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: _healthy(url) or process.poll() is not None, timeout=120)
        assert process.poll() is None, process.stdout.read().decode()
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_finishes_in_flight_requests_then_exits_0(tiny_llama_dir):
    with serve_process(tiny_llama_dir) as (process, url):
        response = connect(url, {**LONG, "stream": True, "return_token_ids": True})
        first = response.readline()
        process.send_signal(signal.SIGTERM)
        events = [line for line in (first + response.read()).splitlines() if line]
        chunks = [json.loads(e[6:]) for e in events if e.startswith(b"data: {")]
        assert events[-1] == b"data: [DONE]"
        assert sum(len(c["choices"][0]["token_ids"]) for c in chunks) == 250
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert process.wait(timeout=60) == 0


SLOW_STEPS = """
import time
from pegboard.core.hookspecs import hookimpl

@hookimpl
def on_step_end(stats):
    time.sleep(0.05)
"""


def test_requests_still_running_at_the_shutdown_timeout_end_with_an_error_and_the_exit_is_0(tiny_llama_dir, tmp_path):
    (tmp_path / "slow_steps.py").write_text(SLOW_STEPS)  # 250 tokens now take over 12 s
    with serve_process(tiny_llama_dir, "--plugin", "slow_steps", "--shutdown-timeout", "0.5",
                       pythonpath=str(tmp_path)) as (process, url):
        stream = connect(url, {**LONG, "stream": True})
        first = stream.readline()
        whole = send_only(url, LONG)
        wait_for(lambda: running_requests(url) == 2)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        events = [line for line in (first + stream.read()).splitlines() if line]
        answer = whole.getresponse()
        assert process.wait(timeout=30) == 0 and time.monotonic() - started < 10
        log = process.stdout.read().decode()
    error = json.loads(events[-2].removeprefix(b"data: "))["error"]
    assert events[-1] == b"data: [DONE]" and (error["type"], error["code"]) == ("server_error", "engine_dead")
    assert answer.status == 503 and json.loads(answer.read())["error"]["code"] == "engine_dead"
    assert "Traceback" not in log and "ERROR" not in log, log


def test_serve_bounds_connections_as_its_flags_say(tiny_llama_dir):
    flags = ("--header-read-timeout", "0.5", "--timeout-keep-alive", "0.5", "--limit-concurrency", "2")
    with serve_process(tiny_llama_dir, *flags) as (process, url):
        parsed = urlparse(url)
        idle = socket.create_connection((parsed.hostname, parsed.port), timeout=5)  # under the defaults
        served = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=5)
        served.request("GET", "/v1/models")
        response = served.getresponse()
        assert response.status == 200 and response.read()  # two connections: within the cap
        refused = socket.create_connection((parsed.hostname, parsed.port), timeout=5)
        refused.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_until_closed(refused).startswith(b"HTTP/1.1 503")  # the third
        assert _read_until_closed(idle) == b""  # closed at the header read timeout
        assert _read_until_closed(served.sock) == b""  # closed at the keep-alive timeout


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def send_only(url: str, body: dict) -> http.client.HTTPConnection:
    """POST /v1/completions without waiting for the answer (``getresponse()`` it later)."""
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    connection.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    return connection


def running_requests(url: str) -> float:
    """The server's ``pegboard:num_requests_running`` gauge."""
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=5)
    connection.request("GET", "/metrics")
    for line in connection.getresponse().read().decode().splitlines():
        if line.startswith("pegboard:num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no pegboard:num_requests_running in /metrics")


def _healthy(url: str) -> bool:
    parsed = urlparse(url)
    try:
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=5)
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
