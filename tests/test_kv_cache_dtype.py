"""``kv_cache_dtype``: auto is the model's dtype (float16 on the packed CPU path, as llama.cpp's default); another
dtype works on the torch attention backend, which converts on write and read; anything else is refused by name."""

from __future__ import annotations

import pytest
import torch

from pegboard import LLM, SamplingParams
from pegboard.core.errors import InvalidParameterError
from pegboard.core.kv_cache_dtype import resolve_kv_cache_dtype


def test_auto_is_the_models_dtype_and_float16_on_the_packed_cpu_path():
    assert resolve_kv_cache_dtype("auto", torch.float32, packed_cpu=False, attention_backend="torch") == torch.float32
    assert resolve_kv_cache_dtype("auto", torch.bfloat16, packed_cpu=False, attention_backend="triton") == torch.bfloat16
    assert resolve_kv_cache_dtype("auto", torch.float32, packed_cpu=True, attention_backend="torch") == torch.float16
    assert resolve_kv_cache_dtype("float32", torch.float32, packed_cpu=True, attention_backend="torch") == torch.float32


def test_a_dtype_the_backend_cannot_convert_is_refused_by_name():
    with pytest.raises(InvalidParameterError, match="kv_cache_dtype='float16' differs from the model's dtype"):
        resolve_kv_cache_dtype("float16", torch.bfloat16, packed_cpu=False, attention_backend="triton")
    with pytest.raises(InvalidParameterError, match="packed CPU path's decode attention reads float32 or float16"):
        resolve_kv_cache_dtype("bfloat16", torch.float32, packed_cpu=True, attention_backend="torch")
    with pytest.raises(InvalidParameterError, match="fp8"):
        resolve_kv_cache_dtype("fp8_e5m2", torch.float32, packed_cpu=False, attention_backend="torch")


def test_a_float16_cache_on_the_exact_path_holds_float16_and_keeps_the_logprobs(tiny_llama_dir):
    def run(kv_cache_dtype):
        llm = LLM(str(tiny_llama_dir), load_format="dummy", skip_tokenizer_init=True, num_kv_blocks=32, device="cpu",
                  dtype="float32", seed=0, kv_cache_dtype=kv_cache_dtype)
        params = SamplingParams(temperature=0, max_tokens=6, logprobs=1, ignore_eos=True)
        out = llm.generate([{"prompt_token_ids": list(range(3, 40))}], params, use_tqdm=False)[0].outputs[0]
        return llm.engine.executor.runner.attention.k_cache.dtype, out

    (dtype32, exact), (dtype16, half) = run("auto"), run("float16")
    assert (dtype32, dtype16) == (torch.float32, torch.float16)
    first = exact.token_ids[0]  # the prompt's own attention reads no cache: the first token's logprob is the same
    assert half.logprobs[0][first].logprob == pytest.approx(exact.logprobs[0][first].logprob, abs=1e-5)
    for ref, got, token in zip(exact.logprobs, half.logprobs, exact.token_ids):  # later ones read the cache
        if token in got:
            assert got[token].logprob == pytest.approx(ref[token].logprob, abs=2e-2)
