"""The router's time bounds and retry budget, on a fake clock."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from gpufleet.router.retry_budget import RetryBudget
from gpufleet.router.upstream import Abandoned, Upstream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeAttempt:
    def __init__(self) -> None:
        self.failed: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        self.failed = exc


def test_first_byte_timeout_is_learned_from_the_p99_with_a_floor() -> None:
    clock = Clock()
    u = Upstream("w0", "http://a", max_outstanding=8, clock=clock)
    assert math.isinf(u.first_byte_timeout_s)  # nothing learned: the deadline bounds it
    for _ in range(19):
        u.note_first_byte(0.02)
    assert math.isinf(u.first_byte_timeout_s)
    for _ in range(13):
        u.note_first_byte(0.02)
    assert u.first_byte_timeout_s == 1.0  # 10 x 20 ms is under the 1 s floor
    assert u.busy_after_s == 0.5
    for _ in range(512):
        u.note_first_byte(6.0)  # minute-class work: minutes, not seconds
    assert u.first_byte_timeout_s == 60.0
    assert u.busy_after_s == 24.0


def test_a_fixed_first_byte_timeout_wins() -> None:
    u = Upstream("w0", "http://a", first_byte_timeout_s=5.0, clock=Clock())
    assert (u.first_byte_timeout_s, u.busy_after_s) == (5.0, 2.5)
    for _ in range(64):
        u.note_first_byte(10.0)
    assert u.first_byte_timeout_s == 5.0


def test_an_upstream_with_an_old_waiting_attempt_takes_no_new_work() -> None:
    clock = Clock()
    u = Upstream("w0", "http://a", max_outstanding=8, first_byte_timeout_s=2.0, clock=clock)
    a = FakeAttempt()
    u.take()
    u.waiting[a] = clock.now
    assert u.has_room()
    clock.now += 1.01  # past busy_after_s (1 s)
    assert u.is_stuck()
    assert not u.has_room()
    del u.waiting[a]
    assert u.has_room()


def test_a_missed_first_byte_makes_the_upstream_suspect_until_it_answers() -> None:
    clock = Clock()
    u = Upstream("w0", "http://a", max_outstanding=8, first_byte_timeout_s=1.0, clock=clock)
    head, queued = FakeAttempt(), FakeAttempt()
    for attempt in (head, queued):
        u.take()
        u.waiting[attempt] = clock.now
    clock.now += 1.0
    assert u.first_byte_missed(head, 1.0) is False  # the oldest: maybe the cause
    del u.waiting[head]
    u.give_back(None)
    assert u.first_byte_missed(queued, 1.0) is True  # only queued behind it
    del u.waiting[queued]
    u.give_back(None)
    assert not u.has_room()  # suspect: no new work for the timeout ...
    clock.now += 1.01
    assert u.has_room()  # ... then one trial at a time
    trial = FakeAttempt()
    u.take()
    u.waiting[trial] = clock.now
    assert not u.has_room()
    del u.waiting[trial]
    u.note_first_byte(0.01)  # it answered: trusted again
    assert u.has_room()
    # Streams already answering do not hold a suspect upstream's trial back.
    u.first_byte_missed(FakeAttempt(), 1.0)
    clock.now += 1.01
    assert u.in_flight == 1
    assert u.has_room()


def test_a_refusal_caps_the_upstream_at_what_it_held_until_retry_after() -> None:
    clock = Clock()
    u = Upstream("w0", "http://a", max_outstanding=16, clock=clock)
    for _ in range(5):
        u.take()
    u.refused(2.0)  # the fifth was refused: it holds four
    u.give_back(None)
    assert not u.has_room()
    u.give_back(0.1)
    assert u.has_room()  # one of its four ended: room for one
    u.take()
    assert not u.has_room()
    clock.now += 2.0
    assert u.has_room()


def test_abandoning_fails_every_waiting_attempt() -> None:
    u = Upstream("w0", "http://a", clock=Clock())
    attempts = [FakeAttempt() for _ in range(3)]
    for a in attempts:
        u.waiting[a] = 0.0
    assert u.abandon_waiting("probes failed") == 3
    assert all(isinstance(a.failed, Abandoned) for a in attempts)
    assert not u.waiting


def test_the_retry_budget_allows_a_share_of_requests_and_a_minimum() -> None:
    clock = Clock()
    budget = RetryBudget(20.0, 3, clock=clock)
    assert [budget.try_take() for _ in range(4)] == [True, True, True, False]
    for _ in range(3):
        budget.done()
    for _ in range(100):
        budget.note_request()
    taken = 0
    while budget.try_take():
        taken += 1
    assert taken == 17  # 20 of 100 requests, 3 already taken
    clock.now += 11  # the window slid past all of it
    for _ in range(taken):
        budget.done()
    assert budget.try_take()


@given(st.lists(st.sampled_from(["request", "retry", "done", "tick"]), max_size=300))
def test_retries_never_pass_the_budget_beyond_the_minimum(ops: list[str]) -> None:
    clock = Clock()
    budget = RetryBudget(20.0, 3, clock=clock)
    requests = retries = 0
    active = 0
    window: list[tuple[float, str]] = []
    for op in ops:
        if op == "request":
            budget.note_request()
            window.append((clock.now, "q"))
        elif op == "retry":
            if budget.try_take():
                active += 1
                window.append((clock.now, "r"))
                recent = [k for t, k in window if t > clock.now - 10]
                requests, retries = recent.count("q"), recent.count("r")
                assert active <= 3 or retries <= 0.2 * requests + 1e-9
        elif op == "done" and active:
            budget.done()
            active -= 1
        elif op == "tick":
            clock.now += 1.0


def test_the_gradient_limit_shrinks_below_its_start_when_latency_rises() -> None:
    from gpufleet.router.limit import GradientLimit

    limit = GradientLimit(4)
    for _ in range(20):
        limit.sample(0.01, 4)
    grown = limit.limit
    assert grown > 4
    for _ in range(60):
        got = limit.sample(0.2, 4)  # 20x the best: the server queues
    assert got == 1


def test_usage_of_survives_deeply_nested_answers() -> None:
    from gpufleet.router.tokens import usage_of

    assert usage_of(b"[" * 5000 + b"]" * 5000) is None
