"""A GGUF file through the gguf package's GGUFReader: metadata values, the tensor table (both cached on disk after
the first read: gguf_cache.py) and zero-copy tensor bytes from a copy-on-write memory map.

GGUFReader slices its ``np.memmap`` once per value part (about 250k slices for a 49k-token vocabulary
with merges), and every slice of an ``np.memmap`` runs its Python ``__array_finalize__``: 3.5-4 s on a
busy 2-core machine. Handing the reader a plain ``ndarray`` view of the same map makes those slices
plain views: about 1 s, the same bytes (tests/cpu/bench_gguf_load.py measures it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from gguf import GGUFReader

from pegboard.core.errors import UnsupportedModelError
from pegboard.plugins.gguf_cache import cached_json

if TYPE_CHECKING:
    import torch

_MAGIC = b"GGUF"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the tensor table."""

    name: str
    shape: tuple[int, ...]  # torch order: GGUF lists dimensions fastest-moving first (ne), this is reversed
    ggml_type: int
    offset: int  # absolute offset in the file
    nbytes: int


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF file: metadata values, tensor table and a copy-on-write map of its bytes."""

    path: str
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    buffer: np.ndarray  # uint8, the whole file

    @property
    def architecture(self) -> str:
        return self.metadata["general.architecture"]

    def arch_value(self, key: str, default: Any = None) -> Any:
        """The architecture-scoped value ``{arch}.{key}``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def raw(self, info: TensorInfo) -> "torch.Tensor":
        """One tensor's bytes: a zero-copy ``uint8`` view of the map."""
        import torch

        return torch.from_numpy(self.buffer[info.offset : info.offset + info.nbytes])

    def dequantize(self, info: TensorInfo) -> "torch.Tensor":
        """One tensor as float32, in torch shape."""
        from pegboard.plugins.gguf_dequant import dequantize

        return dequantize(self.raw(info), info.ggml_type, info.shape, info.name)


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """The parsed file at ``path``; parsed once and reused while the file is unchanged."""
    path = os.path.abspath(path)
    stat = os.stat(path)
    return _parse_cached(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _parse_cached(path: str, _mtime_ns: int, _size: int) -> GGUFFile:
    return parse_gguf(path)


def parse_gguf(path: str) -> GGUFFile:
    """The header, metadata and tensor table of the GGUF file at ``path`` (read with GGUFReader once, then from
    the cache: gguf_cache.py), and a copy-on-write map of its bytes (torch wants writable arrays)."""
    with open(path, "rb") as f:
        if f.read(len(_MAGIC)) != _MAGIC:
            raise UnsupportedModelError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
    index = cached_json(path, "index", "gguf", lambda: _read_index(path))
    metadata = index["metadata"]
    if "general.architecture" not in metadata:
        raise UnsupportedModelError(f"{path} has no general.architecture in its metadata")
    tensors = {name: TensorInfo(name, tuple(shape), ggml_type, offset, nbytes)
               for name, shape, ggml_type, offset, nbytes in index["tensors"]}
    return GGUFFile(path, metadata, tensors, np.memmap(path, mode="c").view(np.ndarray))


def _read_index(path: str) -> dict[str, Any]:
    """{"metadata": {key: value}, "tensors": [[name, torch shape, ggml type, offset, bytes]]} by GGUFReader."""
    try:
        reader = _Reader(path, "c")
    except (ValueError, KeyError, IndexError) as exc:  # bad version, unknown value or ggml type, truncated
        raise UnsupportedModelError(f"{path} is not a GGUF file the gguf package can read: {exc}") from None
    metadata = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = [[t.name, list(reversed(t.shape.tolist())), int(t.tensor_type), int(t.data_offset), int(t.n_bytes)]
               for t in reader.tensors]
    return {"metadata": metadata, "tensors": tensors}


class _Reader(GGUFReader):
    """GGUFReader over a plain ``ndarray`` view of its memory map (the module docstring says why)."""

    @property
    def data(self) -> np.ndarray:
        return self._plain

    @data.setter
    def data(self, value: np.memmap) -> None:
        self._plain = value.view(np.ndarray)
