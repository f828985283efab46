"""tests/gpu/floor.py, the throughput floor that GPU figures are quoted against: matmul FLOPs for what the engine
multiplies (decoder layers for every token, the LM head for sampled rows only, the embedding never) plus KV reads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("floor", Path(__file__).parent / "gpu" / "floor.py")
floor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(floor)


def test_the_checkpoint_is_llama_3_1_8b_and_its_layers_are_6_98_g_of_it():
    assert floor.PARAMS == pytest.approx(8.03e9, rel=1e-3)
    assert floor.LAYER_PARAMS == pytest.approx(6.98e9, rel=1e-3) and floor.HEAD_PARAMS == 128256 * 4096


def test_prompt_tokens_skip_the_lm_head_and_output_tokens_pay_for_it():
    compute_only = float("inf")  # no KV term
    prompt_only = floor.floor_seconds(1, 1000, 0, 1.0, compute_only)
    one_output = floor.floor_seconds(1, 0, 1, 1.0, compute_only) - floor.floor_seconds(1, 0, 0, 1.0, compute_only)
    assert prompt_only == pytest.approx(2 * 1000 * floor.LAYER_PARAMS / 1e12)
    assert one_output == pytest.approx(2 * (floor.LAYER_PARAMS + floor.HEAD_PARAMS) / 1e12)


def test_each_output_token_reads_its_whole_context_of_kv():
    kv_only = floor.floor_seconds(1, 10, 3, float("inf"), 1.0)
    assert kv_only == pytest.approx((10 + 11 + 12) * floor.KV_BYTES_PER_TOKEN / 1e12)
