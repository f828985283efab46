"""kernels/cpu_silu_and_mul.cpp: the packed CPU path's prompt-chunk activation, silu(gate) * up from the gate/up
GEMM's bfloat16 output to the down GEMM's bfloat16 input. It gives the bits of the torch route it replaces
(widen to float32, F.silu, multiply, round to bfloat16), and the prompt MLP built on it gives that route's output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pegboard.core.cpu_decoder_blocks import BFloat16PromptMLP
from pegboard.kernels.cpu_build import compiled_ops


def torch_route(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).bfloat16()


@pytest.mark.parametrize("rows, width, spread", [(1, 1536, 4.0), (300, 1536, 4.0), (7, 37, 40.0)])  # 37: a tail
def test_the_bits_are_the_torch_routes(rows, width, spread):
    gate_up = (torch.randn(rows, 2 * width) * spread).bfloat16()
    out = compiled_ops().silu_and_mul_bf16(gate_up)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, width)
    assert torch.equal(out.view(torch.int16), torch_route(gate_up).view(torch.int16))


def test_extremes_behave_as_torch_does():
    gate = torch.tensor([float("nan"), 100.0, -100.0, 0.0, 88.5, float("-inf")])
    up = torch.tensor([1.0, 2.0, 3.0, float("inf"), 1.0, 1.0])
    gate_up = torch.cat([gate, up])[None].bfloat16()
    torch.testing.assert_close(compiled_ops().silu_and_mul_bf16(gate_up), torch_route(gate_up), equal_nan=True)


def test_the_prompt_mlp_gives_the_module_routes_output():
    gate_up_weight, down_weight = (torch.randn(2 * 96, 64) * 0.1).bfloat16(), (torch.randn(64, 96) * 0.1).bfloat16()
    x = torch.randn(80, 64)
    module_route = F.linear(torch_route(F.linear(x.bfloat16(), gate_up_weight)), down_weight).float()
    assert torch.equal(BFloat16PromptMLP(compiled_ops(), gate_up_weight, down_weight)(x), module_route)


def test_a_float32_input_is_refused():
    with pytest.raises(RuntimeError, match="bfloat16"):
        compiled_ops().silu_and_mul_bf16(torch.randn(2, 8))
