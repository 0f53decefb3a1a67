"""How a bulk job reports progress: a live bar on a terminal, plain lines anywhere else.

``RichProgress`` draws a bar with the rate, the ETA and one line per endpoint (state,
items served, items per second). ``PlainProgress`` writes one line every few seconds
(and a last one), which reads well in CI logs and ``nohup`` files.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from gpufleet.client.endpoints import Endpoint
from gpufleet.client.items import Result


class Progress(Protocol):
    """Receives a job's start, each finished item, and the summary."""

    def start(self, total: int, skipped: int, endpoints: list[Endpoint]) -> None: ...

    def advance(self, result: Result) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """Reports nothing (the library default)."""

    def start(self, total: int, skipped: int, endpoints: list[Endpoint]) -> None:
        """Do nothing."""

    def advance(self, result: Result) -> None:
        """Do nothing."""

    def finish(self, summary: dict[str, Any]) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


class _Counts:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.total = self.skipped = self.ok = self.failed = 0
        self.endpoints: list[Endpoint] = []
        self.t0 = clock()

    def begin(self, total: int, skipped: int, endpoints: list[Endpoint]) -> None:
        self.total, self.skipped, self.endpoints = total, skipped, endpoints
        self.t0 = self.clock()

    def count(self, result: Result) -> None:
        if result.ok:
            self.ok += 1
        else:
            self.failed += 1

    @property
    def finished(self) -> int:
        return self.skipped + self.ok + self.failed

    def rate(self) -> float:
        elapsed = self.clock() - self.t0
        return (self.ok + self.failed) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> str:
        rate, left = self.rate(), self.total - self.finished
        if left <= 0:
            return "0s"
        return f"{left / rate:.0f}s" if rate > 0 else "?"

    def per_endpoint(self) -> str:
        elapsed = max(self.clock() - self.t0, 1e-9)
        parts = []
        for ep in self.endpoints:
            state = "" if ep.state == "up" else f" {ep.state}"
            parts.append(f"{_short(ep.url)} {ep.served} ({ep.served / elapsed:.1f}/s){state}")
        return " | ".join(parts)


def _short(url: str) -> str:
    return url.split("://", 1)[-1]


class PlainProgress:
    """One line every ``every_s`` seconds and one at the end."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream or sys.stderr
        self._every = every_s
        self._counts = _Counts(clock)
        self._next = 0.0

    def start(self, total: int, skipped: int, endpoints: list[Endpoint]) -> None:
        """Print what the job is about to do."""
        self._counts.begin(total, skipped, endpoints)
        self._next = self._counts.clock() + self._every
        done = f", {skipped} already done" if skipped else ""
        self._line(f"{total} item(s){done}, {len(endpoints)} endpoint(s)")

    def advance(self, result: Result) -> None:
        """Count an item; print a line when ``every_s`` has passed."""
        self._counts.count(result)
        if result.status == "failed":
            self._line(f"item {result.id} failed: {result.error}")
        if self._counts.clock() >= self._next:
            self._next = self._counts.clock() + self._every
            self._line(self._status())

    def finish(self, summary: dict[str, Any]) -> None:
        """Print the last line."""
        self._line(
            f"done: {summary['succeeded']} ok, {summary['failed']} failed, "
            f"{summary['skipped']} skipped in {summary['wall_s']:.1f}s "
            f"({summary['throughput_items_per_s']:.2f} items/s) | {self._counts.per_endpoint()}"
        )

    def close(self) -> None:
        """Nothing to release."""

    def _status(self) -> str:
        c = self._counts
        pct = 100 * c.finished / c.total if c.total else 100.0
        failed = f", {c.failed} failed" if c.failed else ""
        return (
            f"{c.finished}/{c.total} ({pct:.0f}%){failed} {c.rate():.2f} items/s "
            f"ETA {c.eta()} | {c.per_endpoint()}"
        )

    def _line(self, text: str) -> None:
        print(f"gpufleet generate: {text}", file=self._stream, flush=True)


class RichProgress:
    """A live bar with rate, ETA and per-endpoint rates (for terminals)."""

    def __init__(self, console: Any | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._counts = _Counts(time.monotonic)
        self._live: Any = None
        self._bar: Any = None
        self._task: Any = None

    def start(self, total: int, skipped: int, endpoints: list[Endpoint]) -> None:
        """Start drawing."""
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self._counts.begin(total, skipped, endpoints)
        self._bar = Bar(
            TextColumn("[bold]generate"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._task = self._bar.add_task("generate", total=total, completed=skipped, rate="")
        self._live = Live(self._render(), console=self.console, refresh_per_second=4)
        self._live.start()

    def advance(self, result: Result) -> None:
        """Move the bar; failed items are printed above it."""
        self._counts.count(result)
        if not result.ok:
            self.console.print(f"[red]item {result.id} failed:[/red] {result.error}")
        rate = f"{self._counts.rate():.2f} items/s"
        self._bar.update(self._task, completed=self._counts.finished, rate=rate)
        self._live.update(self._render())

    def finish(self, summary: dict[str, Any]) -> None:
        """Stop drawing and print the totals."""
        if self._live is not None:
            self._live.update(self._render())
        self.close()
        ok = "[green]success[/green]" if summary["success"] else "[red]failed items[/red]"
        self.console.print(
            f"{ok}: {summary['succeeded']} ok, {summary['failed']} failed, "
            f"{summary['skipped']} skipped in {summary['wall_s']:.1f}s "
            f"({summary['throughput_items_per_s']:.2f} items/s)"
        )

    def close(self) -> None:
        """Stop drawing (also when the job was interrupted), giving the cursor back."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        lines = [Text(f"  {line}") for line in self._counts.per_endpoint().split(" | ")]
        return Group(self._bar, *lines)
