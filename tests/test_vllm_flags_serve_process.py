"""``pegboard serve`` as a process with vLLM's flags: start-up refusals in one line naming the flag, a real server
taking vLLM's API key, CORS and root-path flags, and ``--help`` stating every default (the flags' meanings:
tests/test_vllm_flags.py)."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

import pytest

from pegboard.core.cli import build_parser
from pegboard.core.plugins import load_board
from pegboard.plugins.serve_command.refused_vllm_flags import refused_flags

BOARD = load_board()


# ---- start-up refusals are one line, without a traceback --------------------------------------------------------


def run_serve(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pegboard.core.cli", "serve", *argv], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("argv, message", [
    (["--kv-cache-dtype", "fp8_e4m3"], "error: kv_cache_dtype='fp8_e4m3': quantized (fp8) KV caches are not implemented"),
    (["--speculative-config", "{method: ngram}"], "argument --speculative-config: not JSON"),
    (["--allowed-origins", "*"], "argument --allowed-origins: must be a JSON list of strings"),
    (["--max-model-len", "-1"], "argument --max-model-len: '-1' is not a count of tokens"),
    (["--scheduling-policy", "priority"], "error: scheduling_policy='priority'"),
])
def test_serve_refuses_at_start_with_one_line_naming_the_flag(argv, message):
    done = run_serve(*argv)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if "error" in line]) == 1


def test_serve_refuses_an_unknown_config_key_with_one_line(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("max_num_sequences: 8\n")
    done = run_serve("--config", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().endswith(f"error: --config '{path}': 'max_num_sequences' is not a flag of this "
                                        "command (see --help)")


# ---- a real pegboard serve with vLLM's front-end flags ------------------------------------------------------------


def _request(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers or {}), timeout=30) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_serve_takes_vllm_api_key_cors_and_root_path(tiny_llama_dir, free_port):
    import os
    import time

    url = f"http://127.0.0.1:{free_port}"
    env = {**os.environ, "VLLM_API_KEY": "from-vllm", "PYTHONUNBUFFERED": "1"}
    env.pop("PEGBOARD_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "pegboard.core.cli", "serve", str(tiny_llama_dir), "--load-format", "dummy",
         "--skip-tokenizer-init", "--device", "cpu", "--num-kv-blocks", "64", "--host", "127.0.0.1", "--port",
         str(free_port), "--root-path", "/llm", "--allowed-origins", '["https://app.example"]'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert _request(url + "/v1/models")[0] == 401  # $VLLM_API_KEY protects the server
        assert _request(url + "/v1/models", headers={"Authorization": "Bearer from-vllm"})[0] == 200
        status, headers = _request(url + "/v1/completions", "OPTIONS", {"Origin": "https://app.example",
                                                                        "Access-Control-Request-Method": "POST"})
        assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"  # no key needed
        assert _request(url + "/v1/models", headers={"Origin": "https://evil.example"})[1].get(
            "access-control-allow-origin") is None
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    assert "API key: from $VLLM_API_KEY" in output
    assert '"GET /llm/v1/models HTTP/1.1" 401' in output  # the access log, paths under the root path


def _healthy(url: str) -> bool:
    try:
        return _request(url + "/health")[0] == 200
    except OSError:  # not listening yet
        return False


def test_vllm_variables_pegboard_does_not_read_are_named_at_start(caplog):
    from pegboard.plugins.serve_command.server_flags import warn_unread_vllm_variables

    environ = {"VLLM_API_KEY": "k", "VLLM_ATTENTION_BACKEND": "FLASH_ATTN", "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    with caplog.at_level(logging.WARNING, logger="pegboard.server"):
        assert warn_unread_vllm_variables(environ) == ["VLLM_ATTENTION_BACKEND", "VLLM_WORKER_MULTIPROC_METHOD"]
    assert "$VLLM_ATTENTION_BACKEND is set; pegboard does not read it (use --attention-backend)" in caplog.text
    assert "$VLLM_WORKER_MULTIPROC_METHOD is set; pegboard does not read it" in caplog.text


@pytest.mark.parametrize("words", [("serve",), ("bench", "serve")])
def test_help_states_every_flags_default(words):
    sub = build_parser(BOARD, only=(words[0],))
    for word in words:
        sub = next(a for a in sub._actions if a.dest == "command").choices[word]
    undocumented = [action.option_strings for action in sub._actions if action.dest != "help"
                    and action.help != argparse.SUPPRESS and "default" not in (action.help or "")]
    assert undocumented == []


def test_a_config_file_can_give_a_required_flag(tiny_chat_model, tmp_path, capsys):
    from pegboard.core.cli import main

    path = tmp_path / "generate.yaml"
    path.write_text(f"model: {tiny_chat_model}\nload-format: dummy\nprompt: [Hi, Bye]\nmax_tokens: 2\n"
                    "temperature: 0\n")
    assert main(["generate", "--config", str(path), "--max-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "--- prompt 0 ---" in out and "--- prompt 1 ---" in out


def test_a_port_out_of_range_is_one_line():
    done = run_serve("--port", "99999")
    assert done.returncode == 2 and done.stderr.endswith("error: --port must be a TCP port, 0 to 65535, got 99999\n")


@pytest.mark.parametrize("flag", refused_flags())
def test_a_vllm_flag_of_a_missing_feature_is_refused_in_one_line_saying_why(flag, capsys):
    from pegboard.core.cli import main
    from pegboard.plugins.serve_command.refused_vllm_flags import REFUSED

    with pytest.raises(SystemExit) as stopped:
        main(["serve", flag, "1"])
    reason = next(reason for flags, reason in REFUSED.items() if flag in flags)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"error: {flag} (a vllm serve flag): {reason} (see 'pegboard serve --help')\n"
