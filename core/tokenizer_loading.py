"""The front end's tokenizer: the model's own (through its loader), or the one ``EngineConfig.tokenizer`` names.

A named tokenizer is a directory of tokenizer files (no config.json needed) or a hub id, both loaded by
transformers' AutoTokenizer (a hub id fetches only the tokenizer's files), else a .gguf file or a packaged
model, whose tokenizer its loader reads. Whatever cannot be had is an error naming ``--tokenizer``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pegboard.core.errors import ModelNotFoundError
from pegboard.core.load_settings import load_settings, loading_with
from pegboard.core.model_files import ModelFiles, pick_loader, resolve_model

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def load_tokenizer(config: Any, board: Any, files: ModelFiles) -> Any:
    """``config.tokenizer`` when given, else the model's own tokenizer (None when its files hold none)."""
    with loading_with(config):
        if config.tokenizer is None:
            _, loader = pick_loader(board.model_loaders, files, config.load_format)
            return loader.load_tokenizer(files)
        return named_tokenizer(config.tokenizer, board)


def check_tokenizer_exists(name: str) -> None:
    """Refuse a tokenizer path that does not exist (at start, before any weights load)."""
    if not Path(name).expanduser().exists() and _looks_like_path(name):
        raise ModelNotFoundError(f"tokenizer {name!r} (--tokenizer) does not exist")


def named_tokenizer(name: str, board: Any) -> Any:
    check_tokenizer_exists(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _auto_tokenizer(str(path), name)
    if not path.exists() and HUB_ID.fullmatch(name):
        return _auto_tokenizer(name, name)
    try:
        files = resolve_model(board.model_sources, name)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"tokenizer {name!r} (--tokenizer): {exc}") from None
    _, loader = pick_loader(board.model_loaders, files, "auto")
    tokenizer = loader.load_tokenizer(files)
    if tokenizer is None:
        raise ModelNotFoundError(f"tokenizer {name!r} (--tokenizer): {files.path} holds no tokenizer")
    return tokenizer


def _auto_tokenizer(location: str, name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        settings = load_settings()
        return AutoTokenizer.from_pretrained(location, trust_remote_code=settings.trust_remote_code,
                                             cache_dir=settings.download_dir)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelNotFoundError(f"tokenizer {name!r} (--tokenizer): transformers could not load a tokenizer "
                                 f"from it: {reason}") from exc


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.endswith(".gguf") or (
        os.sep in name and not HUB_ID.fullmatch(name))


_shared: dict[tuple[str, str | None, str], Any] = {}


def shared_tokenizer(config: Any, board: Any, files: ModelFiles) -> Any:
    """The tokenizer for the engine core's grammars (None when the model has none), loaded once per process and
    model: the compile threads and the runner's grammar processor get the same object, which grammars key on."""
    key = (files.path, config.tokenizer, config.load_format)
    if key not in _shared:
        _shared[key] = load_tokenizer(config, board, files)
    return _shared[key]
