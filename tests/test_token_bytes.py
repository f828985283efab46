"""A token's exact bytes come from the vocabulary: byte-level BPE (GPT-2 style, as SmolLM2's), sentencepiece
byte fallback (``<0xNN>``, ``▁``) and plain text vocabularies."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pegboard.core.token_bytes import BYTE_FALLBACK, BYTE_LEVEL, BYTE_OF_CHAR, TEXT, TokenBytes

EMOJI = "😊".encode()  # four bytes: f0 9f 98 8a


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2 style vocabulary: the 256 byte characters, plus merged tokens for ' hello' and 'é'."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    merges = [("Ġ", "h"), ("Ġh", "e"), ("Ġhe", "l"), ("Ġhel", "l"), ("Ġhell", "o"), ("Ã", "©")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"eos_token": "<|end|>"})
    return tokenizer


def byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama style vocabulary: ``<0xNN>`` byte tokens, ``▁`` for a space, Llama's decoder."""
    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}, "▁hello": 257, "é": 258, "▁": 259}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_the_byte_level_alphabet_is_the_tokenizers_librarys():
    assert set(BYTE_OF_CHAR) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(BYTE_OF_CHAR.values()) == list(range(256))
    assert (BYTE_OF_CHAR["Ġ"], BYTE_OF_CHAR["Ċ"], BYTE_OF_CHAR["a"]) == (ord(" "), ord("\n"), ord("a"))


def test_byte_level_tokens_keep_the_bytes_of_part_of_a_character():
    tokenizer = byte_level_tokenizer()
    token_bytes = TokenBytes(tokenizer)
    assert token_bytes.kind == BYTE_LEVEL
    ids = tokenizer("😊 helloé", add_special_tokens=False).input_ids
    assert [token_bytes(t) for t in ids] == [bytes([b]) for b in EMOJI] + [b" hello", "é".encode()]
    assert tokenizer.decode(ids[:1]) == "\ufffd"  # what the decoded text would have reported
    assert token_bytes(tokenizer.eos_token_id) == b"<|end|>"  # an added token, as written


def test_byte_fallback_tokens_are_their_byte_and_a_space_is_a_space():
    tokenizer = byte_fallback_tokenizer()
    token_bytes = TokenBytes(tokenizer)
    assert token_bytes.kind == BYTE_FALLBACK
    ids = tokenizer.convert_tokens_to_ids(["▁hello", *(f"<0x{b:02X}>" for b in EMOJI), "é", "▁"])
    assert [token_bytes(t) for t in ids] == [b" hello", *(bytes([b]) for b in EMOJI), "é".encode(), b" "]


def test_other_vocabularies_fall_back_to_the_decoded_text():
    backend = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    token_bytes = TokenBytes(PreTrainedTokenizerFast(tokenizer_object=backend))
    assert (token_bytes.kind, token_bytes(1)) == (TEXT, b"hi")


@pytest.mark.slow
def test_smollm2_tokens_spell_the_text_byte_for_byte(smollm2_gguf):
    from pegboard.plugins.gguf_metadata import gguf_tokenizer

    tokenizer = gguf_tokenizer(str(smollm2_gguf))
    token_bytes = TokenBytes(tokenizer)
    text = "naïve 😊 — ünïcödé\n\tdone"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert token_bytes.kind == BYTE_LEVEL
    assert b"".join(token_bytes(t) for t in ids) == text.encode()
    assert any(len(token_bytes(t).decode("utf-8", "ignore")) == 0 for t in ids)  # some token is part of a char
