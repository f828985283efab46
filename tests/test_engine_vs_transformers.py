"""The engine's greedy output on SmolLM2 equals HF transformers' token for token (fp32, CPU).

Sixteen prompts of mixed lengths run together, loaded from the GGUF and from the HF copy, also
with a KV cache so small that requests get preempted and a token budget so small that prefills
are chunked. Logprobs and prompt logprobs match HF's within 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pegboard import LLM, SamplingParams

pytestmark = pytest.mark.slow

MAX_TOKENS = 24
LOGPROBS = 5
_SENTENCES = json.loads((Path(__file__).parent / "reference_prompts.json").read_text())  # mixed lengths


@pytest.fixture(scope="module")
def prompts(hf_reference_model, smollm2_hf_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    ids = [tokenizer(s).input_ids for s in _SENTENCES]
    assert min(map(len, ids)) < 5 and max(map(len, ids)) > 150  # mixed lengths
    return ids


@pytest.fixture(scope="module")
def hf_greedy(hf_reference_model, prompts) -> list[dict]:
    """HF's greedy continuation of each prompt and the log-softmax at every position."""
    references = []
    with torch.no_grad():
        for ids in prompts:
            out = hf_reference_model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False,
                                              min_new_tokens=MAX_TOKENS, pad_token_id=2)
            full = out[0].tolist()
            logits = hf_reference_model(torch.tensor([full])).logits[0].float()
            references.append({"tokens": full[len(ids):], "logprobs": torch.log_softmax(logits, -1)})
    return references


def _greedy(llm: LLM, prompts, **extra) -> list:
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, min_tokens=MAX_TOKENS, **extra)  # = HF min_new_tokens
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


def _assert_same_tokens(outputs, hf_greedy):
    for i, (out, ref) in enumerate(zip(outputs, hf_greedy)):
        assert out.outputs[0].token_ids == ref["tokens"], f"prompt {i} differs"


@pytest.fixture(scope="module")
def gguf_llm(smollm2_gguf) -> LLM:
    """The exact path: every weight dequantized to float32 (the default, auto, also keeps GGUF blocks on CPU)."""
    return LLM(str(smollm2_gguf), dtype="float32", max_model_len=1024, device="cpu", cpu_weights="fp32")


def test_gguf_greedy_equals_transformers(gguf_llm, prompts, hf_greedy):
    _assert_same_tokens(_greedy(gguf_llm, prompts), hf_greedy)


def test_hf_copy_greedy_equals_transformers(smollm2_hf_dir, prompts, hf_greedy):
    llm = LLM(str(smollm2_hf_dir), dtype="float32", max_model_len=1024, device="cpu")
    _assert_same_tokens(_greedy(llm, prompts), hf_greedy)


def test_preemption_keeps_outputs_identical(smollm2_gguf, prompts, hf_greedy):
    """On the exact path, HF's tokens (the packed path's bfloat16 prompt products, where AMX runs them, move one
    prompt off HF's tokens at a near-tie with or without preemption: the next test checks that path)."""
    llm = LLM(str(smollm2_gguf), dtype="float32", max_model_len=512, device="cpu", num_kv_blocks=40,
              block_size=16, cpu_weights="fp32")  # 640 token slots for ~1,900 tokens of work
    _assert_same_tokens(_greedy(llm, prompts), hf_greedy)
    assert llm.engine.scheduler.num_preemptions_total > 0
    assert llm.engine.block_manager.num_free_blocks == 40


def test_preemption_keeps_the_packed_paths_outputs(smollm2_gguf, prompts):
    """On the default (packed) path, the tokens of a run that preempts are those of a run that does not."""
    def run(num_kv_blocks):
        llm = LLM(str(smollm2_gguf), dtype="float32", max_model_len=512, device="cpu", num_kv_blocks=num_kv_blocks,
                  block_size=16)
        return [o.outputs[0].token_ids for o in _greedy(llm, prompts)], llm.engine.scheduler.num_preemptions_total

    (preempted, preemptions), (alone, none) = run(40), run(400)
    assert preemptions > 0 and none == 0
    assert preempted == alone


def test_chunked_prefill_keeps_outputs_identical(smollm2_gguf, prompts, hf_greedy):
    llm = LLM(str(smollm2_gguf), dtype="float32", max_model_len=1024, device="cpu",
              max_num_batched_tokens=32)  # prompts up to ~200 tokens arrive in chunks of <= 32
    _assert_same_tokens(_greedy(llm, prompts), hf_greedy)


def test_logprobs_match_transformers(gguf_llm, prompts, hf_greedy):
    outputs = _greedy(gguf_llm, prompts, logprobs=LOGPROBS, prompt_logprobs=LOGPROBS)
    for out, ref, ids in zip(outputs, hf_greedy, prompts):
        hf_lp = ref["logprobs"]  # [len(prompt) + MAX_TOKENS, V]
        completion = out.outputs[0]
        for step, (token, position) in enumerate(zip(completion.token_ids, completion.logprobs)):
            row = hf_lp[len(ids) - 1 + step]
            assert position[token].rank == 1  # greedy picks the top token
            top = torch.topk(row, LOGPROBS)
            assert set(position) == set(top.indices.tolist())
            for t, lp in position.items():
                assert abs(lp.logprob - row[t].item()) < 1e-3
        assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
        for j in range(1, len(ids)):
            entry = out.prompt_logprobs[j]
            assert abs(entry[ids[j]].logprob - hf_lp[j - 1, ids[j]].item()) < 1e-3
            assert len(entry) in (LOGPROBS, LOGPROBS + 1)  # the prompt token plus the top-k (may overlap)


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(gguf_llm, prompts):
    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=16, ignore_eos=True)
    noisy = SamplingParams(temperature=1.3, max_tokens=16, ignore_eos=True)
    alone = gguf_llm.generate([{"prompt_token_ids": prompts[0]}], seeded, use_tqdm=False)
    again = gguf_llm.generate([{"prompt_token_ids": prompts[0]}], seeded, use_tqdm=False)
    assert alone[0].outputs[0].token_ids == again[0].outputs[0].token_ids
    # the same request (same prompt, same seed) in another batch position next to other random requests
    crowd = gguf_llm.generate([{"prompt_token_ids": p} for p in [prompts[3], prompts[0], prompts[5]]],
                              [noisy, seeded, noisy], use_tqdm=False)
    assert crowd[1].outputs[0].token_ids == alone[0].outputs[0].token_ids


def test_n_sequences_and_stop_strings(gguf_llm):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=20)
    [out] = gguf_llm.generate(["Write a list of fruits:"], params, use_tqdm=False)
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # different seeds per sequence
    [greedy] = gguf_llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=20),
                                 use_tqdm=False)
    text = greedy.outputs[0].text
    stop = text.strip().split()[1]
    [stopped] = gguf_llm.generate(["The capital of France is"],
                                  SamplingParams(temperature=0, max_tokens=20, stop=[stop]), use_tqdm=False)
    assert stopped.outputs[0].finish_reason == "stop" and stopped.outputs[0].stop_reason == stop
    assert stopped.outputs[0].text == text[:text.index(stop)]


def test_chat_applies_the_template(gguf_llm):
    [out] = gguf_llm.chat([{"role": "user", "content": "Say hi"}], SamplingParams(temperature=0, max_tokens=8),
                          use_tqdm=False)
    tokenizer = gguf_llm.get_tokenizer()
    assert tokenizer.decode(out.prompt_token_ids).rstrip().endswith("assistant")
    assert out.outputs[0].text
