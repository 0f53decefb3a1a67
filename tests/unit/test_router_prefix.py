"""Prompt-prefix routing: the prompt's blocks, the bounded index, the policy's load guard."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections import Counter

from gpufleet.router.policies import make_policy
from gpufleet.router.policies.prefix import BALANCE, PLACE_SLACK, SLACK, Prefix
from gpufleet.router.pool import Pool
from gpufleet.router.prefix import (
    BLOCK_CHARS,
    BYTES_PER_ENTRY,
    PrefixIndex,
    prompt_blocks,
    prompt_text,
)
from gpufleet.router.upstream import READY, Upstream


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _chat(system: str, user: str) -> bytes:
    return json.dumps(
        {
            "model": "m",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": 8,
            "stream": True,
        }
    ).encode()


def test_prompts_are_read_from_the_llm_routes_only() -> None:
    body = _chat("You are terse.", "hi")
    assert prompt_text("/v1/chat/completions", body) == "system\nYou are terse.\nuser\nhi\n"
    assert prompt_text("/pool/v1/chat/completions", body) is not None  # after a route prefix
    parts = json.dumps(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}
    ).encode()
    assert prompt_text("/v1/chat/completions", parts) == "user\na\n"
    assert prompt_text("/v1/completions", b'{"prompt": "once upon"}') == "once upon"
    assert prompt_text("/v1/completions", b'{"prompt": ["x", "y"]}') == "x"
    assert prompt_text("/generate", b'{"text": "abc", "sampling_params": {}}') == "abc"
    assert prompt_text("/predict", body) is None
    assert prompt_text("/v1/chat/completions", b"not json") is None
    assert prompt_text("/v1/chat/completions", b'{"messages": 5}') is None


def test_blocks_are_chained_so_a_key_stands_for_its_whole_prefix() -> None:
    shared = "s" * (BLOCK_CHARS * 3)
    a = prompt_blocks(shared + "a" * BLOCK_CHARS * 2)
    b = prompt_blocks(shared + "b" * BLOCK_CHARS * 2)
    assert len(a) == len(b) == 5
    assert a[:3] == b[:3]
    assert a[3] != b[3]
    # The same block text after a different prefix is a different key.
    assert (
        prompt_blocks("x" * BLOCK_CHARS + "y" * BLOCK_CHARS)[1]
        != prompt_blocks("z" * BLOCK_CHARS + "y" * BLOCK_CHARS)[1]
    )
    assert prompt_blocks("short") == []


def test_the_index_finds_the_longest_prefix_per_upstream() -> None:
    index = PrefixIndex(1 << 20, 600, clock=Clock())
    base = "p" * BLOCK_CHARS * 4
    long_ = prompt_blocks(base + "q" * BLOCK_CHARS * 4)
    short = prompt_blocks(base)
    index.record(long_, "w0")
    index.record(short, "w1")
    found = index.match(prompt_blocks(base + "q" * BLOCK_CHARS * 4 + "tail" * 40))
    assert found == {index.bit("w0"): 8, index.bit("w1"): 4}
    assert index.match(prompt_blocks("other" * 100)) == {}


def test_the_index_stays_under_its_memory_bound_with_100k_prompts() -> None:
    max_bytes = 4 << 20
    index = PrefixIndex(max_bytes, 600, clock=Clock())
    rng = random.Random(1)
    tracemalloc.start()
    try:
        for i in range(100_000):
            text = f"{i}:{rng.random()}" * 20
            index.record(prompt_blocks(text), f"w{i % 4}")
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == index.max_entries
    assert index.approx_bytes <= max_bytes
    assert index.evicted > 0
    per_entry = current / len(index)
    print(f"{len(index)} entries, {current / 2**20:.2f} MiB traced, {per_entry:.0f} B/entry")
    assert per_entry <= BYTES_PER_ENTRY
    # The most recent prompts are still found; the oldest were evicted first.
    assert index.match(prompt_blocks(text))


def test_entries_unused_past_the_ttl_are_forgotten() -> None:
    clock = Clock()
    index = PrefixIndex(1 << 20, 60, clock=clock)
    blocks = prompt_blocks("t" * BLOCK_CHARS * 10)
    index.record(blocks, "w0")
    clock.now += 59
    assert index.match(blocks)
    clock.now += 2
    assert index.match(blocks) == {}
    assert index.expire() == 10
    assert len(index) == 0


def _pool(*rates: float, cap: int = 64) -> Pool:
    pool = Pool("default")
    for i, rate in enumerate(rates):
        u = Upstream(f"w{i}", f"http://h{i}", max_outstanding=cap)
        u.state = READY
        u.rate = rate
        # One answer seen: its latency is what a request takes there (1 / rate).
        u.served = 1
        u.latencies.append(1.0 / rate)
        pool.members.append(u)
    pool.refresh()
    return pool


def _run(policy: Prefix, pool: Pool, prompts: list[list[int]]) -> list[str]:
    """Dispatch each prompt (the slot stays taken: a closed loop at full load)."""
    out = []
    for prompt in prompts:
        choice = policy.choose(pool.ready, None, 1, 0.0, prompt)
        assert isinstance(choice, Upstream)
        choice.take()
        out.append(choice.id)
    return out


def _tenant(t: int, user: int) -> list[int]:
    return prompt_blocks(f"tenant {t} system prompt " * 200 + f"question {user} " * 10)


def test_a_tenant_sticks_to_one_upstream_while_the_fleet_stays_balanced() -> None:
    pool = _pool(10.0, 10.0, 10.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(3))
    assert isinstance(policy, Prefix)
    picks: dict[int, Counter[str]] = {t: Counter() for t in range(8)}
    for round_ in range(6):
        for t in range(8):
            choice = policy.choose(pool.ready, None, 1, 0.0, _tenant(t, round_))
            assert isinstance(choice, Upstream)
            picks[t][choice.id] += 1
            choice.take()
        for u in pool.members:  # each round's requests finish before the next round
            while u.in_flight:
                u.give_back(0.1)
    for t, counter in picks.items():
        assert len(counter) == 1, (t, counter)  # the same tenant, the same upstream
    load = Counter(next(iter(c)) for c in picks.values())
    assert sorted(load.values()) == [2, 2, 2, 2]  # and the tenants spread evenly


def _closed_loop(policy: Prefix, pool: Pool, prompts: list[list[int]], in_flight: int) -> list[str]:
    """Dispatch each prompt with ``in_flight`` requests outstanding: the oldest finishes
    (in a time that grows with its upstream's load, as an engine's step does) before the
    next is sent."""
    out: list[str] = []
    sent: list[Upstream] = []
    for prompt in prompts:
        if len(sent) >= in_flight:
            done = sent.pop(0)
            done.give_back(0.1 * (1 + done.in_flight / 16))
        choice = policy.choose(pool.ready, None, len(sent), 0.0, prompt)
        assert isinstance(choice, Upstream)
        choice.take()
        sent.append(choice)
        out.append(choice.id)
    return out


def test_one_tenant_flooding_spreads_over_every_upstream() -> None:
    pool = _pool(10.0, 10.0, 10.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(4))
    assert isinstance(policy, Prefix)
    picks = _closed_loop(policy, pool, [_tenant(0, i) for i in range(1200)], 48)
    # Once the flood has spread every upstream holds the prompt, and it goes to the least
    # loaded holder: even shares, as round-robin's, not a home held at the load guard's
    # edge (BALANCE x the mean + SLACK: about 27 of 48 against 7 on each other one).
    got = Counter(picks[600:])
    print(dict(got), "by load", policy.by_load)
    assert set(got) == {"w0", "w1", "w2", "w3"}, got
    assert max(got.values()) <= 0.3 * 600, got
    assert min(got.values()) >= 0.2 * 600, got
    holders = policy.index.match(_tenant(0, 9999))
    assert sorted(holders) == sorted(policy.index.bit(u.id) for u in pool.members)
    assert 1 <= policy.spread <= 3  # one new holder at a time, each for good


def test_the_least_loaded_of_several_holders_gets_the_prompt() -> None:
    pool = _pool(10.0, 10.0, 10.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(11))
    assert isinstance(policy, Prefix)
    w0, w1, w2, w3 = pool.members
    policy.index.record(_tenant(0, 0), "w0")
    policy.index.record(_tenant(0, 1), "w2")
    for u, n in ((w0, 6), (w1, 0), (w2, 3), (w3, 0)):
        for _ in range(n):
            u.take()
    # w1 and w3 are idle but hold nothing of it: the less loaded holder gets it.
    assert policy.choose(pool.ready, None, 1, 0.0, _tenant(0, 2)) is w2
    for _ in range(4):
        w2.take()
    assert policy.choose(pool.ready, None, 1, 0.0, _tenant(0, 3)) is w0
    # A holder of a longer prefix (a conversation's earlier turn) beats a shorter one.
    turn = prompt_blocks("tenant 0 system prompt " * 200 + "turn one " * 40)
    policy.index.record(turn, "w3")
    assert policy.choose(pool.ready, None, 1, 0.0, turn + _tenant(5, 0)) is w3


def test_a_new_prefix_goes_where_the_index_holds_least() -> None:
    pool = _pool(10.0, 10.0, 10.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(12))
    assert isinstance(policy, Prefix)
    w0, w1, w2, w3 = pool.members
    # w1 holds the least, although it is not the least loaded (w3 is): within
    # PLACE_SLACK requests of the least loaded, what the index holds decides.
    for i, (u, tenants) in enumerate(((w0, 3), (w1, 1), (w2, 2), (w3, 3))):
        for t in range(tenants):
            policy.index.record(_tenant(100 + 10 * i + t, 0), u.id)
    for u, n in ((w0, 4), (w1, 2), (w2, 4), (w3, 1)):
        for _ in range(n):
            u.take()
    assert policy.choose(pool.ready, None, 1, 0.0, _tenant(7, 0)) is w1
    assert policy.placed == 1
    # Sixteen tenants placed one after the other: four per upstream, whatever the load.
    pool = _pool(10.0, 10.0, 10.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(13))
    assert isinstance(policy, Prefix)
    homes = Counter(_run(policy, pool, [_tenant(t, 0) for t in range(16)]))
    assert sorted(homes.values()) == [4, 4, 4, 4], homes


def test_prompts_that_share_nothing_still_go_by_load() -> None:
    # w3 holds least, but a stream of new prompts must not pile up there: placement by
    # holdings only picks among the upstreams about as little loaded as the least.
    pool = _pool(10.0, 10.0, 10.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(15))
    assert isinstance(policy, Prefix)
    for i, u in enumerate(pool.members[:3]):
        for t in range(20):
            policy.index.record(_tenant(300 + 20 * i + t, 0), u.id)
    _run(policy, pool, [_tenant(1000 + i, 0) for i in range(40)])
    loads = [u.in_flight for u in pool.members]
    assert max(loads) - min(loads) <= PLACE_SLACK + 1, loads


def test_a_new_prefix_skips_an_upstream_past_the_load_guard() -> None:
    pool = _pool(10.0, 10.0, 10.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(14))
    assert isinstance(policy, Prefix)
    w0, w1, w2, w3 = pool.members
    for u in (w0, w2, w3):
        policy.index.record(_tenant(200 + int(u.id[1:]), 0), u.id)
    for _ in range(40):
        w1.take()  # holds nothing, but 40 in flight against none elsewhere
    assert policy.choose(pool.ready, None, 1, 0.0, _tenant(8, 0)) in (w0, w2, w3)


def test_a_slow_upstream_gets_affinity_traffic_by_its_speed() -> None:
    pool = _pool(40.0, 40.0, 40.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(5))
    assert isinstance(policy, Prefix)
    got = Counter(_run(policy, pool, [_tenant(i % 16, i) for i in range(96)]))
    share = got["w3"] / 96
    print(dict(got), f"slow share {share:.3f} (its speed: {10 / 130:.3f})")
    assert share < 0.15


def test_requests_without_a_prompt_go_by_capacity() -> None:
    pool = _pool(10.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(6))
    got: Counter[str] = Counter()
    for _ in range(20):
        choice = policy.choose(pool.ready, None, 1, 0.0, None)
        assert isinstance(choice, Upstream)
        choice.take()
        got[choice.id] += 1
    assert got == {"w0": 10, "w1": 10}


def test_a_home_is_kept_while_another_upstream_is_empty_for_a_moment() -> None:
    # Engines that batch finish their requests in bursts: one of them is often empty
    # for a moment. Against that moment a home with an ordinary load is no hot spot;
    # sending its tenant elsewhere would cost that engine a cold prefill.
    pool = _pool(10.0, 10.0, 10.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(7))
    assert isinstance(policy, Prefix)
    home = policy.choose(pool.ready, None, 1, 0.0, _tenant(0, 0))
    assert isinstance(home, Upstream)
    empty = next(u for u in pool.members if u is not home)
    for u in pool.members:
        for _ in range(0 if u is empty else 14):
            u.take()
    before = policy.by_load
    assert policy.choose(pool.ready, None, 1, 0.0, _tenant(0, 1)) is home
    assert policy.by_load == before
    # A real hot spot still spills: the home far above the fleet's mean load.
    for _ in range(30):
        home.take()
    spilled = policy.choose(pool.ready, None, 1, 0.0, _tenant(0, 2))
    assert spilled is empty
    assert policy.by_load == before + 1
    # Engines of one speed: the overflow is not a second home.
    assert list(policy.index.match(_tenant(0, 3))) == [policy.index.bit(home.id)]


def test_a_flood_spreads_although_the_home_measures_fastest_by_rate() -> None:
    # An engine that batches finishes more requests per second the more it runs: the
    # home of a flooding tenant measures the highest rate, the idle engines a low one.
    # Its latency per request is no better than theirs, and that is what the guard uses.
    pool = _pool(10.0, 10.0, 10.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(8))
    assert isinstance(policy, Prefix)
    first = policy.choose(pool.ready, None, 1, 0.0, _tenant(0, 0))
    assert isinstance(first, Upstream)
    for u in pool.members:
        u.rate = 100.0 if u is first else 3.0
        u.served += 1
        u.latencies.append(0.3)
    got = Counter(_run(policy, pool, [_tenant(0, i) for i in range(1, 48)]))
    got[first.id] += 1
    assert set(got) == {"w0", "w1", "w2", "w3"}, got
    assert got[first.id] <= BALANCE * (48 + 4) / 4 + SLACK, got


def test_a_flooding_tenants_overflow_is_not_a_second_home() -> None:
    # A flooding tenant's home answers slower because of its load; its overflow is not a
    # second home (a measured variant that made one took half the flood with it, and
    # left an engine without work: docs/performance.md, fix 3).
    pool = _pool(10.0, 10.0, 10.0, 10.0)
    policy = make_policy("prefix", pool, random.Random(10))
    assert isinstance(policy, Prefix)
    home = policy.choose(pool.ready, None, 1, 0.0, _tenant(0, 0))
    assert isinstance(home, Upstream)
    for _ in range(30):
        home.take()
    home.served += 1
    home.latencies.append(0.5)  # five times the others' 0.1: its load, not its speed
    spilled = policy.choose(pool.ready, None, 1, 0.0, _tenant(0, 1))
    assert spilled is not home
    assert list(policy.index.match(_tenant(0, 2))) == [policy.index.bit(home.id)]
