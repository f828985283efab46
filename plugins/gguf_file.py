"""A small, fast GGUF reader: metadata and tensor table in one pass, tensor bytes from a memory map.

gguf-py's GGUFReader builds numpy views for every vocabulary string (about 2 s for a 49k-token
vocabulary); this reader walks the header with ``struct`` instead (about 0.1 s).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pegboard.core.errors import UnsupportedModelError

if TYPE_CHECKING:
    import torch

_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the tensor table."""

    name: str
    shape: tuple[int, ...]  # torch order: GGUF lists dimensions fastest-moving first (ne), this is reversed
    ggml_type: int
    offset: int  # absolute offset in the file


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF file: metadata values, tensor table and a copy-on-write map of its bytes."""

    path: str
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    buffer: mmap.mmap

    @property
    def architecture(self) -> str:
        return self.metadata["general.architecture"]

    def arch_value(self, key: str, default: Any = None) -> Any:
        """The architecture-scoped value ``{arch}.{key}``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def raw(self, info: TensorInfo) -> "torch.Tensor":
        """One tensor's bytes: a zero-copy ``uint8`` view of the map."""
        import torch

        from pegboard.plugins.gguf_dequant import block_layout

        block_size, block_bytes = block_layout(info.ggml_type, info.name)
        nbytes = math.prod(info.shape) // block_size * block_bytes
        return torch.frombuffer(self.buffer, dtype=torch.uint8, count=nbytes, offset=info.offset)

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
    """Read the header, metadata and tensor table of the GGUF file at ``path``."""
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    if buf[:4] != b"GGUF":
        raise UnsupportedModelError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
    version, tensor_count, kv_count = struct.unpack_from("<IQQ", buf, 4)
    if version not in _VERSIONS:
        raise UnsupportedModelError(f"{path} is GGUF version {version}; supported versions: {_VERSIONS}")
    reader = _Reader(buf, 24)
    metadata = {}
    for _ in range(kv_count):
        key = reader.string()
        metadata[key] = reader.value(reader.unpack("I"))
    if "general.architecture" not in metadata:
        raise UnsupportedModelError(f"{path} has no general.architecture in its metadata")
    entries = []
    for _ in range(tensor_count):
        name = reader.string()
        dims = reader.unpack(f"{reader.unpack('I')}Q", many=True)
        ggml_type, offset = reader.unpack("I"), reader.unpack("Q")
        entries.append((name, tuple(reversed(dims)), ggml_type, offset))
    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    data_start = -(-reader.pos // alignment) * alignment
    tensors = {name: TensorInfo(name, shape, t, data_start + off) for name, shape, t, off in entries}
    return GGUFFile(path, metadata, tensors, buf)


class _Reader:
    """A cursor over the header bytes."""

    def __init__(self, buf: mmap.mmap, pos: int) -> None:
        self.buf, self.pos = buf, pos

    def unpack(self, fmt: str, many: bool = False) -> Any:
        fmt = "<" + fmt
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values if many else values[0]

    def string(self) -> str:
        length = self.unpack("Q")
        start, self.pos = self.pos, self.pos + length
        return self.buf[start : self.pos].decode("utf-8")

    def value(self, value_type: int) -> Any:
        if value_type in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.unpack("I"), self.unpack("Q")
            if item_type in _SCALAR_FORMATS:
                return list(self.unpack(f"{count}{_SCALAR_FORMATS[item_type]}", many=True))
            return [self.value(item_type) for _ in range(count)]
        raise UnsupportedModelError(f"GGUF metadata value of unknown type {value_type} at byte {self.pos}")
