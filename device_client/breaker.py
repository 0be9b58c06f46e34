"""Circuit breaker per edge node: stop sending requests to an edge that keeps failing.

Closed: requests flow. After ``failures`` failures in a row it opens: no request goes to that
edge (they go to another edge or run locally at once instead of waiting for a timeout each).
The client probes an open edge in the background after ``reset_s``; a probe that answers moves
the breaker to half-open, where one request at a time is let through as a trial: its success
closes the breaker, its failure opens it again with twice the wait (up to ``max_reset_s``).
Pure state, no clock of its own beyond the one passed in, so tests can drive it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["BreakerPolicy", "CircuitBreaker", "CLOSED", "OPEN", "HALF_OPEN"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens (``failures`` in a row) and how long it waits before probing."""

    failures: int = 3
    reset_s: float = 1.0
    max_reset_s: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int) \
                or self.failures < 1:
            raise ValueError(f"BreakerPolicy.failures is {self.failures!r}; expected an int >= 1")
        if not 0 < self.reset_s <= self.max_reset_s:
            raise ValueError(f"BreakerPolicy: reset_s {self.reset_s!r} and max_reset_s "
                             f"{self.max_reset_s!r}; expected 0 < reset_s <= max_reset_s")


class CircuitBreaker:
    """State of one edge: ``allow()`` before a request, ``record_success/failure()`` after."""

    def __init__(self, policy: BreakerPolicy = BreakerPolicy(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self.state = CLOSED
        self.consecutive_failures = 0
        self.opened = 0          # how many times it opened (for stats)
        self.wait_s = policy.reset_s
        self.opened_at = 0.0
        self._trial = False      # half-open: a trial request is in flight

    def allow(self) -> bool:
        """May a request go to this edge now? In half-open, only one at a time (the trial)."""
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def probe_due(self) -> bool:
        """Open and waited long enough: time for a background probe."""
        return self.state == OPEN and self._clock() - self.opened_at >= self.wait_s

    def record_success(self) -> None:
        self.state, self.consecutive_failures, self._trial = CLOSED, 0, False
        self.wait_s = self.policy.reset_s

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.state == HALF_OPEN:  # the trial failed: wait longer before the next probe
            self._open(min(self.wait_s * 2, self.policy.max_reset_s))
        elif self.state == CLOSED and self.consecutive_failures >= self.policy.failures:
            self._open(self.policy.reset_s)

    def release_trial(self) -> None:
        """The half-open trial ended without a verdict (cancelled, or a request error that
        says nothing about the edge's health): let another request be the trial."""
        self._trial = False

    def force_open(self) -> None:
        """Open now (the edge is unreachable at connect, or refused our model)."""
        if self.state != OPEN:
            self._open(self.wait_s)

    def probe_succeeded(self) -> None:
        """A background probe answered: let one trial request through."""
        if self.state == OPEN:
            self.state, self._trial = HALF_OPEN, False

    def probe_failed(self) -> None:
        if self.state == OPEN:
            self._open(min(self.wait_s * 2, self.policy.max_reset_s))

    def _open(self, wait_s: float) -> None:
        if self.state != OPEN:
            self.opened += 1
        self.state, self._trial = OPEN, False
        self.wait_s, self.opened_at = wait_s, self._clock()
