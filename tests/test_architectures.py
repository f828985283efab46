"""Every Llama-family variant matches HF transformers: tiny random checkpoints of each architecture,
saved as HF directories, loaded by the safetensors loader, compared on logits and greedy tokens (fp32)."""

from __future__ import annotations

import pytest
import torch

from pegboard import LLM, SamplingParams

COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=200, max_position_embeddings=512, rms_norm_eps=1e-5)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}

VARIANTS = {
    "llama2-untied": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "llama3-rope-scaling": ("LlamaConfig", "LlamaForCausalLM", dict(rope_scaling=LLAMA3_ROPE, rope_theta=500000.0)),
    "llama-attention-bias": ("LlamaConfig", "LlamaForCausalLM", dict(attention_bias=True, mlp_bias=True)),
    "smollm-tied-mqa": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True, num_key_value_heads=1)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None)),
    "qwen2-qkv-bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3-qk-norm": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, tie_word_embeddings=False)),
    "linear-rope": ("LlamaConfig", "LlamaForCausalLM", dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
}
PROMPTS = [[5, 17, 42, 9, 100, 3], [7] * 40 + [11, 12], [150, 2]]
MAX_TOKENS = 12


def save_random_model(path, config_class: str, architecture: str, overrides: dict):
    """A random HF checkpoint of this variant (weights scaled up so the logits are far from ties)."""
    import transformers

    config = getattr(transformers, config_class)(**{**COMMON, **overrides}, architectures=[architecture])
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0, 0.15)
    model.save_pretrained(path)
    return model.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_matches_transformers(variant, tmp_path):
    config_class, architecture, overrides = VARIANTS[variant]
    reference = save_random_model(tmp_path, config_class, architecture, overrides)
    llm = LLM(str(tmp_path), skip_tokenizer_init=True, dtype="float32", device="cpu", max_model_len=256,
              max_num_batched_tokens=16)  # the 42-token prompt arrives in chunks
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=1)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    with torch.no_grad():
        for prompt, output in zip(PROMPTS, outputs):
            ids = prompt + output.outputs[0].token_ids
            logits = reference(torch.tensor([ids])).logits[0].float()
            expected = logits[len(prompt) - 1:-1].argmax(-1).tolist()
            assert output.outputs[0].token_ids == expected, variant
            hf_logprobs = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
            for step, (token, position) in enumerate(zip(output.outputs[0].token_ids, output.outputs[0].logprobs)):
                assert abs(position[token].logprob - hf_logprobs[step, token].item()) < 1e-4, (variant, step)


def test_a_sliding_window_caps_the_context(tmp_path):
    save_random_model(tmp_path, "MistralConfig", "MistralForCausalLM", dict(sliding_window=128))
    llm = LLM(str(tmp_path), skip_tokenizer_init=True, device="cpu")
    assert llm.engine.max_model_len == 128  # full attention beyond the window would silently differ
