"""Writes a Llama-3.1-8B-shaped config folder for the dummy loader, optionally with a tokenizer's files beside it.

    python tests/gpu/llama8b_config.py DIR [TOKENIZER_DIR]

Without a tokenizer the folder keeps Llama 3's BOS/EOS ids (128000/128001; run with --skip-tokenizer-init);
with one (SmolLM2's, say) BOS/EOS are its ids 1/2, and token ids past its vocabulary decode to nothing.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def write_llama8b_config(path: str, tokenizer_dir: str | None = None) -> None:
    from transformers import LlamaConfig

    bos, eos = (1, 2) if tokenizer_dir else (128000, 128001)
    LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=14336, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
                rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos,
                architectures=["LlamaForCausalLM"]).save_pretrained(path)
    for f in Path(tokenizer_dir).iterdir() if tokenizer_dir else ():
        shutil.copy(f, path)


if __name__ == "__main__":
    write_llama8b_config(*sys.argv[1:3])
