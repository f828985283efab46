"""No dead settings: every EngineConfig field and engine flag does what its name says, or is refused by name.

docs/settings.md says what each one does; the last tests hold that page to the fields and flags."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from pegboard.core.cli import build_parser, main
from pegboard.core.cli_args import engine_kwargs_from_args
from pegboard.core.config import EngineConfig
from pegboard.core.errors import InvalidParameterError, ModelNotFoundError, PluginError, UnsupportedModelError
from pegboard.core.llm import LLM
from pegboard.core.load_settings import load_settings, loading_with
from pegboard.core.plugins import load_board
from pegboard.core.sampling_params import SamplingParams
from pegboard.plugins.serve_command.serve import check_ssl_files, read_chat_template

DOCS = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
TINY = dict(load_format="dummy", device="cpu", num_kv_blocks=64)


def tiny(model: Path, **options) -> LLM:
    return LLM(str(model), **{**TINY, **options})


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory) -> Path:
    """A byte-level tokenizer like tiny_chat_model's with the ids reversed (byte b -> 255 - its id there)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: 255 - i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    path = tmp_path_factory.mktemp("reversed-tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(path)
    return path


# ---- tokenizer, skip_tokenizer_init ----------------------------------------------------------------------------


def test_tokenizer_loads_the_tokenizer_it_names(tiny_chat_model, other_tokenizer):
    own = tiny(tiny_chat_model).engine.tokenize("hi")
    other = tiny(tiny_chat_model, tokenizer=str(other_tokenizer)).engine.tokenize("hi")
    assert own == [ord("h") - 33, ord("i") - 33] and other == [255 - t for t in own]


def test_tokenizer_gives_a_model_without_one_text_prompts(tiny_llama_dir, tiny_chat_model):
    llm = tiny(tiny_llama_dir, tokenizer=str(tiny_chat_model))
    [output] = llm.generate("hi", SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)
    assert output.prompt_token_ids == [ord("h") - 33, ord("i") - 33] and len(output.outputs[0].token_ids) == 2


def test_tokenizer_takes_a_gguf_file_or_a_packaged_model(tiny_llama_dir, smollm2_gguf):
    from pegboard.core.model_files import ModelFiles
    from pegboard.plugins.loader_gguf import GGUFLoader

    expected = GGUFLoader().load_tokenizer(ModelFiles(str(smollm2_gguf), "gguf", "smollm2"))("Hello world").input_ids
    for name in (str(smollm2_gguf), "smollm2"):
        assert tiny(tiny_llama_dir, tokenizer=name).engine.tokenize("Hello world") == expected

def test_a_missing_tokenizer_path_fails_at_start_naming_the_flag(tiny_chat_model, capsys):
    assert main(["generate", str(tiny_chat_model), "--load-format", "dummy", "--tokenizer", "/does/not/exist",
                 "--prompt", "x"]) == 2
    assert capsys.readouterr().err.endswith("error: tokenizer '/does/not/exist' (--tokenizer) does not exist\n")


def test_a_directory_without_a_tokenizer_is_an_error_naming_the_flag(tiny_chat_model, tiny_llama_dir):
    with pytest.raises(ModelNotFoundError, match=r"\(--tokenizer\): transformers could not load a tokenizer"):
        tiny(tiny_chat_model, tokenizer=str(tiny_llama_dir))


def test_tokenizer_with_skip_tokenizer_init_is_refused(tiny_chat_model, other_tokenizer):
    with pytest.raises(InvalidParameterError, match="tokenizer and skip_tokenizer_init contradict"):
        tiny(tiny_chat_model, tokenizer=str(other_tokenizer), skip_tokenizer_init=True)


def test_skip_tokenizer_init_loads_none_and_takes_token_ids(tiny_chat_model):
    llm = tiny(tiny_chat_model, skip_tokenizer_init=True)
    assert llm.get_tokenizer() is None
    with pytest.raises(InvalidParameterError, match="no tokenizer"):
        llm.generate("hi", use_tqdm=False)
    with pytest.raises(InvalidParameterError, match="stop strings need a tokenizer") as refused:
        llm.generate([[1, 2]], SamplingParams(stop=["x"]), use_tqdm=False)
    assert refused.value.param == "stop"
    [output] = llm.generate([[1, 2]], SamplingParams(max_tokens=2), use_tqdm=False)
    assert len(output.outputs[0].token_ids) == 2 and output.outputs[0].text == ""


# ---- trust_remote_code ------------------------------------------------------------------------------------------


@pytest.fixture
def custom_config_model(tiny_llama_dir, tmp_path) -> Path:
    """The tiny Llama whose config class ships as code (auto_map), as some hub repos do."""
    path = Path(shutil.copytree(tiny_llama_dir, tmp_path / "custom"))
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="tagged-llama", auto_map={"AutoConfig": "configuration_tagged.TaggedLlamaConfig"})
    (path / "config.json").write_text(json.dumps(config))
    (path / "configuration_tagged.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass TaggedLlamaConfig(LlamaConfig):\n"
        "    model_type = 'tagged-llama'\n    tag = 'ran the repository code'\n")
    return path


def test_trust_remote_code_runs_the_models_config_code(custom_config_model):
    llm = tiny(custom_config_model, skip_tokenizer_init=True, trust_remote_code=True)
    assert llm.engine.core.hf_config.tag == "ran the repository code"
    [output] = llm.generate([[1, 2]], SamplingParams(max_tokens=2), use_tqdm=False)
    assert len(output.outputs[0].token_ids) == 2


def test_without_trust_remote_code_such_a_model_is_refused_naming_the_flag(custom_config_model, capsys):
    with pytest.raises(UnsupportedModelError, match=r"runs only with --trust-remote-code"):
        tiny(custom_config_model, skip_tokenizer_init=True)
    assert main(["generate", str(custom_config_model), "--load-format", "dummy", "--skip-tokenizer-init",
                 "--prompt", "x"]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err


def test_hub_downloads_take_the_revision_and_with_trust_the_code(tmp_path, monkeypatch):
    import huggingface_hub

    from pegboard.plugins.sources import HubSource

    (tmp_path / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: calls.append(kwargs) or str(tmp_path))
    HubSource().resolve("org/model", revision="v2")
    with loading_with(EngineConfig(trust_remote_code=True)):
        HubSource().resolve("org/model", revision=None)
    assert calls[0]["revision"] == "v2" and "*.py" not in calls[0]["allow_patterns"]
    assert calls[1]["revision"] is None and "*.py" in calls[1]["allow_patterns"]


# ---- revision ---------------------------------------------------------------------------------------------------


def test_revision_of_a_local_or_packaged_model_is_refused(tiny_llama_dir):
    from pegboard.plugins.sources import PackagedSource

    with pytest.raises(InvalidParameterError, match="revision 'main' picks a version of a hub model"):
        tiny(tiny_llama_dir, skip_tokenizer_init=True, revision="main")
    with pytest.raises(InvalidParameterError, match="is a packaged model"):
        PackagedSource().resolve("smollm2", revision="v1")


# ---- disable_progress_bar ---------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def tiny_safetensors_model(tiny_chat_model, tmp_path_factory) -> Path:
    """The tiny chat model with real (random) safetensors weights, so the weight loader's bar runs."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    path = Path(shutil.copytree(tiny_chat_model, tmp_path_factory.mktemp("tiny-weights") / "model"))
    torch.manual_seed(0)
    LlamaForCausalLM(AutoConfig.from_pretrained(path)).save_pretrained(path)
    return path


@pytest.mark.parametrize("disabled", [False, True])
def test_disable_progress_bar_turns_off_every_bar(tiny_safetensors_model, monkeypatch, disabled):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    llm = LLM(str(tiny_safetensors_model), device="cpu", num_kv_blocks=64, disable_progress_bar=disabled)
    llm.generate(["a", "b"], SamplingParams(max_tokens=2))  # use_tqdm defaults to True
    shown = terminal.getvalue()
    assert ("loading weights" in shown, "Processed prompts" in shown) == (not disabled, not disabled)


def test_the_flag_reaches_the_engine_config():
    args = build_parser(load_board(), only=("generate",)).parse_args(["generate", "--prompt", "x",
                                                                        "--disable-progress-bar"])
    assert engine_kwargs_from_args(args) == {"disable_progress_bar": True}

def test_disable_progress_bar_turns_off_the_hubs_download_bars_while_loading():
    from huggingface_hub.utils import are_progress_bars_disabled

    with loading_with(EngineConfig(disable_progress_bar=True)) as settings:
        assert are_progress_bars_disabled() and settings.tqdm_disable is True and load_settings() == settings
    assert not are_progress_bars_disabled() and load_settings().tqdm_disable is None


# ---- seed -------------------------------------------------------------------------------------------------------


def test_seed_seeds_the_sampler(tiny_llama_dir):
    def sampled(seed: int) -> list[int]:
        llm = tiny(tiny_llama_dir, skip_tokenizer_init=True, seed=seed)
        [output] = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=12, temperature=1.0), use_tqdm=False)
        return output.outputs[0].token_ids

    assert sampled(1) == sampled(1) != sampled(2)
    with pytest.raises(InvalidParameterError, match="seed must be an integer"):
        EngineConfig(seed=None)


# ---- KV cache size ----------------------------------------------------------------------------------------------


def test_kv_cache_memory_gb_sizes_the_kv_cache(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), load_format="dummy", device="cpu", skip_tokenizer_init=True,
              kv_cache_memory_gb=2**-8)  # 4 MiB
    per_block = llm.engine.executor.runner.kv_spec.bytes_per_block()
    assert llm.engine.model_info.num_kv_blocks == 2**22 // per_block
    with pytest.raises(InvalidParameterError, match="kv_cache_memory_gb must be a number of GiB > 0"):
        EngineConfig(kv_cache_memory_gb=0)


@pytest.mark.parametrize("options, message", [
    (dict(num_kv_blocks=64, kv_cache_memory_gb=1.0), "num_kv_blocks and kv_cache_memory_gb each size the KV cache"),
    (dict(kv_cache_memory_gb=1.0, gpu_memory_utilization=0.5),
     "kv_cache_memory_gb and gpu_memory_utilization each size"),
    (dict(gpu_memory_utilization=0.5), "gpu_memory_utilization sizes the KV cache on a CUDA device"),
])
def test_kv_cache_settings_that_would_be_ignored_are_refused(tiny_llama_dir, options, message):
    with pytest.raises(InvalidParameterError, match=message):
        LLM(str(tiny_llama_dir), load_format="dummy", device="cpu", skip_tokenizer_init=True, **options)


# ---- settings refused at start ----------------------------------------------------------------------------------


@pytest.mark.parametrize("options, error, message", [
    (dict(enable_prefix_caching=True, block_allocator="plain"), InvalidParameterError,
     "enable_prefix_caching picks the 'prefix-caching' block allocator, but block_allocator='plain'"),
    (dict(async_scheduling=True, speculative_model="[ngram]", num_speculative_tokens=2), InvalidParameterError,
     "async_scheduling=True cannot run with speculative decoding"),
    (dict(sampler="nucleus-2000"), PluginError, "sampler='nucleus-2000': no loaded plugin registers one"),
    (dict(attention_backend="flash"), PluginError, "attention_backend='flash': no loaded plugin registers one"),
    (dict(tensor_parallel_size=2), PluginError, "tensor_parallel_size=2, pipeline_parallel_size=1: parallelism "
                                                "needs a multi-process executor plugin"),
    (dict(pipeline_parallel_size=2), PluginError, "pipeline_parallel_size=2: parallelism needs"),
    (dict(executor="ray"), PluginError, "executor plugin named 'ray'"),
    (dict(quantization="fp4"), PluginError, "quantization scheme plugin named 'fp4'"),
    (dict(load_format="npz"), PluginError, "no model loader for load format 'npz'"),
    (dict(plugins=("no_such_plugin_module",)), PluginError,
     "plugin 'no_such_plugin_module' .* failed to load: ModuleNotFoundError"),
    (dict(extra={"shout": True}), InvalidParameterError, "extra option.* 'shout': no loaded plugin declares"),
])
def test_a_setting_nothing_acts_on_is_refused_at_start_by_name(tiny_llama_dir, options, error, message):
    with pytest.raises(error, match=message):
        tiny(tiny_llama_dir, skip_tokenizer_init=True, **options)


def test_the_triton_backend_off_cuda_is_refused_naming_the_setting(tiny_llama_dir, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter (kernel tests) runs it on CPU
    with pytest.raises(InvalidParameterError, match="attention_backend='triton' needs a CUDA device") as refused:
        tiny(tiny_llama_dir, skip_tokenizer_init=True, attention_backend="triton")
    assert refused.value.param == "attention_backend"


@pytest.mark.parametrize("options, name", [
    (dict(tensor_parallel_size=0), "tensor_parallel_size"), (dict(pipeline_parallel_size=-1), "pipeline_parallel_size"),
    (dict(num_speculative_tokens=-1), "num_speculative_tokens"), (dict(gpu_memory_utilization=1.5),
                                                                  "gpu_memory_utilization"),
    (dict(device="tpu"), "device"), (dict(device="cuda:x"), "device"),
])
def test_out_of_range_values_are_refused_naming_the_field(options, name):
    with pytest.raises(InvalidParameterError, match=name) as raised:
        EngineConfig(**options)
    assert raised.value.param == name


def test_extra_takes_the_options_plugins_declare_and_the_servers(tiny_llama_dir, module_dir):
    plugin = module_dir("declaring_plugin", """
        from pegboard.core.hookspecs import hookimpl

        seen = []

        @hookimpl
        def add_cli_arguments(parser, command):
            if command == "serve":
                parser.add_argument("--shout", action="store_true")

        @hookimpl
        def on_engine_start(engine):
            seen.append(engine.config.extra)
    """)
    tiny(tiny_llama_dir, skip_tokenizer_init=True, plugins=(plugin,), extra={"shout": True, "served_model_name": "m"})
    assert sys.modules[plugin].seen == [{"shout": True, "served_model_name": "m"}]


def test_a_mistyped_plugin_stops_the_command_at_once_in_one_line(tiny_chat_model, capsys):
    assert main(["generate", str(tiny_chat_model), "--load-format", "dummy", "--plugin", "pegbaord_typo",
                 "--prompt", "x"]) == 2
    assert capsys.readouterr().err == ("error: plugin 'pegbaord_typo' (--plugin, the --config file or "
                                       "PEGBOARD_PLUGINS) is not an importable module: is it mistyped, or not "
                                       "installed?\n")


def test_a_named_plugin_that_fails_while_importing_stops_the_engine_naming_it(tiny_chat_model, module_dir,
                                                                              capsys):
    module_dir("plugin_that_raises", "raise ImportError('needs the foo package')\n")
    assert main(["generate", str(tiny_chat_model), "--load-format", "dummy", "--plugin", "plugin_that_raises",
                 "--prompt", "x"]) == 2
    assert ("error: plugin 'plugin_that_raises' (--plugin, plugins= or PEGBOARD_PLUGINS) failed to load: "
            "ImportError: needs the foo package") in capsys.readouterr().err


# ---- serve's own flags ------------------------------------------------------------------------------------------


def test_a_certificate_and_key_that_load_are_taken(tmp_path):
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    cert, plain, locked = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "locked.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    plain.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    check_ssl_files(str(plain), str(cert))
    with pytest.raises(InvalidParameterError, match="the private key is encrypted"):
        check_ssl_files(str(locked), str(cert))


def test_chat_template_is_a_file_or_a_template_that_parses(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert read_chat_template(str(template)) == template.read_text()
    assert read_chat_template("{{ messages[0].content }}") == "{{ messages[0].content }}"
    with pytest.raises(InvalidParameterError, match="--chat-template '/missing/file.jinja' is neither a file"):
        read_chat_template("/missing/file.jinja")
    with pytest.raises(InvalidParameterError, match=r"--chat-template does not parse: .* \(line 1\)"):
        read_chat_template("{% for m in messages %}{{ m.content }}")


def test_ssl_flags_need_a_certificate_and_existing_files(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(InvalidParameterError, match=r"--ssl-certfile '.*cert.pem': not a PEM certificate and its "
                                                    r"private key \("):
        check_ssl_files(None, str(cert))
    with pytest.raises(InvalidParameterError, match="--ssl-keyfile needs --ssl-certfile"):
        check_ssl_files(str(cert), None)
    with pytest.raises(InvalidParameterError, match="--ssl-certfile '/no/cert.pem' is not a file"):
        check_ssl_files(None, "/no/cert.pem")


# ---- docs/settings.md -------------------------------------------------------------------------------------------


def test_every_engine_config_field_is_documented():
    documented = set(re.findall(r"^\| `(\w+)` \|", DOCS.read_text(), re.MULTILINE))
    assert {f.name for f in fields(EngineConfig)} - documented == set()


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_every_flag_of_generate_and_serve_is_documented(command):
    parser = build_parser(load_board(), only=(command,))
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    flags = {option for action in sub._actions for option in action.option_strings if option.startswith("--")}
    text = DOCS.read_text()
    assert {flag for flag in flags if f"`{flag}`" not in text and flag != "--help"} == set()

