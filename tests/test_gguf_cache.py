"""A GGUF file's header and tokenizer are read once, then come from $PEGBOARD_CACHE/gguf: the same values, a new
entry when the file changes, and a cache that cannot be written costs only time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pegboard.plugins import gguf_file, gguf_metadata

TEXTS = ["Hello, world!", "héllo wörld — 日本語 🤗", "<|im_start|>user\nhi<|im_end|>", "  spaces\tand\ttabs\n"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PEGBOARD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


@pytest.fixture(scope="module")
def model_copy(smollm2_gguf: Path, tmp_path_factory) -> Path:
    """A copy of the packaged file whose modification time the tests may change."""
    return Path(shutil.copy(smollm2_gguf, tmp_path_factory.mktemp("gguf") / "model.gguf"))


def test_the_second_parse_reads_the_cache_and_gives_the_same_file(cache, model_copy, monkeypatch):
    first = gguf_file.parse_gguf(str(model_copy))
    assert len(list(cache.glob("model-index-*.json"))) == 1
    monkeypatch.setattr(gguf_file, "_read_index", lambda path: pytest.fail("the header was read again"))
    second = gguf_file.parse_gguf(str(model_copy))
    assert (second.metadata, second.tensors) == (first.metadata, first.tensors)
    info = first.tensors["blk.0.attn_q.weight"]
    assert second.raw(info).equal(first.raw(info))


def test_a_changed_file_is_read_again(cache, model_copy):
    gguf_file.parse_gguf(str(model_copy))
    stat = model_copy.stat()
    os.utime(model_copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    gguf_file.parse_gguf(str(model_copy))
    assert len(list(cache.glob("model-index-*.json"))) == 2


def test_a_damaged_entry_is_read_again_and_rewritten(cache, model_copy):
    first = gguf_file.parse_gguf(str(model_copy))
    entry, = cache.glob("model-index-*.json")
    entry.write_text("{not json")
    assert gguf_file.parse_gguf(str(model_copy)).tensors == first.tensors
    assert entry.read_text().startswith("{\"metadata\"")


def test_an_unwritable_cache_only_costs_time(tmp_path, model_copy, monkeypatch):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    monkeypatch.setenv("PEGBOARD_CACHE", str(blocked))  # mkdir under a file fails
    assert "blk.0.attn_q.weight" in gguf_file.parse_gguf(str(model_copy)).tensors
    assert gguf_metadata.gguf_tokenizer(str(model_copy))("Hello").input_ids


def test_the_cached_tokenizer_is_the_converted_one(cache, model_copy):
    converted = gguf_metadata.gguf_tokenizer(str(model_copy))
    entry, = cache.glob("model-tokenizer-*")
    assert (entry / "tokenizer.json").exists() and not list(cache.glob("*.tmp"))
    cached = gguf_metadata.gguf_tokenizer(str(model_copy))
    assert cached is not converted
    for text in TEXTS:
        assert cached(text).input_ids == converted(text).input_ids
    messages = [{"role": "user", "content": "What is 2+2?"}]
    assert (cached.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == converted.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert (cached.eos_token_id, cached.bos_token_id, cached.pad_token_id, len(cached)) == (
        converted.eos_token_id, converted.bos_token_id, converted.pad_token_id, len(converted))
