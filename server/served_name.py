"""The name a model is served under when ``--served-model-name`` is not given: never a local path."""

from __future__ import annotations

from pathlib import Path


def default_served_name(model: str) -> str:
    """A local path's last component (a .gguf file's without the suffix), else the model as given (hub id, name)."""
    path = Path(model).expanduser()
    if not path.exists():
        return model
    path = path.resolve()
    return path.stem if path.is_file() and path.suffix == ".gguf" else path.name
