"""The prefix KV cache: fixed-size blocks named by chained hashes, LRU-evicted past a capacity.

Blocks of running sequences are pinned (a reference count); only unpinned blocks are
evictable, least recently used first. A sequence's blocks are unpinned last block first,
so that a prefix's tail is evicted before its head and the cache keeps the leading blocks
that later prompts can hit (vLLM frees blocks in reverse order for the same reason).
Besides hashed prompt blocks, a running sequence holds private blocks (its partial last
prompt block and its generated tokens) that count against the capacity but are never shared.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    """A bounded set of KV blocks, each pinned by the sequences that use it."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._refs: dict[int, int] = {}  # every cached block -> sequences using it
        self._lru: OrderedDict[int, None] = OrderedDict()  # unpinned blocks, oldest first
        self._private = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._refs)

    def __contains__(self, block: object) -> bool:
        return block in self._refs

    @property
    def used_blocks(self) -> int:
        """Blocks held by running sequences (pinned plus private): what cannot be evicted."""
        return len(self._refs) - len(self._lru) + self._private

    def match(self, hashes: Sequence[int], limit: int | None = None) -> int:
        """How many leading blocks of ``hashes`` (at most ``limit``) are cached."""
        n = 0
        for h in hashes[:limit]:
            if h not in self._refs:
                break
            n += 1
        return n

    def fits(self, hashes: Sequence[int], hit: int, private: int) -> bool:
        """Whether a sequence with these blocks (``hit`` leading ones cached) fits now."""
        newly_pinned = sum(1 for h in hashes[:hit] if self._refs[h] == 0)
        need = len(hashes) - hit + private
        return self.capacity - self.used_blocks - newly_pinned >= need

    def acquire(self, hashes: Sequence[int], private: int) -> None:
        """Pin ``hashes`` (inserting those not cached, evicting as needed) and hold ``private``."""
        self._private += private
        for h in hashes:
            refs = self._refs.get(h)
            if refs is None:
                self._make_room(1)
                self._refs[h] = 1
            else:
                if refs == 0:
                    del self._lru[h]
                self._refs[h] = refs + 1
        self._make_room(0)

    def release(self, hashes: Sequence[int], private: int) -> None:
        """Unpin ``hashes`` (last block first in LRU order) and give back ``private``."""
        self._private -= private
        for h in reversed(hashes):
            refs = self._refs[h] - 1
            self._refs[h] = refs
            if refs == 0:
                self._lru[h] = None

    def clear(self) -> int:
        """Drop every unpinned block; return how many were dropped."""
        n = len(self._lru)
        for h in self._lru:
            del self._refs[h]
        self._lru.clear()
        return n

    def _make_room(self, extra: int) -> None:
        # Evict until ``extra`` more blocks fit beside the cached and private ones.
        while len(self._refs) + self._private + extra > self.capacity and self._lru:
            h, _ = self._lru.popitem(last=False)
            del self._refs[h]
            self.evictions += 1
