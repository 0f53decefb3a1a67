"""Prompt-prefix affinity: which upstream most likely holds a prompt's KV cache.

An LLM engine keeps the KV cache of the prompts it has seen, in blocks: a request whose
prompt starts like an earlier one skips that part of the prefill. The router cannot see
those caches, but it knows where it sent each prompt. ``PrefixIndex`` remembers that,
approximately and within a hard memory bound:

- A prompt is rendered to one text (chat ``messages`` in order, completions' ``prompt``,
  SGLang's ``text``) and cut into blocks of ``BLOCK_CHARS`` characters; block i's key is
  a hash chained over blocks 0..i, so one key stands for a whole prefix (as vLLM's
  prefix caching keys its blocks). Cutting and hashing cost O(prompt length).
- The index maps a block key to the upstreams it was sent to (a bit mask) and when
  (seconds, packed in the same int), in least-recently-used order: a lookup walks the
  prompt's keys from the first and stops at the first unknown one, so it costs
  O(prompt length), never O(index size).
- Past ``max_bytes`` (about ``BYTES_PER_ENTRY`` per key) the least recently used keys go,
  and keys unused for ``ttl_s`` go too, as an engine's LRU cache would lose them.
- It counts the keys it holds per upstream (``held``): what the router believes each
  engine's cache holds, which is where a new prefix goes (the emptiest, by speed).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

import msgspec

#: Characters per block (about 16 tokens of English text).
BLOCK_CHARS: Final = 64
#: Memory one index entry takes (a key int, its packed value, its OrderedDict slot and
#: node), measured with tracemalloc in tests/unit/test_router_prefix.py.
BYTES_PER_ENTRY: Final = 200
#: Low bits of an entry's value hold the upstream mask; the seconds stamp sits above.
_MASK_BITS: Final = 256
_MASK: Final = (1 << _MASK_BITS) - 1
#: Most characters of a prompt that are indexed (longer prompts: their first part).
MAX_CHARS: Final = 1 << 20


class _Part(msgspec.Struct):
    text: str | None = None


class _Message(msgspec.Struct):
    role: str = ""
    content: str | list[_Part] | None = None


class _Body(msgspec.Struct):
    """What prefix routing reads of an OpenAI or SGLang body (other fields are skipped)."""

    messages: list[_Message] | None = None
    prompt: str | list[str | int] | None = None
    text: str | None = None


_DECODER = msgspec.json.Decoder(_Body)
#: Paths whose bodies carry a prompt (matched on the path's end, after any route prefix).
PROMPT_PATHS: Final = ("/v1/chat/completions", "/v1/completions", "/generate")


def prompt_text(path: str, body: bytes) -> str | None:
    """The prompt of an LLM request body as one text, or None when it has none."""
    if not path.endswith(PROMPT_PATHS):
        return None
    try:
        parsed = _DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError):  # deeply nested skipped fields (issue 13)
        return None
    if parsed.messages:
        parts: list[str] = []
        for m in parsed.messages:
            parts.append(m.role)
            parts.append("\n")
            content = m.content
            if isinstance(content, str):
                parts.append(content)
            elif content:
                parts.extend(p.text for p in content if p.text)
            parts.append("\n")
        return "".join(parts)
    prompt = parsed.prompt
    if isinstance(prompt, str):
        return prompt
    if prompt and isinstance(prompt[0], str):
        return prompt[0]
    if prompt:  # token ids: their text form is as good a prefix as any
        return " ".join(map(str, prompt))
    return parsed.text


def prompt_blocks(text: str, block_chars: int = BLOCK_CHARS) -> list[int]:
    """The chained keys of the prompt's whole blocks (a trailing partial block is not one)."""
    end = min(len(text), MAX_CHARS) // block_chars * block_chars
    keys: list[int] = []
    key = 0
    for i in range(0, end, block_chars):
        key = hash((key, text[i : i + block_chars]))
        keys.append(key)
    return keys


class PrefixIndex:
    """Where recent prompts' blocks were sent, bounded in memory, LRU and TTL evicted."""

    def __init__(
        self,
        max_bytes: int,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max(16, max_bytes // BYTES_PER_ENTRY)
        self.ttl_s = ttl_s
        self._clock = clock
        self._t0 = clock()
        self._entries: OrderedDict[int, int] = OrderedDict()
        self._bits: dict[str, int] = {}
        #: Per upstream bit: how many entries name it.
        self._held: dict[int, int] = {}
        self._records = 0
        #: Lookups, and those that found at least one block somewhere.
        self.lookups = 0
        self.hits = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def approx_bytes(self) -> int:
        """About how much memory the index holds."""
        return len(self._entries) * BYTES_PER_ENTRY

    def bit(self, upstream_id: str) -> int:
        """The mask bit of an upstream (ids are never reused, so neither are bits)."""
        found = self._bits.get(upstream_id)
        if found is None:
            if len(self._bits) >= _MASK_BITS:
                # Out of bits after many upstreams came and went: start afresh rather
                # than let a new upstream inherit an old one's prompts.
                self._bits.clear()
                self._entries.clear()
                self._held.clear()
            found = self._bits[upstream_id] = 1 << len(self._bits)
        return found

    def held(self, bit: int) -> int:
        """How many of the index's blocks were sent to the upstream of ``bit``."""
        return self._held.get(bit, 0)

    def match(self, blocks: Sequence[int]) -> dict[int, int]:
        """For each upstream bit, how many leading blocks of ``blocks`` it was sent."""
        self.lookups += 1
        entries = self._entries
        found: dict[int, int] = {}
        live = _MASK
        n = 0
        oldest = int(self._clock() - self._t0 - self.ttl_s)
        # Bits are written out only where one drops out of the walk (and at its end), not
        # per block: a 1,500-token prompt is ~150 blocks and usually one or a few bits.
        for key in blocks:
            value = entries.get(key)
            if value is None or value >> _MASK_BITS < oldest:
                break
            kept = live & value
            if kept != live:
                if n:
                    _put(found, live ^ kept, n)
                live = kept
                if not live:
                    break
            n += 1
        if n and live:
            _put(found, live, n)
        if found:
            self.hits += 1
        return found

    def record(self, blocks: Sequence[int], upstream_id: str) -> None:
        """``blocks`` went to ``upstream_id``: remember it, most recent last."""
        if not blocks:
            return
        bit = self.bit(upstream_id)
        stamp = int(self._clock() - self._t0) << _MASK_BITS
        entries = self._entries
        # Last to first: a prompt's first blocks end most recent, so the LRU drops its
        # tail before its head (a lookup stops at the first block it misses).
        added = 0
        for key in reversed(blocks):
            value = entries.get(key)
            if value is None:
                entries[key] = stamp | bit
                added += 1
            elif value >= stamp and value & bit:
                # Refreshed for this upstream within this second already: a tenant's
                # prompt arrives many times a second, and re-stamping it is the same.
                continue
            else:
                if not value & bit:
                    added += 1
                entries[key] = stamp | (value & _MASK) | bit
                entries.move_to_end(key)
        held = self._held
        held[bit] = held.get(bit, 0) + added
        excess = len(entries) - self.max_entries
        for _ in range(max(excess, 0)):
            self._forget(entries.popitem(last=False)[1])
        if excess > 0:
            self.evicted += excess
        self._records += 1
        if self._records % 256 == 0:
            self.expire()

    def expire(self) -> int:
        """Drop the entries unused for ``ttl_s`` (the oldest are first); how many."""
        oldest = int(self._clock() - self._t0 - self.ttl_s)
        entries = self._entries
        dropped = 0
        while entries:
            key, value = next(iter(entries.items()))
            if value >> _MASK_BITS >= oldest:
                break
            del entries[key]
            self._forget(value)
            dropped += 1
        self.evicted += dropped
        return dropped

    def _forget(self, value: int) -> None:
        """An entry went: the upstreams it named hold one block less."""
        held = self._held
        mask = value & _MASK
        while mask:
            low = mask & -mask
            held[low] -= 1
            mask ^= low


def _put(found: dict[int, int], mask: int, n: int) -> None:
    """``found[bit] = n`` for every bit of ``mask``."""
    while mask:
        low = mask & -mask
        found[low] = n
        mask ^= low
