"""The client's view of one endpoint: slots, health, cool-down and measured speed."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("gpufleet.client")

#: Weight of the newest latency sample in the moving average.
_EWMA_ALPHA = 0.2


def _grow_after(limit: int) -> int:
    # Growing costs a "busy" answer and a Retry-After pause when the server is still
    # full, so try it rarely: the cap is usually right for the rest of the job.
    return max(50, 10 * limit)


def merge_endpoints(urls: list[str] | tuple[str, ...]) -> list[str]:
    """Normalise URLs (no trailing ``/``) and drop duplicates, warning about each."""
    seen: dict[str, None] = {}
    for url in urls:
        norm = url.strip().rstrip("/")
        if not norm:
            continue
        if norm in seen:
            log.warning("endpoint %s is listed more than once; using it once", norm)
            continue
        seen[norm] = None
    return list(seen)


@dataclass(slots=True)
class Endpoint:
    """State of one endpoint during a job (owned by the dispatcher, read by progress)."""

    url: str
    index: int
    slots: int
    #: In-flight cap below ``slots`` learnt from "busy" answers (None: no cap).
    limit: int | None = None
    #: Successes since the cap last changed (it grows by one after ``_GROW_AFTER(limit)``).
    since_limit: int = 0
    served: int = 0
    failed_attempts: int = 0
    in_flight: int = 0
    consecutive_failures: int = 0
    #: How many cool-downs in a row (the next one lasts ``base * 2**cooldowns``).
    cooldowns: int = 0
    #: Cooling down until this time; then a /health probe must pass before new items.
    cooldown_until: float = 0.0
    needs_probe: bool = False
    probing: bool = False
    #: ``Retry-After`` from the endpoint: take nothing before this time.
    paused_until: float = 0.0
    #: Moving average of successful request durations (None until the first success).
    latency_s: float | None = None
    busy_s: float = 0.0
    last_error: str | None = None
    #: False where the owner sets ``slots`` from a capacity it knows (the batch runner's
    #: pool): a "busy" answer then pauses the endpoint without lowering its cap.
    learns_cap: bool = True

    def is_usable(self, now: float) -> bool:
        """True when the endpoint may take items now (not cooling, probing or paused)."""
        return not self.needs_probe and not self.probing and self.paused_until <= now

    def has_room(self) -> bool:
        """True when another request may be sent (under ``slots`` and the learnt cap)."""
        return self.in_flight < (self.limit or self.slots)

    def record_busy(self, now: float, wait_s: float) -> None:
        """The endpoint answered "full, come back in ``wait_s``": pause, and send less.

        The requests it accepted are the ones still in flight, so the cap becomes that
        many; it grows back one at a time after long runs of answers.
        """
        self.failed_attempts += 1
        self.paused_until = max(self.paused_until, now + wait_s)
        accepted = max(1, self.in_flight - 1)
        if self.learns_cap and accepted < (self.limit or self.slots):
            self.limit = accepted
            self.since_limit = 0
            log.info(
                "endpoint %s is full at %d in flight; sending at most that", self.url, accepted
            )

    def is_reachable(self) -> bool:
        """False while cooling down or waiting for a probe (a pause is not being down)."""
        return not self.needs_probe and not self.probing

    @property
    def state(self) -> str:
        """``up``, ``cooling`` or ``probing``."""
        if self.probing:
            return "probing"
        return "cooling" if self.needs_probe else "up"

    @property
    def rate(self) -> float | None:
        """Items per second this endpoint delivers with every slot busy (measured)."""
        if not self.latency_s:
            return None
        return self.slots / self.latency_s

    def record_success(self, seconds: float) -> None:
        """Count a served item and fold its duration into the moving average."""
        self.served += 1
        self.busy_s += seconds
        if self.limit is not None:
            self.since_limit += 1
            if self.since_limit >= _grow_after(self.limit):
                self.limit = None if self.limit + 1 >= self.slots else self.limit + 1
                self.since_limit = 0
        self.consecutive_failures = 0
        self.cooldowns = 0
        self.last_error = None
        if self.latency_s is None:
            self.latency_s = seconds
        else:
            self.latency_s += _EWMA_ALPHA * (seconds - self.latency_s)

    def record_failure(
        self, error: str, now: float, *, threshold: int, base_s: float, max_s: float
    ) -> bool:
        """Count a failed attempt; cool down after ``threshold`` in a row (returns True then)."""
        self.failed_attempts += 1
        self.consecutive_failures += 1
        self.last_error = error
        if self.consecutive_failures < threshold or self.needs_probe:
            return False
        wait = min(base_s * (2**self.cooldowns), max_s)
        self.cooldowns += 1
        self.cooldown_until = now + wait
        self.needs_probe = True
        log.warning(
            "endpoint %s failed %d times in a row (%s); cooling down for %.1fs",
            self.url,
            self.consecutive_failures,
            error,
            wait,
        )
        return True

    def record_probe(self, ok: bool, now: float, *, base_s: float, max_s: float) -> None:
        """Re-admit after a passing probe, else cool down again for twice as long."""
        self.probing = False
        if ok:
            self.needs_probe = False
            self.consecutive_failures = 0
            log.warning("endpoint %s is back; it takes items again", self.url)
            return
        wait = min(base_s * (2**self.cooldowns), max_s)
        self.cooldowns += 1
        self.cooldown_until = now + wait
        log.warning("%s still down (%s); next probe in %.1fs", self.url, self.last_error, wait)
