"""The sampler is total: every value SamplingParams admits, alone or combined, yields a token id in range for
every row, whatever the logits' dtype and however degenerate a row is (all -inf, NaN, +inf, huge values).
Values that mean nothing to a float32 sampler (NaN, infinities, floats beyond range) are refused by name.

Property-based (hypothesis), bounded in time so they run in CI.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pegboard.core.errors import InvalidParameterError
from pegboard.core.request import Request
from pegboard.core.sampling_params import SamplingParams
from pegboard.plugins.default_sampler import make_sampler

V = 300  # more than one race block (256), and not a multiple of it
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
EOS = 0

# The edges of float32 and beyond: what underflows to 0, what overflows to inf, subnormals.
TINY = [5e-324, 1e-320, 1e-46, 1e-45, 1e-40, 1.1754943508222875e-38, 1e-30, 1e-10, 1e-5]
HUGE = [1e5, 1e30, 3.4028234663852886e38, 1e39, 1e300, 1.7976931348623157e308]


def floats_in(low: float, high: float, edges: list[float]) -> st.SearchStrategy[float]:
    """Any float in [low, high], with the listed edge values that fall inside it drawn often."""
    inside = [x for x in edges if low <= x <= high] + [low, high]
    return st.one_of(st.sampled_from(inside), st.floats(low, high, allow_nan=False, allow_infinity=False))


# Every sampling field over its whole admitted range (and its bounds).
FIELDS: dict[str, st.SearchStrategy] = {
    "temperature": floats_in(0.0, 1.7976931348623157e308, TINY + HUGE + [0.5, 1.0, 2.0]),
    "top_p": floats_in(5e-324, 1.0, TINY + [0.5, 0.9, 0.999999]),
    "top_k": st.one_of(st.sampled_from([-1, 0, 1, 2, V - 1, V, V + 1, 10**30]), st.integers(0, 2 * V)),
    "min_p": floats_in(0.0, 1.0, TINY + [0.5, 0.999999]),
    "repetition_penalty": floats_in(5e-324, 1.7976931348623157e308, TINY + HUGE + [0.5, 1.0, 2.0]),
    "presence_penalty": floats_in(-2.0, 2.0, [-1e-300, 1e-300]),
    "frequency_penalty": floats_in(-2.0, 2.0, [-1e-300, 1e-300]),
    "logit_bias": st.dictionaries(st.integers(-5, V + 5), floats_in(-100.0, 100.0, [-1e-300]), max_size=8),
    "seed": st.one_of(st.none(), st.integers(-2**200, 2**200)),
    "min_tokens": st.integers(0, 8),
    "stop_token_ids": st.one_of(st.just(list(range(V))), st.lists(st.integers(0, V + 5), max_size=4)),
    "logprobs": st.one_of(st.none(), st.integers(0, 20)),
}


def degenerate_logits(kind: str, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Three rows of logits in ``dtype``; ``kind`` says how the first row is broken."""
    logits = torch.randn(3, V, generator=generator) * 4
    row = logits[0]
    if kind == "all -inf":
        row.fill_(float("-inf"))
    elif kind == "one nan":
        row[7] = float("nan")
    elif kind == "all nan":
        row.fill_(float("nan"))
    elif kind == "+inf":
        row[3] = float("inf")
    elif kind == "huge":
        row.mul_(1e30)
    elif kind == "flat":
        row.fill_(0.0)
    return logits.to(dtype)  # beyond a half type's range becomes inf there


def requests_for(params: SamplingParams) -> list[Request]:
    """Three requests with a prompt and two generated tokens each (so penalties have counts)."""
    requests = [Request(f"r{i}", [1, 2, 3, 2], params, eos_token_id=EOS, max_tokens=64) for i in range(3)]
    for request in requests:
        request.append_token(5)
        request.append_token(1)
    return requests


def check_total(fields: dict, kind: str, dtype: torch.dtype) -> None:
    """Validation admits the fields or refuses one by name; what it admits samples valid tokens."""
    try:
        params = SamplingParams(max_tokens=64, **fields)
    except InvalidParameterError as exc:
        assert exc.param in fields, exc
        return
    logits = degenerate_logits(kind, dtype, torch.Generator().manual_seed(0))
    out = make_sampler(vocab_size=V, device=torch.device("cpu"), seed=0).sample(logits, requests_for(params))
    assert out.token_ids.shape == (3,) and out.token_ids.dtype == torch.long
    assert ((out.token_ids >= 0) & (out.token_ids < V)).all(), out.token_ids
    if params.logprobs is not None:
        assert out.logprobs.shape == (3, 1 + params.logprobs)
        assert out.logprob_token_ids.min() >= 0 and out.logprob_token_ids.max() < V


KINDS = ["finite", "all -inf", "one nan", "all nan", "+inf", "huge", "flat"]
PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(FIELDS))
@PROFILE
@given(data=st.data())
def test_each_field_alone_over_its_whole_range(name, dtype, data):
    value = data.draw(FIELDS[name], label=name)
    fields = {name: value}
    if name in ("top_p", "top_k", "min_p", "repetition_penalty"):
        fields["temperature"] = 1.0  # the field only matters when sampling
    check_total(fields, data.draw(st.sampled_from(KINDS), label="logits"), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.fixed_dictionaries({}, optional=FIELDS), kind=st.sampled_from(KINDS))
def test_every_combination_of_fields(fields, kind, dtype):
    check_total(fields, kind, dtype)


@pytest.mark.parametrize("name, value", [
    ("temperature", float("inf")), ("temperature", float("nan")), ("temperature", 10**400),
    ("top_p", float("nan")), ("min_p", float("nan")), ("repetition_penalty", float("inf")),
    ("repetition_penalty", float("nan")), ("presence_penalty", float("nan")), ("frequency_penalty", float("-inf")),
])
def test_non_finite_values_are_refused_by_name(name, value):
    with pytest.raises(InvalidParameterError) as caught:
        SamplingParams(**{name: value})
    assert caught.value.param == name


@pytest.mark.parametrize("bias", [{1: float("nan")}, {1: float("inf")}, {"x": 1.0}, {1: 10**400}, {1: "a lot"}])
def test_a_bias_that_is_not_a_number_is_refused_by_name(bias):
    with pytest.raises(InvalidParameterError) as caught:
        SamplingParams(logit_bias=bias)
    assert caught.value.param == "logit_bias"


def test_top_p_below_float32s_smallest_keeps_the_most_likely_token():
    """1e-46 is 0 in float32: the nucleus still holds the most likely token, so sampling is greedy."""
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.0, top_p=1e-46, seed=3)
    requests = [Request(f"r{i}", [1], params, max_tokens=8) for i in range(4)]
    out = make_sampler(vocab_size=V, device=torch.device("cpu"), seed=0).sample(logits, requests)
    assert out.token_ids.tolist() == logits.argmax(-1).tolist()


def test_a_penalty_that_overflows_keeps_the_overflowing_token_most_likely():
    """repetition_penalty 1e-40 divides a positive logit past float32's range: that token stays the favourite."""
    logits = torch.full((1, V), -1.0)
    logits[0, 9] = 2.0  # in the prompt, so penalized: 2 / 1e-40 overflows to +inf
    params = SamplingParams(temperature=1.0, repetition_penalty=1e-40, seed=0)
    out = make_sampler(vocab_size=V, device=torch.device("cpu"), seed=0).sample(
        logits, [Request("r", [9], params, max_tokens=8)])
    assert out.token_ids.tolist() == [9]


def test_a_tiny_temperature_on_half_logits_samples_the_argmax():
    """1e-5 scales float16 logits beyond 65504: the sampler computes in float32, so the favourite still wins."""
    logits = (torch.randn(2, V, generator=torch.Generator().manual_seed(2)) * 8).to(torch.float16)
    params = SamplingParams(temperature=1e-5, seed=1)
    out = make_sampler(vocab_size=V, device=torch.device("cpu"), seed=0).sample(
        logits, [Request(f"r{i}", [1], params, max_tokens=8) for i in range(2)])
    assert out.token_ids.tolist() == logits.float().argmax(-1).tolist()
    assert math.isfinite(float(logits.float().max()))
