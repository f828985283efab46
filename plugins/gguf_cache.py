"""What a GGUF file's header costs to turn into Python, kept on disk: its metadata and tensor table (JSON), and
the tokenizer transformers converts from it (a ``save_pretrained`` directory).

gguf-py's GGUFReader takes 1.2 s to read SmolLM2's header on a 2-core machine (a Python object per vocabulary
entry, 147k of them), and transformers' GGUF tokenizer path reads it again before converting it: together 2-2.5 s
of a 5 s start-up, for facts that do not change while the file does not. Entries are keyed by the file's path,
size and modification time and by the versions of the packages that made them, written atomically, and
ignored (then rewritten) when unreadable; a cache that cannot be written only costs the time. They live in
``$PEGBOARD_CACHE/gguf`` (default ``~/.cache/pegboard/gguf``); deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

from pegboard.plugins.sources import cache_dir

logger = logging.getLogger("pegboard.gguf")

FORMAT = 1  # bumped when what an entry holds changes


def entry_path(path: str, kind: str, made_by: str) -> Path:
    """Where ``kind`` (``index`` or ``tokenizer``) of the GGUF file at ``path`` is kept, as made by the package
    ``made_by`` (its version is part of the key)."""
    stat = os.stat(path)
    key = f"{FORMAT}|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{made_by}=={version(made_by)}"
    name = Path(path).stem[:40].replace(".", "_")
    return cache_dir() / "gguf" / f"{name}-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def cached_json(path: str, kind: str, made_by: str, make: Callable[[], Any]) -> Any:
    """``make()``'s JSON-able value for the file at ``path``, read from the cache when an entry is there."""
    entry = entry_path(path, kind, made_by)
    entry = entry.with_name(entry.name + ".json")
    try:
        return json.loads(entry.read_text())
    except (OSError, ValueError):
        pass
    value = make()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=entry.parent, delete=False, suffix=".tmp") as f:
            json.dump(value, f)
        os.replace(f.name, entry)
    except OSError as exc:
        logger.debug("could not cache %s of %s: %s", kind, path, exc)
    return value


def cached_directory(path: str, kind: str, made_by: str, load: Callable[[Path], Any], make: Callable[[], Any],
                     save: Callable[[Any, Path], None]) -> Any:
    """``load(directory)`` of the cached entry, or ``make()``'s object, saved into a new entry by ``save``."""
    entry = entry_path(path, kind, made_by)
    if entry.is_dir():
        try:
            return load(entry)
        except Exception as exc:  # a damaged entry: made again below
            logger.debug("ignoring the cached %s of %s: %s", kind, path, exc)
            shutil.rmtree(entry, ignore_errors=True)
    value = make()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=entry.parent, suffix=".tmp"))
        try:
            save(value, staging)
            staging.rename(entry)
        finally:  # renamed, or not saved, or another process wrote the entry first
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        logger.debug("could not cache %s of %s: %s", kind, path, exc)
    return value
