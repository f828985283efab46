"""Built-in plugin: the prefix-caching KV block allocator (shares full blocks of equal prefixes)."""

from __future__ import annotations

from pegboard.core.hookspecs import hookimpl
from pegboard.core.prefix_cache import PrefixCachingBlockManager


@hookimpl
def register_block_allocators(register) -> None:
    register("prefix-caching", PrefixCachingBlockManager)
