"""The ``pegboard`` command: plugins listing, generate, bench delegation, plugin flags and error handling."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from pegboard.core.cli import build_parser, main
from pegboard.core.cli_args import add_engine_arguments, engine_kwargs_from_args
from pegboard.core.config import EngineConfig
from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import DEFAULT_PLUGINS, load_board
from pegboard.plugins import bench


CLI_PLUGIN = """
    from pegboard.core.hookspecs import hookimpl

    engine_extras = []

    @hookimpl
    def add_cli_arguments(parser, command):
        if command == "generate":
            parser.add_argument("--shout", action="store_true", help="an option of the test plugin")

    @hookimpl
    def on_engine_start(engine):
        engine_extras.append(engine.config.extra)
"""

BENCH_STUB = """
    from pegboard.core.cli_args import add_engine_arguments, engine_kwargs_from_args

    calls = []

    def add_arguments(parser):
        add_engine_arguments(parser)
        parser.add_argument("--model", default="smollm2")
        parser.add_argument("--num-prompts", type=int, default=10)

    def main(args):
        calls.append((args.model, args.num_prompts, engine_kwargs_from_args(args)))
        return 0
"""


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m pegboard.core.cli ARGV`` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "pegboard.core.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


# ---- plugins -------------------------------------------------------------------------------------------


def test_plugins_lists_every_builtin_and_what_it_registered(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in DEFAULT_PLUGINS:
        assert f"{name}\n" in out
    assert "pegboard.plugins.uniproc_executor\n  executors: uniproc\n" in out


def test_plugins_json_lists_registrations_hooks_and_failures(capsys, module_dir):
    plugin = module_dir("json_listed_plugin", CLI_PLUGIN)
    assert main(["plugins", "--json", "--plugin", plugin, "--plugin", "not_a_module_anywhere"]) == 0
    report = json.loads(capsys.readouterr().out)
    by_name = {p["name"]: p for p in report["plugins"]}
    assert by_name["pegboard.plugins.default_sampler"]["registered"] == {"samplers": ["default"]}
    assert by_name[plugin] == {"name": plugin, "registered": {}, "hooks": ["add_cli_arguments", "on_engine_start"]}
    assert report["failures"] == [{"name": "not_a_module_anywhere",
                                   "error": "ModuleNotFoundError: No module named 'not_a_module_anywhere'"}]


def test_a_broken_plugin_is_named_on_stderr_and_help_and_plugins_still_work(module_dir):
    module_dir("plugin_with_missing_dependency", "import some_missing_dependency\n")
    env = {"PEGBOARD_PLUGINS": "plugin_with_missing_dependency",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(module_dir.path), os.environ.get("PYTHONPATH")]))}
    help_run = run_cli("--help", env=env)
    assert help_run.returncode == 0 and help_run.stdout.startswith("usage: pegboard")
    assert "plugin 'plugin_with_missing_dependency' failed to load" in help_run.stderr
    assert "some_missing_dependency" in help_run.stderr
    listing = run_cli("plugins", env=env)
    assert listing.returncode == 0 and "pegboard.plugins.llama" in listing.stdout
    assert "failed to load:\n  plugin_with_missing_dependency: ModuleNotFoundError" in listing.stdout


def test_plugins_command_does_not_import_torch():
    code = "import sys; from pegboard.core.cli import main; main(['plugins']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "False"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("pegboard 0.")


# ---- generate ------------------------------------------------------------------------------------------


def test_generate_prints_one_completion_per_prompt(tiny_chat_model, capsys):
    rc = main(["generate", str(tiny_chat_model), "--load-format", "dummy", "--prompt", "Hello", "--prompt", "Bye",
               "--max-tokens", "4", "--temperature", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("--- prompt 0 ---\n") and "\n--- prompt 1 ---\n" in out


def test_generate_chat_wraps_each_prompt_as_a_user_message(tiny_chat_model, capsys):
    rc = main(["generate", str(tiny_chat_model), "--load-format", "dummy", "--chat", "--prompt", "Hi",
               "--max-tokens", "3", "--n", "2", "--seed", "3"])
    assert rc == 0
    assert capsys.readouterr().out.count("--- prompt 0, completion ") == 2


def test_plugin_flags_exist_before_parsing_and_reach_the_engine_config(tiny_chat_model, module_dir, capsys):
    plugin = module_dir("shouting_plugin", CLI_PLUGIN)
    rc = main(["generate", str(tiny_chat_model), "--load-format", "dummy", "--prompt", "Hi", "--max-tokens", "2",
               "--shout", "--plugin", plugin])
    assert rc == 0
    assert sys.modules[plugin].engine_extras == [{"shout": True}]
    with pytest.raises(SystemExit):
        main(["generate", "--help", "--plugin", plugin])
    assert "an option of the test plugin" in capsys.readouterr().out


@pytest.mark.parametrize("command, argv", [("generate", ["generate", "--prompt", "x"]), ("serve", ["serve"]),
                                           ("bench throughput", ["bench", "throughput"])])
def test_plugin_flags_reach_every_command_that_starts_an_engine(command, argv):
    class Shouting:
        @hookimpl
        def add_cli_arguments(self, parser, command):
            parser.add_argument("--shout", action="store_true", help=f"shout in 'pegboard {command}'")

    args = build_parser(load_board([Shouting()])).parse_args([*argv, "--shout"])
    assert args.command == command and engine_kwargs_from_args(args)["extra"] == {"shout": True}


def test_a_plugin_whose_cli_hook_fails_is_skipped_with_a_warning(module_dir, capsys):
    plugin = module_dir("clashing_plugin", """
        from pegboard.core.hookspecs import hookimpl

        @hookimpl
        def add_cli_arguments(parser):
            parser.add_argument("--log-level")  # already taken
    """)
    assert main(["plugins", "--plugin", plugin]) == 0
    assert "plugin 'clashing_plugin' failed to add arguments to 'pegboard plugins'" in capsys.readouterr().err


def test_pegboard_errors_are_one_line_without_a_traceback(capsys):
    assert main(["generate", "/no/such/model", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "error: model path '/no/such/model' does not exist\n" in err and "Traceback" not in err
    assert main(["generate", "--prompt", "x", "--temperature", "-1"]) == 2
    assert capsys.readouterr().err.endswith("error: temperature must be >= 0, got -1.0\n")


def test_log_level_debug_shows_the_traceback(capsys):
    assert main(["--log-level", "debug", "generate", "/no/such/model", "--prompt", "x"]) == 2
    assert "Traceback" in capsys.readouterr().err


# ---- bench -----------------------------------------------------------------------------------------------


def test_bench_throughput_delegates_to_its_module(module_dir, monkeypatch):
    stub = module_dir("bench_stub", BENCH_STUB)
    monkeypatch.setitem(bench.BENCHMARKS, "throughput", stub)
    rc = main(["bench", "throughput", "--model", "m", "--num-prompts", "3", "--dtype", "float32",
               "--enable-prefix-caching"])
    assert rc == 0
    assert sys.modules[stub].calls == [("m", 3, {"dtype": "float32", "enable_prefix_caching": True})]


def test_a_missing_benchmark_module_breaks_only_bench(monkeypatch, capsys):
    monkeypatch.setitem(bench.BENCHMARKS, "throughput", "no_such_benchmark_module")
    assert main(["plugins"]) == 0
    assert main(["bench", "throughput"]) == 2
    assert "error: the throughput benchmark is unavailable: ModuleNotFoundError" in capsys.readouterr().err


# ---- engine flags ------------------------------------------------------------------------------------------


def parse_engine_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    return parser.parse_args(argv)


def test_engine_kwargs_hold_only_the_flags_given():
    assert engine_kwargs_from_args(parse_engine_flags()) == {}
    args = parse_engine_flags("--max-model-len", "512", "--enforce-eager", "--plugin", "a", "--plugin", "b")
    assert engine_kwargs_from_args(args) == {"max_model_len": 512, "enforce_eager": True, "plugins": ("a", "b")}


def test_every_engine_flag_maps_onto_an_engine_config_field():
    args = parse_engine_flags(
        "--dtype", "bfloat16", "--max-model-len", "1024", "--max-num-seqs", "8", "--max-num-batched-tokens", "256",
        "--block-size", "32", "--num-kv-blocks", "100", "--kv-cache-memory-gb", "1.5",
        "--gpu-memory-utilization", "0.5", "--load-format", "gguf", "--quantization", "fp8", "--seed", "3",
        "--device", "cpu", "--attention-backend", "torch", "--sampler", "default", "--block-allocator", "paged",
        "--executor", "uniproc", "--tokenizer", "tok", "--revision", "main", "--enable-prefix-caching",
        "--enforce-eager", "--trust-remote-code", "--skip-tokenizer-init", "--plugin", "p")
    config = EngineConfig(**engine_kwargs_from_args(args))
    assert (config.dtype, config.max_model_len, config.block_size, config.kv_cache_memory_gb) == \
        ("bfloat16", 1024, 32, 1.5)
    assert (config.sampler, config.block_allocator, config.executor) == ("default", "paged", "uniproc")
    assert config.enable_prefix_caching and config.skip_tokenizer_init and config.plugins == ("p",)
