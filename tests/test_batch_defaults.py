"""The token budget of a step: a small prefill chunk by default on CPU (one long prompt then shares many short
steps with the other streams instead of stalling them in one long step), and ``--max-num-batched-tokens``
still decides when given."""

from __future__ import annotations

import torch

from pegboard.core import cli
from pegboard.core.batch_defaults import CPU_MAX_NUM_BATCHED_TOKENS, default_max_num_batched_tokens
from pegboard.core.cli_args import engine_kwargs_from_args
from pegboard.core.config import EngineConfig
from pegboard.core.engine import LLMEngine
from pegboard.core.plugins import load_board


def tiny_engine(model_dir, **kwargs) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), load_format="dummy", skip_tokenizer_init=True,
                                  device="cpu", num_kv_blocks=64, **kwargs))


def test_a_cpu_engine_prefills_in_small_chunks_by_default(tiny_llama_dir):
    engine = tiny_engine(tiny_llama_dir)
    assert engine.max_num_batched_tokens == engine.scheduler.max_num_batched_tokens == CPU_MAX_NUM_BATCHED_TOKENS


def test_the_flag_still_sets_the_budget(tiny_llama_dir):
    parser = cli.build_parser(load_board())
    args = parser.parse_args(["serve", str(tiny_llama_dir), "--max-num-batched-tokens", "48"])
    engine = tiny_engine(tiny_llama_dir, **engine_kwargs_from_args(args))
    assert engine.scheduler.max_num_batched_tokens == 48
    engine.add_request("long", list(range(100)))
    scheduled = engine.scheduler.schedule().num_scheduled_tokens
    assert list(scheduled.values()) == [48]  # the prompt is prefilled 48 tokens at a time


def test_other_devices_keep_the_large_budget(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [default_max_num_batched_tokens("auto", n) for n in (1024, 4096, 32768)] == [2048, 4096, 8192]
    assert default_max_num_batched_tokens("cpu", 4096) == CPU_MAX_NUM_BATCHED_TOKENS
