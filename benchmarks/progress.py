"""Progress with an ETA for the benchmarks: a rich bar on a terminal, plain lines otherwise.

    with Steps("edge benchmark", total=21) as steps:
        for point in points:
            measure(point)
            steps.advance(note=f"{point} done")

    for codec in track(codecs, "codecs"):
        ...

The time left is elapsed / done x left, over the whole run so far (rich's own estimate looks
at the last 30 s only, and a benchmark's steps are often longer than that). Everything goes to
stderr, so stdout keeps the tables. On a terminal the bar redraws only when a step ends or
something prints, from the caller's thread: no refresh thread runs while a benchmark measures.
Elsewhere (a log file, CI, the logs ``benchmarks.report`` writes) it prints one line per step,
at most one every ``every_s`` seconds (the last step always).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

__all__ = ["Steps", "track", "clock", "remaining_s"]

T = TypeVar("T")


def clock(seconds: float) -> str:
    """``M:SS``, or ``H:MM:SS`` from an hour on."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def remaining_s(elapsed: float, done: float, total: float) -> float | None:
    """Seconds left if the rest goes at the mean pace so far; None before the first step."""
    if done <= 0 or total <= 0:
        return None
    return max(0.0, elapsed / done * (total - done))


class _Left(ProgressColumn):
    """``~M:SS left`` from the mean pace of the whole run so far."""

    def render(self, task: Task) -> Text:
        left = remaining_s(task.elapsed or 0.0, task.completed, task.total or 0.0)
        return Text("~-:-- left" if left is None else f"~{clock(left)} left",
                    style="progress.remaining")


class Steps:
    """A progress display of ``total`` steps; ``advance()`` after each. A context manager.

    ``enabled=False`` shows nothing (a function that reports progress, called quietly).
    """

    def __init__(self, description: str, total: float, *, stream: IO[str] | None = None,
                 every_s: float = 10.0, enabled: bool = True) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0 steps, got {total}")
        self.description, self.total, self.every_s = description, float(total), every_s
        self.done = 0.0
        self.started = time.monotonic()
        self._console = Console(file=stream or sys.stderr)
        self.enabled = enabled
        self._last_line = float("-inf")
        self._bar: Progress | None = None
        if enabled and self._console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.completed:g}/{task.total:g}"), TimeElapsedColumn(), _Left(),
                TextColumn("{task.fields[note]}"), console=self._console, auto_refresh=False,
                # stdout into a file stays there; on a terminal it prints above the bar
                redirect_stdout=sys.stdout.isatty())
            self._task = self._bar.add_task(description, total=self.total, note="")
            self._bar.start()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def advance(self, n: float = 1.0, note: str = "") -> None:
        """``n`` more steps done; ``note`` says what the last one was."""
        self.done = min(self.total, self.done + n)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, note=note, refresh=True)
            return
        now = time.monotonic()
        if self.enabled and (self.done >= self.total or now - self._last_line >= self.every_s):
            self._last_line = now
            self._console.print(self.line(note), highlight=False, markup=False,
                                soft_wrap=True)

    def grow(self, n: float) -> None:
        """``n`` more steps than announced (fewer when negative): a count learnt on the way."""
        self.total = max(self.done, self.total + n)
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def line(self, note: str = "") -> str:
        """The plain progress line: steps, percent, elapsed, time left, note."""
        left = remaining_s(self.elapsed, self.done, self.total)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.description}: {self.done:g}/{self.total:g} ({pct:.0f}%), "
                f"{clock(self.elapsed)} elapsed, "
                + ("time left unknown" if left is None else f"~{clock(left)} left")
                + (f": {note}" if note else ""))

    def close(self) -> None:
        """End the display (the bar stays on screen with its last state). Safe twice."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def track(items: Iterable[T], description: str, total: float | None = None, *,
          label: Callable[[T], str] | None = None, stream: IO[str] | None = None,
          every_s: float = 10.0) -> Iterator[T]:
    """Yield ``items``, one step each (``total`` defaults to ``len(items)``); ``label(item)``
    is the note shown once that item is done."""
    if total is None:
        items = list(items)
        total = len(items)
    with Steps(description, total, stream=stream, every_s=every_s) as steps:
        for item in items:
            yield item
            steps.advance(note=label(item) if label else "")
