"""Built-in plugin: the Llama family of architectures (Llama 2/3, Mistral, Qwen2/2.5, Qwen3, SmolLM)."""

from __future__ import annotations

from pegboard.core.hookspecs import hookimpl

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


def llama_for_causal_lm(config, **kwargs):
    """Build the model for an HF config (torch imported only now)."""
    from pegboard.plugins.llama_model import LlamaForCausalLM

    return LlamaForCausalLM(config, **kwargs)


@hookimpl
def register_model_architectures(register) -> None:
    for name in ARCHITECTURES:
        register(name, llama_for_causal_lm)
