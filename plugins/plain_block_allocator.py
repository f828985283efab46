"""Built-in plugin: the plain KV block allocator (no prefix sharing)."""

from __future__ import annotations

from pegboard.core.block_manager import BlockManager
from pegboard.core.hookspecs import hookimpl


@hookimpl
def register_block_allocators(register) -> None:
    register("plain", BlockManager)
