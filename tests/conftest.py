"""Shared fixtures: the packaged SmolLM2 GGUF and an HF safetensors copy made from it by transformers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import pegboard

# This checkout's root is the package itself: on sys.path (`python -m pytest` run in it puts it there, also when the
# tests run against an installed wheel, as in CI) its `kernels` would shadow PyPI's, which transformers imports.
# So neither this process nor the Pythons the tests start (`python -m pegboard.core.cli serve`) put it there.
pegboard._leave_off_sys_path(str(Path(__file__).resolve().parents[1]))
os.environ["PYTHONSAFEPATH"] = "1"  # Python >= 3.11: no script folder or working directory first on sys.path

# Test helper modules (tests/tiny_server.py) import by name, also when `pegboard` is an installed wheel
# that holds no tests (CI).
sys.path.insert(0, str(Path(__file__).resolve().parent))


def cache_dir() -> Path:
    return Path(os.environ.get("PEGBOARD_CACHE", Path.home() / ".cache" / "pegboard"))


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 GGUF, fetched by the packaged-model source."""
    from pegboard.plugins.sources import packaged_model_path

    return packaged_model_path("smollm2")


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_gguf: Path) -> Path:
    """An HF directory (config, safetensors, tokenizer) that transformers made from the GGUF, fp32."""
    target = cache_dir() / "reference" / "smollm2-hf"
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=smollm2_gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, dtype=torch.float32, **kwargs)
    model.hf_quantizer.remove_quantization_config(model)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


@pytest.fixture(scope="session")
def hf_reference_model(smollm2_hf_dir: Path):
    """The transformers model (fp32, eager) loaded from the HF copy: the correctness reference."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF directory holding only the config.json of a tiny Llama: load it with ``load_format="dummy"``
    (random weights) and token-id prompts (``skip_tokenizer_init=True``)."""
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=256, max_position_embeddings=256,
                architectures=["LlamaForCausalLM"]).save_pretrained(path)
    return path


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.fixture(scope="session")
def tiny_chat_model(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny random Llama plus a byte-level tokenizer (its 256 tokens are the 256 bytes) with a chat template."""
    import shutil

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = shutil.copytree(tiny_llama_dir, tmp_path_factory.mktemp("tiny-chat") / "model")
    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A directory on sys.path for throwaway (plugin) modules: ``write(name, source)`` adds one, importable
    by name, forgotten after the test; ``write.path`` is the directory."""
    import importlib
    import sys
    import textwrap

    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        written.append(name)
        return name

    write.path = tmp_path
    yield write
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture
def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_engine(model, *plugins: object, **options):
    """An engine over the tiny random Llama whose board also holds the given throwaway plugins."""
    from pegboard.core.config import EngineConfig
    from pegboard.core.engine import LLMEngine
    from pegboard.core.plugins import load_board

    options = {"load_format": "dummy", "skip_tokenizer_init": True, "num_kv_blocks": 32, **options}
    return LLMEngine(EngineConfig(model=str(model), **options), board=load_board(plugins=plugins))


def _generate(engine, prompts: list[list[int]], params=None) -> list[list[int]]:
    """Step the engine until every prompt finished (greedy, 6 tokens, by default); the token ids per prompt."""
    from pegboard.core.sampling_params import SamplingParams

    params = params or SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    finished: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output.outputs[0].token_ids
    return [finished[str(i)] for i in range(len(prompts))]


@pytest.fixture
def start_engine():
    """``start_engine(model, *plugins, **options)``: an LLMEngine over ``model`` with throwaway plugins."""
    return _start_engine


@pytest.fixture
def generate():
    """``generate(engine, prompts, params=greedy 6 tokens)``: step until done; the token ids per prompt."""
    return _generate
