"""The example plugin registers its logits processor and flag, and the processor bans the tokens."""

from __future__ import annotations

import pytest
import torch

import pegboard_example_plugin
from pegboard.core.cli import build_parser
from pegboard.core.cli_args import engine_kwargs_from_args
from pegboard.core.config import EngineConfig
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.errors import InvalidParameterError
from pegboard.core.plugins import load_board


@pytest.fixture(scope="module")
def board():
    """A board with Pegboard's built-ins plus this plugin, loaded by module path (as --plugin does)."""
    return load_board(plugins=["pegboard_example_plugin"], strict=True)


def test_the_plugin_registers_its_logits_processor(board):
    assert board.logits_processors.get("example_ban_tokens") is pegboard_example_plugin.make_processor
    # installed, the plugin is named by its entry point; from a plain checkout, by its module path (--plugin)
    owner = board.logits_processors.owners["example_ban_tokens"]
    assert owner in ("example_ban_tokens", "pegboard_example_plugin")
    assert board.registered_by(owner) == {"logits_processors": ["example_ban_tokens"]}


def test_banned_tokens_are_never_the_most_likely(board):
    factory = board.logits_processors.get("example_ban_tokens")
    processor = factory(vocab_size=8, device="cpu", config=EngineConfig(extra={"ban_token_ids": [3, 5]}))
    logits = torch.zeros(2, 8)
    logits[:, 3] = 10.0
    assert processor.add_request("r", SamplingParams(), [1, 2])  # it follows every request
    out = processor.apply(logits, ["r", "r"])
    assert torch.isinf(out[:, [3, 5]]).all() and (out.argmax(dim=-1) != 3).all()


def test_without_banned_tokens_no_request_is_followed(board):
    processor = board.logits_processors.get("example_ban_tokens")(vocab_size=8, device="cpu", config=EngineConfig())
    assert not processor.add_request("r", SamplingParams(), [1, 2])  # nothing to ban: it follows no request


def test_token_ids_outside_the_vocabulary_are_rejected(board):
    factory = board.logits_processors.get("example_ban_tokens")
    with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
        factory(vocab_size=8, device="cpu", config=EngineConfig(extra={"ban_token_ids": [8]}))


@pytest.mark.parametrize("command", [["generate", "--prompt", "x"], ["serve"], ["bench", "throughput"]])
def test_the_flag_reaches_the_engine_config_of_every_command_that_starts_an_engine(board, command):
    args = build_parser(board).parse_args([*command, "--ban-token-id", "3", "--ban-token-id", "5"])
    assert engine_kwargs_from_args(args)["extra"] == {"ban_token_ids": [3, 5]}
