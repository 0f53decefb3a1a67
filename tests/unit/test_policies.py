"""Routing policies over random pools (Hypothesis): valid choices, fairness, determinism."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.router.policies import POLICIES, Capacity, RoundRobin, Sticky, Weighted, make_policy
from gpufleet.router.pool import Pool
from gpufleet.router.upstream import READY, Upstream

ALL = [*POLICIES, "sticky"]

pools = st.lists(
    st.tuples(st.integers(0, 8), st.integers(1, 8), st.floats(0.0, 200.0)),
    min_size=1,
    max_size=8,
)


def _pool(spec: list[tuple[int, int, float]]) -> Pool:
    pool = Pool("default")
    for i, (in_flight, cap, rate) in enumerate(spec):
        u = Upstream(f"w{i}", f"http://127.0.0.1:{9000 + i}", max_outstanding=cap)
        u.in_flight = min(in_flight, cap)
        u.rate = rate
        u.state = READY
        pool.members.append(u)
    pool.refresh()
    return pool


@settings(max_examples=150, deadline=None)
@given(spec=pools, name=st.sampled_from(ALL), seed=st.integers(0, 2**32), key=st.text(max_size=5))
def test_choice_has_room_and_none_exactly_when_all_full(
    spec: list[tuple[int, int, float]], name: str, seed: int, key: str
) -> None:
    pool = _pool(spec)
    policy = make_policy(name, pool, random.Random(seed))
    choice = policy.choose(pool.ready, key or None, 1, 0.0)
    has_room = [u for u in pool.ready if u.in_flight < u.max_outstanding]
    if isinstance(choice, Upstream):
        assert choice in has_room
    elif choice is None:
        assert not has_room
    else:  # a hold: only the capacity policy, and only while something has room
        assert name == "capacity"
        assert has_room
        assert choice > 0


@settings(max_examples=60, deadline=None)
@given(spec=pools, name=st.sampled_from(ALL), seed=st.integers(0, 2**32))
def test_same_seed_same_choices(spec: list[tuple[int, int, float]], name: str, seed: int) -> None:
    picks = []
    for _ in range(2):
        pool = _pool(spec)
        policy = make_policy(name, pool, random.Random(seed))
        picks.append([_id(policy.choose(pool.ready, f"k{i}", 1, 0.0)) for i in range(20)])
    assert picks[0] == picks[1]


def _id(choice: object) -> object:
    return choice.id if isinstance(choice, Upstream) else choice


@given(n=st.integers(1, 8), k=st.integers(1, 20))
def test_round_robin_gives_each_k_of_kn(n: int, k: int) -> None:
    pool = _pool([(0, 1000, 0.0)] * n)
    rr = RoundRobin()
    counts = Counter(_id(rr.choose(pool.ready, None, 1, 0.0)) for _ in range(k * n))
    assert set(counts.values()) == {k}
    assert len(counts) == n


@settings(max_examples=100, deadline=None)
@given(loads=st.lists(st.integers(0, 7), min_size=2, max_size=8), seed=st.integers(0, 2**32))
def test_power_of_two_never_picks_the_single_most_loaded(loads: list[int], seed: int) -> None:
    pool = _pool([(load, 8, 0.0) for load in loads])
    policy = make_policy("power-of-two", pool, random.Random(seed))
    top = max(loads)
    for _ in range(20):
        choice = policy.choose(pool.ready, None, 1, 0.0)
        assert isinstance(choice, Upstream)
        if loads.count(top) == 1:
            assert choice.in_flight != top


def test_least_outstanding_picks_the_least_loaded() -> None:
    pool = _pool([(3, 8, 0.0), (1, 8, 0.0), (2, 8, 0.0)])
    choice = make_policy("least-outstanding", pool).choose(pool.ready, None, 1, 0.0)
    assert _id(choice) == "w1"


def test_weighted_follows_weights_smoothly() -> None:
    pool = _pool([(0, 1000, 0.0)] * 3)
    for u, w in zip(pool.members, (5.0, 1.0, 1.0), strict=True):
        u.weight = w
    policy = Weighted()
    seq = [_id(policy.choose(pool.ready, None, 1, 0.0)) for _ in range(70)]
    assert Counter(seq) == {"w0": 50, "w1": 10, "w2": 10}
    assert "w0w0w0w0w0" not in "".join(str(s) for s in seq[:7])


def test_sticky_keeps_keys_and_falls_back_when_owner_is_down() -> None:
    pool = _pool([(0, 8, 0.0)] * 4)
    sticky = Sticky(pool, random.Random(1))
    owners = {f"s{i}": _id(sticky.choose(pool.ready, f"s{i}", 1, 0.0)) for i in range(200)}
    assert len(set(owners.values())) == 4  # keys spread over every upstream
    assert all(_id(sticky.choose(pool.ready, k, 1, 0.0)) == v for k, v in owners.items())
    down = pool.members[0]
    down.state = "ejected"
    pool.refresh()
    for k, v in owners.items():
        choice = sticky.choose(pool.ready, k, 1, 0.0)
        assert isinstance(choice, Upstream)
        assert choice is not down
        if v != down.id:
            assert choice.id == v  # nobody else's sessions move


def test_capacity_sends_in_proportion_to_rate() -> None:
    pool = _pool([(0, 100, 40.0), (0, 100, 10.0)])
    policy = Capacity(random.Random(0))
    for _ in range(50):
        choice = policy.choose(pool.ready, None, 1, 0.0)
        assert isinstance(choice, Upstream)
        choice.in_flight += 1
    assert [u.in_flight for u in pool.members] == [40, 10]


def test_capacity_holds_for_a_much_faster_busy_upstream_then_gives_in() -> None:
    # Fast: at its cap of 1, 25 req/s. Slow: idle, 6.25 req/s (4x slower).
    pool = _pool([(1, 1, 25.0), (0, 1, 6.25)])
    policy = Capacity(random.Random(0))
    hold = policy.choose(pool.ready, None, 1, 0.0)
    assert isinstance(hold, float)
    assert 0 < hold <= 0.16
    # Held no longer than the slow upstream would have needed.
    assert _id(policy.choose(pool.ready, None, 1, 0.2)) == "w1"
    # A long queue makes the slow upstream worth using at once.
    assert _id(policy.choose(pool.ready, None, 10, 0.0)) == "w1"
