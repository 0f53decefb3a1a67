"""The simulated LLM engine's scheduler and prefix cache, stepped by hand (no clock, no sleep)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.errors import ConfigError
from gpufleet.testing.llm import (
    EngineConfig,
    PrefixCache,
    QueueFull,
    Scheduler,
    SeqState,
    Sequence,
    block_hashes,
    render_chat,
    tokenize,
)
from gpufleet.testing.llm.bodies import BadRequest, Job, chat_job, completion_job, generate_job
from gpufleet.testing.llm.config import add_engine_flags, config_from_args

CFG = EngineConfig(
    step_base_ms=8.0,
    step_per_seq_ms=0.5,
    prefill_us_per_token=100.0,
    block_tokens=4,
    kv_blocks=64,
    max_running=4,
)


def words(n: int, tag: str = "w") -> list[str]:
    return [f"{tag}{i} " for i in range(n)]


def seq_of(tokens: list[str], max_tokens: int = 3, cfg: EngineConfig = CFG) -> Sequence:
    hashes = tuple(block_hashes(tokens, cfg.block_tokens))
    return Sequence(prompt_tokens=len(tokens), block_hashes=hashes, max_tokens=max_tokens)


def run_to_end(sched: Scheduler, limit: int = 1000) -> int:
    """Step until nothing runs; return the number of steps."""
    for n in range(limit):
        plan = sched.begin_step(float(n))
        if plan is None:
            return n
        sched.end_step(plan, float(n) + plan.seconds)
    raise AssertionError("the scheduler never went idle")


# --- tokens ---------------------------------------------------------------------------------


def test_tokens_are_words_with_their_trailing_space() -> None:
    assert tokenize("  Hello,  world\nbye") == ["Hello,  ", "world\n", "bye"]
    assert "".join(tokenize("a b  c\n")) == "a b  c\n"
    assert tokenize("") == []


def test_chat_renders_messages_in_order_then_the_assistant_tag() -> None:
    text = render_chat([("system", "be brief"), ("user", "hi")])
    assert text == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"


def test_block_hashes_are_chained_over_full_blocks() -> None:
    base = words(10)
    h = block_hashes(base, 4)
    assert len(h) == 2  # the partial third block has no hash
    assert len(set(h)) == 2
    # Same first 8 tokens, different tail: same hashes.
    assert block_hashes([*base[:8], "other "], 4) == h
    # A change in block 1 keeps block 0's hash; a change in block 0 changes every hash.
    changed1 = [*base[:5], "x ", *base[6:]]
    assert block_hashes(changed1, 4)[0] == h[0]
    assert block_hashes(changed1, 4)[1] != h[1]
    changed0 = ["x ", *base[1:]]
    assert all(a != b for a, b in zip(block_hashes(changed0, 4), h, strict=True))
    # Block 1's hash depends on block 0 even when block 1's tokens are equal.
    twice = words(4, "a") + words(4, "a")
    assert len(set(block_hashes(twice, 4))) == 2
    # Token boundaries matter, not just the characters.
    assert block_hashes(["ab", "c"], 2) != block_hashes(["a", "bc"], 2)


# --- cache ----------------------------------------------------------------------------------


def test_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = PrefixCache(8)
    prompts = [block_hashes(words(16, f"p{i}-"), 4) for i in range(5)]  # 4 blocks each
    for hashes in prompts:
        cache.acquire(hashes, 0)
        cache.release(hashes, 0)
        assert len(cache) <= 8
    # Only the two most recent prompts are left.
    assert all(h in cache for h in prompts[3] + prompts[4])
    assert not any(h in cache for p in prompts[:3] for h in p)
    assert cache.evictions == 12
    # A hit refreshes: prompts[3] becomes the most recent, so a new prompt evicts prompts[4].
    cache.acquire(prompts[3], 0)
    cache.release(prompts[3], 0)
    new = block_hashes(words(16, "new-"), 4)
    cache.acquire(new, 0)
    assert all(h in cache for h in prompts[3])
    assert not any(h in cache for h in prompts[4])


def test_cache_evicts_a_prefix_tail_first() -> None:
    cache = PrefixCache(4)
    a = block_hashes(words(16, "a"), 4)
    cache.acquire(a, 0)
    cache.release(a, 0)
    b = block_hashes(words(8, "b"), 4)
    cache.acquire(b, 0)  # two evictions: a's last two blocks, not its first
    assert a[0] in cache
    assert a[1] in cache
    assert a[2] not in cache
    assert a[3] not in cache
    assert cache.match(a) == 2


def test_pinned_blocks_are_never_evicted() -> None:
    cache = PrefixCache(8)
    running = block_hashes(words(16, "run"), 4)
    cache.acquire(running, 2)  # 4 pinned + 2 private
    assert cache.used_blocks == 6
    other = block_hashes(words(8, "o"), 4)
    assert cache.fits(other, 0, 0)
    assert not cache.fits(other, 0, 1)
    cache.acquire(other, 0)
    cache.release(other, 0)
    third = block_hashes(words(8, "t"), 4)
    cache.acquire(third, 0)  # evicts `other`, never `running`
    assert all(h in cache for h in running)
    assert not any(h in cache for h in other)
    cache.release(running, 2)
    cache.release(third, 0)
    assert cache.used_blocks == 0
    assert cache.clear() == len(running) + len(third)
    assert len(cache) == 0


def test_a_hit_counts_only_leading_blocks() -> None:
    cache = PrefixCache(16)
    hashes = block_hashes(words(16), 4)
    cache.acquire(hashes[1:], 0)  # blocks 1..3 cached, block 0 not
    assert cache.match(hashes) == 0
    cache.acquire(hashes[:1], 0)
    assert cache.match(hashes) == 4
    assert cache.match(hashes, limit=3) == 3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(1, 24), st.booleans()), max_size=40),
    st.integers(4, 24),
)
def test_cache_never_exceeds_its_capacity(ops: list[tuple[int, int, bool]], cap: int) -> None:
    cache = PrefixCache(cap)
    held: list[tuple[list[int], int]] = []
    for tenant, length, release in ops:
        hashes = block_hashes(words(length, f"t{tenant}-"), 4)
        hit = cache.match(hashes)
        if cache.fits(hashes, hit, 1):
            cache.acquire(hashes, 1)
            held.append((hashes, 1))
        if release and held:
            cache.release(*held.pop(0))
        assert len(cache) + sum(p for _, p in held) <= cap
        assert cache.used_blocks <= cap
        assert all(h in cache for hs, _ in held for h in hs)


# --- scheduler ------------------------------------------------------------------------------


def test_step_time_follows_the_formula() -> None:
    cfg = dataclasses.replace(CFG, speed=0.5)
    sched = Scheduler(cfg)
    sched.add(seq_of(words(20, "a"), max_tokens=2))
    sched.add(seq_of(words(40, "b"), max_tokens=2))
    plan = sched.begin_step(0.0)
    assert plan is not None
    assert plan.prefill_tokens == 60
    # (8 + 0.5 × 2 + 0.1 × 60) / 0.5 ms
    assert plan.seconds == pytest.approx((8 + 1.0 + 6.0) / 0.5 / 1000)
    sched.end_step(plan, plan.seconds)
    decode = sched.begin_step(1.0)
    assert decode is not None
    assert decode.prefill_tokens == 0
    assert decode.seconds == pytest.approx((8 + 1.0) / 0.5 / 1000)


def test_one_token_per_running_sequence_per_step() -> None:
    sched = Scheduler(CFG)
    short, long = seq_of(words(5), max_tokens=2), seq_of(words(6, "x"), max_tokens=4)
    sched.add(short)
    sched.add(long)
    plan = sched.begin_step(0.0)
    assert plan is not None
    assert sched.end_step(plan, 0.5) == [short, long]
    # The first token comes right after the prefill step.
    assert (short.generated, long.generated) == (1, 1)
    assert short.first_token_at == long.first_token_at == 0.5
    for step in range(1, 4):
        plan = sched.begin_step(float(step))
        assert plan is not None
        sched.end_step(plan, float(step) + 0.5)
        assert long.generated == step + 1
    assert short.state is SeqState.FINISHED
    assert short.generated == 2
    assert long.state is SeqState.FINISHED
    assert long.generated == 4
    assert sched.begin_step(9.0) is None
    assert sched.generation_tokens == 6
    assert sched.steps == 4


def test_max_running_is_respected_and_admission_is_fifo() -> None:
    sched = Scheduler(CFG)  # max_running 4
    seqs = [seq_of(words(3, f"s{i}-"), max_tokens=2) for i in range(7)]
    for s in seqs:
        sched.add(s)
    plan = sched.begin_step(0.0)
    assert plan is not None
    assert list(plan.batch) == seqs[:4]
    assert len(sched.waiting) == 3
    sched.end_step(plan, 0.1)
    plan = sched.begin_step(0.1)
    assert plan is not None
    assert plan.admitted == ()
    sched.end_step(plan, 0.2)  # the first four finish
    plan = sched.begin_step(0.2)
    assert plan is not None
    assert list(plan.admitted) == seqs[4:]
    run_to_end(sched)
    assert sched.finished == 7


def test_a_cached_prefix_costs_no_prefill() -> None:
    sched = Scheduler(CFG)
    system = words(40, "sys")
    first = seq_of([*system, "q1 "])
    sched.add(first)
    plan = sched.begin_step(0.0)
    assert plan is not None
    assert plan.prefill_tokens == 41
    run_to_end(sched)
    second = seq_of([*system, "q2 "])
    sched.add(second)
    plan = sched.begin_step(10.0)
    assert plan is not None
    assert second.cached_tokens == 40
    assert plan.prefill_tokens == 1
    assert plan.seconds < sched.step_seconds(1, 41)
    # An identical, block-aligned prompt still computes its last block (its last token).
    third = seq_of(system)
    sched.add(third)
    run_to_end(sched)
    assert third.cached_tokens == 36
    assert sched.prefix_cache_queries == 41 + 41 + 40
    assert sched.prefix_cache_hits == 40 + 36


def test_prompts_admitted_in_one_step_share_their_prefix() -> None:
    # Like vLLM, blocks are cached when allocated: a later prompt of the same step hits them.
    sched = Scheduler(CFG)
    system = words(20, "sys")
    sched.add(seq_of([*system, "q1 "]))
    sched.add(seq_of([*system, "q2 "]))
    plan = sched.begin_step(0.0)
    assert plan is not None
    assert [s.cached_tokens for s in plan.admitted] == [0, 20]
    assert plan.prefill_tokens == 21 + 1
    # Each knows the prefill its step cost (what its time to first token waited for).
    assert [s.step_prefill_tokens for s in plan.admitted] == [22, 22]


def test_a_diverging_prompt_hits_only_the_shared_leading_blocks() -> None:
    sched = Scheduler(CFG)
    base = words(24)
    sched.add(seq_of(base))
    run_to_end(sched)
    fork = base[:10] + words(14, "z")  # blocks 0 and 1 shared, block 2 differs from token 10
    late = words(4, "y") + base[4:]  # block 0 differs: nothing hits, though later tokens match
    sched.add(seq_of(fork))
    sched.add(seq_of(late))
    plan = sched.begin_step(0.0)
    assert plan is not None
    assert [s.cached_tokens for s in plan.admitted] == [8, 0]


def test_cancel_frees_the_slot_and_the_blocks() -> None:
    sched = Scheduler(dataclasses.replace(CFG, max_running=1))
    a, b = seq_of(words(9), max_tokens=100), seq_of(words(9, "b"), max_tokens=1)
    sched.add(a)
    sched.add(b)
    plan = sched.begin_step(0.0)
    assert plan is not None
    assert plan.batch == (a,)
    sched.cancel(a)  # the caller left during the step
    assert sched.end_step(plan, 0.1) == []
    assert a.state is SeqState.CANCELLED
    assert a.generated == 0
    assert sched.cache.used_blocks == 0
    plan = sched.begin_step(0.1)
    assert plan is not None
    assert plan.batch == (b,)
    sched.cancel(a)  # twice is harmless
    assert sched.cancelled == 1


def test_a_step_admits_prefill_up_to_its_token_budget() -> None:
    sched = Scheduler(dataclasses.replace(CFG, max_prefill_tokens=100, kv_blocks=512))
    for i in range(3):
        sched.add(seq_of(words(60, f"p{i}-")))
    big = seq_of(words(300, "big"))
    sched.add(big)
    counts = []
    while (plan := sched.begin_step(0.0)) is not None:
        counts.append(len(plan.admitted))
        sched.end_step(plan, 0.0)
    # One 60-token prompt per step (two would be 120 > 100); the 300-token one goes alone.
    assert counts[:4] == [1, 1, 1, 1]
    assert big.state is SeqState.FINISHED


def test_kv_capacity_limits_admission() -> None:
    cfg = dataclasses.replace(CFG, kv_blocks=10, max_running=8)
    sched = Scheduler(cfg)
    a = seq_of(words(16, "a"), max_tokens=8)  # 6 blocks
    b = seq_of(words(16, "b"), max_tokens=8)
    sched.add(a)
    sched.add(b)
    plan = sched.begin_step(0.0)
    assert plan is not None
    assert plan.batch == (a,)
    while a.state is SeqState.RUNNING:
        plan = sched.begin_step(0.0)
        assert plan is not None
        sched.end_step(plan, 0.0)
    plan = sched.begin_step(1.0)
    assert plan is not None
    assert plan.batch == (b,)
    assert sched.kv_usage == pytest.approx(6 / 10)
    with pytest.raises(ValueError, match="context"):
        sched.add(seq_of(words(40, "c"), max_tokens=1))


def test_the_waiting_queue_has_a_cap() -> None:
    sched = Scheduler(dataclasses.replace(CFG, max_waiting=2))
    sched.add(seq_of(words(2)))
    sched.add(seq_of(words(2)))
    with pytest.raises(QueueFull):
        sched.add(seq_of(words(2)))


# --- config and bodies ----------------------------------------------------------------------


def test_config_flags_come_from_the_fields() -> None:
    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    cfg = config_from_args(parser.parse_args(["--speed", "0.25", "--kv-blocks", "100"]))
    assert cfg == EngineConfig(speed=0.25, kv_blocks=100)
    with pytest.raises(ConfigError, match="speed"):
        EngineConfig(speed=0)
    with pytest.raises(ConfigError, match="max_running"):
        EngineConfig(max_running=0)


def test_bodies_are_read_like_an_engine_does() -> None:
    job = chat_job(
        {
            "model": "anything",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ],
            "max_completion_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        64,
    )
    assert job.prompt == "<|system|>\nsys\n<|user|>\nhi\n<|assistant|>\n"
    assert (job.max_tokens, job.explicit_max, job.stream, job.include_usage) == (
        5,
        True,
        True,
        True,
    )
    assert completion_job({"prompt": ["one"]}, 7).max_tokens == 7
    assert not completion_job({"prompt": "one"}, 7).explicit_max
    gen = generate_job({"text": "t", "sampling_params": {"max_new_tokens": 3}, "stream": True}, 9)
    assert (gen.prompt, gen.max_tokens, gen.stream) == ("t", 3, True)
    bad_bodies: list[tuple[Callable[[object, int], Job], object]] = [
        (chat_job, {"messages": []}),
        (chat_job, {"messages": [{"content": "x"}]}),
        (chat_job, {"messages": [{"role": "u", "content": 3}]}),
        (completion_job, {"prompt": ["a", "b"]}),
        (completion_job, {"prompt": "a", "max_tokens": 0}),
        (completion_job, {"prompt": "a", "n": 2}),
        (generate_job, {"text": ["a"]}),
        (generate_job, []),
    ]
    for parse, body in bad_bodies:
        with pytest.raises(BadRequest):
            parse(body, 1)
