"""CPU of the router's prefix path per request, in-process (a script, not a test).

What ``router/proxy.py`` and ``policies/prefix.py`` do for each LLM request before it is
sent: read the prompt from the body (``prompt_text``), cut and hash its blocks
(``prompt_blocks``), look it up and record it (``Prefix.choose``), on the workload of
``benchmarks/llm_routing.py`` (16 tenants, 1,500-word system prompts, 60-word user
messages, 48 in flight over 4 equal upstreams). Prints the process CPU per request, the
least and the median of five passes over 1,500 requests::

    .venv/bin/python benchmarks/llm_prefix_cost.py
    PYTHONPATH=/tmp/other/src .venv/bin/python benchmarks/llm_prefix_cost.py   # A/B
"""

from __future__ import annotations

import json
import random
import time

from gpufleet.router.policies import make_policy
from gpufleet.router.pool import Pool
from gpufleet.router.prefix import prompt_blocks, prompt_text
from gpufleet.router.upstream import READY, Upstream


def main() -> None:
    rng = random.Random(1)
    words = [f"w{i}" for i in range(5000)]
    systems = [" ".join(rng.choice(words) for _ in range(1500)) for _ in range(16)]
    bodies = []
    for _ in range(2000):
        user = " ".join(rng.choice(words) for _ in range(60))
        messages = [
            {"role": "system", "content": systems[rng.randrange(16)]},
            {"role": "user", "content": user},
        ]
        request = {"model": "m", "messages": messages, "stream": True, "max_tokens": 32}
        bodies.append(json.dumps(request).encode())
    pool = Pool("default")
    for i in range(4):
        u = Upstream(f"w{i}", f"http://h{i}", max_outstanding=64)
        u.state = READY
        u.served = 1
        u.latencies.append(0.5)
        pool.members.append(u)
    pool.refresh()
    policy = make_policy("prefix", pool, random.Random(3))
    sent: list[Upstream] = []

    def one(body: bytes) -> None:
        text = prompt_text("/v1/chat/completions", body)
        assert text is not None
        choice = policy.choose(pool.ready, None, 1, 0.0, prompt_blocks(text))
        assert isinstance(choice, Upstream)
        choice.take()
        sent.append(choice)
        if len(sent) > 48:
            sent.pop(0).give_back(0.5)

    for body in bodies[:500]:
        one(body)
    passes = []
    for _ in range(5):
        t0 = time.process_time()
        for body in bodies[500:]:
            one(body)
        passes.append((time.process_time() - t0) / 1500 * 1e6)
    passes.sort()
    print(f"prefix path CPU per request: least {passes[0]:.0f} µs, median {passes[2]:.0f} µs")


if __name__ == "__main__":
    main()
