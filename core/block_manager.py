"""KV block manager: fixed-size blocks with reference counts (pure Python, no torch)."""

from __future__ import annotations

from collections import deque

from pegboard.core.request import Request


class BlockManager:
    """Hands out KV-cache blocks to requests and takes them back.

    A request's ``block_table`` lists its blocks in order; token ``i`` of the request lives
    in slot ``block_table[i // block_size] * block_size + i % block_size``.  Blocks carry
    reference counts so that subclasses (prefix caching, forking) can share them.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, got {num_blocks} x {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.free_block_ids: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, 0.0 to 1.0."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def match_prefix(self, request: Request) -> int:
        """Attach cached blocks for the request's prefix and return how many tokens they hold (none here)."""
        return 0

    def allocate_slots(self, request: Request, num_new_tokens: int) -> bool:
        """Grow the request's block table to hold ``num_new_tokens`` more tokens; False when blocks run out."""
        needed = self.blocks_needed(request.num_computed_tokens + num_new_tokens) - len(request.block_table)
        if needed <= 0:
            return True
        if needed > self.num_free_blocks:
            return False
        for _ in range(needed):
            request.block_table.append(self._take_free_block())
        return True

    def on_tokens_computed(self, request: Request) -> None:
        """Called after a step computed more of the request's KV (prefix caching hashes full blocks here)."""

    def free(self, request: Request) -> None:
        """Release every block of the request (last block first: the plain list hands them out again first block
        first; prefix caching keeps the prefix cached longest)."""
        for block_id in reversed(request.block_table):
            self._release(block_id)
        request.block_table = []

    def _take_free_block(self) -> int:
        block_id = self.free_block_ids.popleft()
        assert self.ref_counts[block_id] == 0, f"block {block_id} on the free list is still referenced"
        self.ref_counts[block_id] = 1
        return block_id

    def _release(self, block_id: int) -> None:
        self.ref_counts[block_id] -= 1
        assert self.ref_counts[block_id] >= 0, f"block {block_id} released more often than taken"
        if self.ref_counts[block_id] == 0:  # reused first: its memory is mapped and likely in cache
            self.free_block_ids.appendleft(block_id)
