"""Model loaders: GGUF against the HF copy transformers made of it, sharded safetensors, dummy weights."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import gguf
import pytest
import torch

from pegboard.core.errors import ModelNotFoundError, UnsupportedModelError
from pegboard.core.model_files import ModelFiles
from pegboard.plugins import gguf_file
from pegboard.plugins.loader_dummy import DummyLoader
from pegboard.plugins.loader_gguf import GGUFLoader
from pegboard.plugins.loader_safetensors import SafetensorsLoader

TEXTS = ["Hello, world!", "  leading spaces and\ttabs\n\nnewlines", "héllo wörld — 日本語 🤗 ﷽",
         "<|im_start|>user\nhi<|im_end|>", "numbers 1234567 and code: def f(x): return x**2"]


def test_plugin_modules_import_no_heavy_libraries():
    code = ("import sys, pegboard.plugins.sources, pegboard.plugins.loader_gguf, pegboard.plugins.loader_safetensors, "
            "pegboard.plugins.loader_dummy; print(sorted({'torch', 'transformers', 'gguf', 'numpy'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.fixture(scope="module")
def gguf_files(smollm2_gguf: Path) -> ModelFiles:
    return ModelFiles(str(smollm2_gguf), "gguf", "smollm2")


@pytest.fixture(scope="module")
def hf_files(smollm2_hf_dir: Path) -> ModelFiles:
    return ModelFiles(str(smollm2_hf_dir), "hf", "smollm2-hf")


def test_gguf_config_matches_hf_copy(gguf_files, hf_files):
    config, reference = GGUFLoader().load_config(gguf_files), SafetensorsLoader().load_config(hf_files)
    assert type(config.to_transformers()) is type(reference)
    assert config.to_transformers().rope_parameters == config.rope_parameters
    for key in ("architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
                "rope_parameters"):
        assert getattr(config, key) == getattr(reference, key), key


def test_gguf_tokenizer_matches_hf_copy(gguf_files, hf_files):
    tokenizer, reference = GGUFLoader().load_tokenizer(gguf_files), SafetensorsLoader().load_tokenizer(hf_files)
    for text in TEXTS:
        assert tokenizer(text).input_ids == reference(text).input_ids, text
        ids = reference(text).input_ids
        assert tokenizer.decode(ids) == reference.decode(ids)
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tokenizer(prompt).input_ids == reference(prompt).input_ids
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "all_special_ids"):
        assert getattr(tokenizer, attr) == getattr(reference, attr), attr


def test_gguf_tokenizer_is_the_files_own_beside_a_tokenizer_json(smollm2_gguf: Path, tmp_path: Path):
    from tokenizers import Tokenizer, models

    (tmp_path / "model.gguf").symlink_to(smollm2_gguf)
    Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "hi": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    tokenizer = GGUFLoader().load_tokenizer(ModelFiles(str(tmp_path / "model.gguf"), "gguf", "smollm2"))
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|im_end|>"


def test_gguf_not_readable(tmp_path: Path):
    (tmp_path / "page.gguf").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(UnsupportedModelError, match="does not start with the bytes 'GGUF'"):
        GGUFLoader().load_config(ModelFiles(str(tmp_path / "page.gguf"), "gguf", "page"))
    (tmp_path / "v9.gguf").write_bytes(b"GGUF" + (9).to_bytes(4, "little") + bytes(16))
    with pytest.raises(UnsupportedModelError, match="v9.gguf is not a GGUF file the gguf package can read"):
        GGUFLoader().load_config(ModelFiles(str(tmp_path / "v9.gguf"), "gguf", "v9"))


def test_gguf_weights_match_hf_copy(gguf_files, hf_files):
    config = GGUFLoader().load_config(gguf_files)
    weights = dict(GGUFLoader().iter_weights(gguf_files, config))
    reference = dict(SafetensorsLoader().iter_weights(hf_files, None))
    assert set(weights) == set(reference) - {"lm_head.weight"}
    for name, tensor in weights.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, reference[name]), name


def test_gguf_load_is_fast(gguf_files):
    import transformers  # noqa: F401  (the engine has it imported before loading)

    gguf_file._parse_cached.cache_clear()
    loader, start = GGUFLoader(), time.perf_counter()
    config = loader.load_config(gguf_files)
    loader.load_tokenizer(gguf_files)
    count = sum(1 for _ in loader.iter_weights(gguf_files, config))
    elapsed = time.perf_counter() - start
    print(f"GGUF config + tokenizer + {count} tensors: {elapsed:.2f} s")
    assert elapsed < 5.0


def test_load_weights_feeds_model_with_progress(gguf_files):
    class Sink(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))
            self.names: list[str] = []

        def load_weights(self, weights) -> None:
            self.names = [name for name, _ in weights]

    model, loader, threads = Sink(), GGUFLoader(), torch.get_num_threads()
    loader.load_weights(model, gguf_files, loader.load_config(gguf_files))
    assert len(model.names) == 272 and model.names[0] == "model.embed_tokens.weight"
    assert torch.get_num_threads() == threads  # dequantizing runs single-threaded, then restores


def write_gguf(path: Path, arch: str, tensors: dict, metadata: dict | None = None, raw_dtypes: dict | None = None):
    """A tiny GGUF: llama-style hyperparameters under ``arch`` plus the given tensors."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(16384)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    for key, value in (metadata or {}).items():
        writer.add_key_value(key, *value)
    for name, array in tensors.items():
        writer.add_tensor(name, array, raw_dtype=(raw_dtypes or {}).get(name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return ModelFiles(str(path), "gguf", path.name)


def test_gguf_without_a_vocabulary_has_no_tokenizer(tmp_path: Path):
    files = write_gguf(tmp_path / "novocab.gguf", "llama", {"token_embd.weight": torch.zeros(4, 8).numpy()})
    assert GGUFLoader().load_tokenizer(files) is None


def test_gguf_tokenizer_alone_does_not_parse_the_whole_file(gguf_files):
    gguf_file._parse_cached.cache_clear()  # a front end whose core runs in another process
    assert GGUFLoader().load_tokenizer(gguf_files)("Hello").input_ids
    assert gguf_file._parse_cached.cache_info().currsize == 0


def test_gguf_unsupported_architecture(tmp_path: Path):
    files = write_gguf(tmp_path / "gpt2.gguf", "gpt2", {"token_embd.weight": torch.zeros(4, 8).numpy()})
    with pytest.raises(UnsupportedModelError, match=r"'gpt2'.*llama, qwen2, qwen3"):
        GGUFLoader().load_config(files)


def test_gguf_unsupported_quant_type(tmp_path: Path):
    raw = torch.zeros(4, 40, dtype=torch.uint8).numpy()  # 4 rows of one Q8_1 block (32 values, 40 bytes)
    tensors = {"token_embd.weight": torch.zeros(4, 8).numpy(), "blk.0.attn_v.weight": raw}
    files = write_gguf(tmp_path / "q81.gguf", "llama", tensors,
                       raw_dtypes={"blk.0.attn_v.weight": gguf.GGMLQuantizationType.Q8_1})
    loader = GGUFLoader()
    with pytest.raises(UnsupportedModelError, match=r"'blk.0.attn_v.weight'.*Q8_1"):
        list(loader.iter_weights(files, loader.load_config(files)))


def test_gguf_qwen3_names_and_no_permutation(tmp_path: Path):
    q = torch.randn(8, 8)
    tensors = {"blk.0.attn_q.weight": q.numpy(), "blk.0.attn_q_norm.weight": torch.ones(4).numpy(),
               "blk.0.attn_q.bias": torch.randn(8).numpy(), "output.weight": torch.randn(4, 8).numpy()}
    files = write_gguf(tmp_path / "qwen3.gguf", "qwen3", tensors,
                       {"qwen3.attention.key_length": (4, gguf.GGUFValueType.UINT32)})
    loader = GGUFLoader()
    config = loader.load_config(files)
    assert (config.model_type, config.head_dim, config.tie_word_embeddings) == ("qwen3", 4, False)
    assert type(config.to_transformers()).__name__ == "Qwen3Config"
    weights = dict(loader.iter_weights(files, config))
    assert set(weights) == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_norm.weight",
                            "model.layers.0.self_attn.q_proj.bias", "lm_head.weight"}
    assert torch.equal(weights["model.layers.0.self_attn.q_proj.weight"], q)


def test_gguf_llama3_rope_freqs(tmp_path: Path):
    from pegboard.plugins.gguf_metadata import llama3_rope_factors

    scaling = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    factors = torch.tensor(llama3_rope_factors(scaling, 64, 10000.0))
    head_dim = {"llama.attention.key_length": (64, gguf.GGUFValueType.UINT32)}
    files = write_gguf(tmp_path / "llama3.gguf", "llama", {"rope_freqs.weight": factors.numpy()}, head_dim)
    config = GGUFLoader().load_config(files)
    rope = config.rope_parameters
    assert (rope["rope_type"], rope["factor"], rope["high_freq_factor"]) == ("llama3", 32.0, 4.0)
    assert config.to_transformers().rope_parameters == rope  # the same as transformers makes of the two fields
    files = write_gguf(tmp_path / "odd.gguf", "llama", {"rope_freqs.weight": (factors * 3).numpy()}, head_dim)
    with pytest.raises(UnsupportedModelError, match="not Llama 3 rope scaling"):
        GGUFLoader().load_config(files)


def write_sharded_model(directory: Path) -> dict:
    """A 2-shard safetensors checkpoint with an index; returns its tensors."""
    from safetensors.torch import save_file

    shards = {"model-00001-of-00002.safetensors": {"a.weight": torch.randn(3, 2), "b.bias": torch.randn(3)},
              "model-00002-of-00002.safetensors": {"c.weight": torch.arange(4.0)}}
    for filename, tensors in shards.items():
        save_file(tensors, directory / filename)
    weight_map = {name: filename for filename, tensors in shards.items() for name in tensors}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return {name: t for tensors in shards.values() for name, t in tensors.items()}


def test_safetensors_sharded(tmp_path: Path):
    expected = write_sharded_model(tmp_path)
    files = ModelFiles(str(tmp_path), "hf", "tiny")
    weights = dict(SafetensorsLoader().iter_weights(files, None))
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], tensor) for name, tensor in expected.items())
    assert SafetensorsLoader().load_tokenizer(files) is None
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="model-00002-of-00002.safetensors"):
        list(SafetensorsLoader().iter_weights(files, None))


def test_safetensors_missing_weights(tmp_path: Path):
    with pytest.raises(ModelNotFoundError, match="model.safetensors"):
        SafetensorsLoader().weight_files(ModelFiles(str(tmp_path), "hf", "empty"))


def test_dummy_loader_is_deterministic(gguf_files):
    def tiny_model() -> torch.nn.Module:
        model = torch.nn.Module()
        model.proj = torch.nn.Linear(8, 4)
        model.input_layernorm = torch.nn.RMSNorm(8)
        model.steps = torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)
        return model

    loader = DummyLoader()
    first, second = tiny_model(), tiny_model()
    loader.load_weights(first, gguf_files, None)
    loader.load_weights(second, gguf_files, None)
    assert torch.equal(first.proj.weight, second.proj.weight)
    assert first.proj.weight.abs().max() <= 1e-3 and first.proj.weight.std() > 0
    assert torch.equal(first.input_layernorm.weight, torch.ones(8))
    assert loader.load_config(gguf_files).num_hidden_layers == 30
