"""The device DFA walk (kernels/dfa_walk.py) against its torch reference and against a plain walk of a token's
bytes: under the Triton interpreter on CPU, natively on CUDA."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from pegboard.kernels.dfa_walk import dfa_walk  # noqa: E402
from pegboard.kernels.reference import dfa_walk_ref  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_dfa(states: int, vocab: int, longest: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    transitions = torch.randint(0, states, (states, 256), generator=generator, dtype=torch.int32)
    transitions[0] = 0  # dead is absorbing
    lengths = torch.randint(0, longest + 1, (vocab,), generator=generator, dtype=torch.int32)
    token_bytes = torch.randint(0, 256, (vocab, longest), generator=generator, dtype=torch.uint8)
    token_bytes[torch.arange(longest)[None, :] >= lengths[:, None].long()] = 0  # zero-padded, as a vocabulary's
    accepting = torch.rand(states, generator=generator) < 0.3
    return generator, transitions, accepting, token_bytes, lengths


def plain_walk(state: int, token: int, eos: int, transitions, accepting, token_bytes, lengths) -> int:
    if token == eos and accepting[state]:
        return state  # the output ended: its state stays
    if lengths[token] == 0:
        return 0  # an empty (special) token: dead
    for byte in token_bytes[token, :lengths[token]].tolist():
        state = int(transitions[state, byte])
    return state


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_each_row_steps_by_its_tokens_bytes_and_eos_in_an_accepting_state_keeps_it(rows):
    generator, transitions, accepting, token_bytes, lengths = random_dfa(40, 30, 9, seed=rows)
    states = torch.randint(0, 40, (rows,), generator=generator, dtype=torch.int32)
    tokens = torch.randint(0, 30, (rows,), generator=generator)
    eos = torch.where(torch.rand(rows, generator=generator) < 0.5, tokens, torch.full_like(tokens, -1))
    expected = [plain_walk(s, t, e, transitions, accepting, token_bytes, lengths)
                for s, t, e in zip(states.tolist(), tokens.tolist(), eos.tolist())]
    assert dfa_walk_ref(states, tokens, eos, token_bytes, lengths, transitions, accepting).tolist() == expected
    on = [t.to(DEVICE) for t in (states, tokens, eos, token_bytes, lengths, transitions, accepting)]
    assert dfa_walk(*on).cpu().tolist() == expected
