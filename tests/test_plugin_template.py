"""plugin_template/ is a working third-party plugin: it loads by module path, bans tokens, and its tests pass."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.plugins import load_board
from pegboard.core.sampling_params import SamplingParams

TEMPLATE = Path(__file__).resolve().parent.parent / "plugin_template"
MODULE = "pegboard_example_plugin"


@pytest.fixture
def template_on_path(monkeypatch):
    """The template's package importable without installing it."""
    monkeypatch.syspath_prepend(str(TEMPLATE))
    yield
    for name in [n for n in sys.modules if n == MODULE or n.startswith(MODULE + ".")]:
        del sys.modules[name]


def test_the_entry_point_names_the_plugin_module():
    project = tomllib.loads((TEMPLATE / "pyproject.toml").read_text())
    assert project["project"]["name"] == "pegboard-example-plugin"
    assert project["project"]["entry-points"]["pegboard"] == {"example_ban_tokens": MODULE}


def test_the_template_plugin_loads_by_module_path(template_on_path):
    board = load_board(plugins=[MODULE])
    assert board.failures == []
    assert board.registered_by(MODULE) == {"logits_processors": ["example_ban_tokens"]}


def test_the_template_processor_bans_tokens_in_an_engine(template_on_path, tiny_llama_dir):
    def greedy_tokens(extra: dict) -> list[int]:
        config = EngineConfig(model=str(tiny_llama_dir), load_format="dummy", skip_tokenizer_init=True,
                              num_kv_blocks=32, plugins=(MODULE,), extra=extra)
        engine = LLMEngine(config)
        engine.add_request("0", [1, 5, 9, 13], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
        while engine.has_unfinished_requests():
            outputs = engine.step()
        return outputs[0].outputs[0].token_ids

    free = greedy_tokens({})
    banned = greedy_tokens({"ban_token_ids": [free[0]]})
    assert free[0] not in banned


def test_the_template_tests_pass():
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=TEMPLATE,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
