"""Prefix caching: requests share full KV blocks found by chained content hashes (pure Python, no torch)."""

from __future__ import annotations

from collections import OrderedDict

from pegboard.core.block_manager import BlockManager
from pegboard.core.request import Request

BlockKey = tuple[int | None, tuple[int, ...]]  # (the previous block's hash, this block's token ids)


def hash_block(key: BlockKey) -> int:
    """The chained hash of one full block: its tokens and, through the previous block's hash, all before."""
    return hash(key)


class PrefixCachingBlockManager(BlockManager):
    """A block manager that hashes every full block of computed tokens and lets later requests reuse it.

    ``match_prefix`` walks a new request's full blocks in order and attaches each cached block whose
    hash matches and whose key (previous hash, token ids) verifies, stopping at the first miss and
    leaving at least the last token to compute (its logits are needed).  Freed blocks keep their
    contents and queue at the end of the free list; a cached block is evicted only when it is taken
    for new tokens, so the least recently freed go first (blocks with nothing cached go before them).
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size)
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # O(1) removal
        self.block_hashes: list[int | None] = [None] * num_blocks
        self.block_keys: list[BlockKey | None] = [None] * num_blocks
        self.cached_blocks: dict[int, int] = {}  # hash -> block id
        self.query_tokens = 0  # tokens of the requests match_prefix was asked about
        self.hit_tokens = 0  # of those, tokens found in the cache

    @property
    def num_cached_blocks(self) -> int:
        """Blocks whose contents a later request can reuse (in use or free)."""
        return len(self.cached_blocks)

    @property
    def hit_rate(self) -> float:
        """Fraction of queried tokens found in the cache, 0.0 to 1.0."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0

    def match_prefix(self, request: Request) -> int:
        """Attach the cached blocks of the request's longest cached prefix (capped below its last token)."""
        self.query_tokens += request.num_tokens
        if request.sampling_params.prompt_logprobs is not None:
            return 0  # every prompt position must run through the model to get its logprobs
        bs = self.block_size
        tokens = request.all_token_ids
        parent: int | None = None
        num_cached = 0
        while num_cached + bs <= request.num_tokens - 1:
            key = (parent, tuple(tokens[num_cached:num_cached + bs]))
            parent = hash_block(key)
            block_id = self.cached_blocks.get(parent)
            if block_id is None or self.block_keys[block_id] != key:
                break
            if self.ref_counts[block_id] == 0:
                del self.free_block_ids[block_id]
            self.ref_counts[block_id] += 1
            request.block_table.append(block_id)
            num_cached += bs
        self.hit_tokens += num_cached
        return num_cached

    def on_tokens_computed(self, request: Request) -> None:
        """Hash the request's blocks that its computed (hence final) tokens have just filled; a token still
        in flight on the device is hashed once it arrives (the engine calls again then)."""
        bs = self.block_size
        table = request.block_table
        end = min(request.num_computed_tokens, request.num_tokens) // bs
        start = end
        while start > 0 and self.block_hashes[table[start - 1]] is None:  # hashed blocks lead the table
            start -= 1
        parent = self.block_hashes[table[start - 1]] if start else None
        for i in range(start, end):
            key = (parent, tuple(request.all_token_ids[i * bs:(i + 1) * bs]))
            parent = hash_block(key)
            self.block_hashes[table[i]], self.block_keys[table[i]] = parent, key
            self.cached_blocks.setdefault(parent, table[i])  # a block computed twice: the first copy is shared

    def _take_free_block(self) -> int:
        block_id, _ = self.free_block_ids.popitem(last=False)
        assert self.ref_counts[block_id] == 0, f"block {block_id} on the free list is still referenced"
        self._forget(block_id)
        self.ref_counts[block_id] = 1
        return block_id

    def _release(self, block_id: int) -> None:
        self.ref_counts[block_id] -= 1
        assert self.ref_counts[block_id] >= 0, f"block {block_id} released more often than taken"
        if self.ref_counts[block_id] > 0:
            return
        self.free_block_ids[block_id] = None
        block_hash = self.block_hashes[block_id]
        if block_hash is None or self.cached_blocks.get(block_hash) != block_id:  # nothing to reuse: reuse it first
            self._forget(block_id)
            self.free_block_ids.move_to_end(block_id, last=False)

    def _forget(self, block_id: int) -> None:
        """Evict the block's contents from the cache."""
        block_hash = self.block_hashes[block_id]
        if block_hash is not None and self.cached_blocks.get(block_hash) == block_id:
            del self.cached_blocks[block_hash]
        self.block_hashes[block_id] = self.block_keys[block_id] = None
