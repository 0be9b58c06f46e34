"""Live estimates of the link and of the device's speed from the client's own traffic, and when
either moved enough to re-plan.

Every answer from an edge carries the edge's own time (``StageTiming``); the round trip minus
that is time on the network, ``rtt + bytes * 8 / bandwidth``. Small messages (background
``Probe`` echoes of a few bytes, tiny requests) measure the RTT; large ones, with the current RTT
taken out, measure the bandwidth. Each estimate is the median of the last ``window`` samples:
robust to the odd outlier (a GC pause, a retransmit) and it follows a real change within
about half a window, where an EWMA would either lag or jitter.

``moved(since)`` is the hysteresis: it says the link changed only when the bandwidth moved by
more than ``bandwidth_ratio`` times or the RTT by more than ``rtt_ratio`` (and ``rtt_floor_s``),
so a plan does not flap on noise.

``DeviceSpeed`` does the same for the device: every piece of device work a request does (head +
encode + building the request, or the whole model) is timed and compared with what the device
profile predicted for it; the median ratio of the last ``window`` says how much slower (> 1) or
faster the device runs now than when it was profiled (a thermal limit, another app, a busy
core), and the plan is made for ``profile.scaled(factor)``.
"""

from __future__ import annotations

import statistics
from collections import deque

from splitinfer.core.link import Link

__all__ = ["DeviceSpeed", "LinkEstimator"]

#: a sample whose transfer part (time beyond the RTT) is below this fraction says nothing
#: reliable about bandwidth; it is used as an RTT sample instead if the message was small
_MIN_TRANSFER_FRACTION = 0.2
_SMALL_BYTES = 4096


class LinkEstimator:
    """Median-of-window estimates of RTT and bandwidth, seeded with a measured link."""

    def __init__(self, initial: Link, *, window: int = 5, bandwidth_ratio: float = 1.5,
                 rtt_ratio: float = 1.3, rtt_floor_s: float = 0.005) -> None:
        if window < 1:
            raise ValueError(f"window is {window}; expected >= 1")
        if bandwidth_ratio <= 1 or rtt_ratio <= 1:
            raise ValueError(f"bandwidth_ratio {bandwidth_ratio} and rtt_ratio {rtt_ratio} must "
                             f"be > 1 (they are how much the link must move to count)")
        self._rtts: deque[float] = deque([initial.rtt_s], maxlen=window)
        self._bws: deque[float] = deque([initial.bandwidth_bps], maxlen=window)
        self.bandwidth_ratio, self.rtt_ratio, self.rtt_floor_s = (
            bandwidth_ratio, rtt_ratio, rtt_floor_s)
        self.samples = 0

    @property
    def link(self) -> Link:
        return Link(rtt_s=statistics.median(self._rtts),
                    bandwidth_bps=statistics.median(self._bws))

    def add_rtt(self, seconds: float) -> None:
        """A small message's network round trip (e.g. a Probe echo of a few bytes)."""
        if seconds >= 0:
            self._rtts.append(seconds)
            self.samples += 1

    def add_transfer(self, nbytes: int, seconds: float) -> None:
        """A request/response pair: ``nbytes`` both ways together, ``seconds`` on the network."""
        if seconds <= 0 or nbytes < 0:
            return
        rtt = statistics.median(self._rtts)
        transfer = seconds - rtt
        if transfer >= _MIN_TRANSFER_FRACTION * seconds and nbytes > 0:
            self._bws.append(nbytes * 8 / transfer)
            self.samples += 1
        elif nbytes <= _SMALL_BYTES:
            self.add_rtt(seconds)
        else:
            # too fast to time the transfer: the link is at least this fast. Only a bound
            # above the estimate says something (the link got faster than we thought).
            floor = nbytes * 8 / (_MIN_TRANSFER_FRACTION * seconds)
            if floor > statistics.median(self._bws):
                self._bws.append(floor)
                self.samples += 1

    def moved(self, since: Link) -> bool:
        """Has the link moved enough from ``since`` (the link the plan in force was made for)?"""
        now = self.link
        bw = now.bandwidth_bps / since.bandwidth_bps
        if bw > self.bandwidth_ratio or bw < 1 / self.bandwidth_ratio:
            return True
        drtt = abs(now.rtt_s - since.rtt_s)
        return drtt > self.rtt_floor_s and drtt > (self.rtt_ratio - 1) * since.rtt_s


class DeviceSpeed:
    """Median-of-window ratio of the device's measured work to its profile's prediction."""

    #: device work predicted below this is not timed against its profile: a few hundred
    #: microseconds are mostly call overhead and timer noise, not the device's speed
    MIN_EXPECTED_S = 0.001

    def __init__(self, *, window: int = 9, ratio: float = 1.25) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window is {window!r}; expected an int >= 1")
        if not ratio > 1:
            raise ValueError(f"ratio is {ratio!r}; expected > 1 (how much the speed must move "
                             f"to count)")
        self._ratios: deque[float] = deque(maxlen=window)
        self.ratio = ratio
        self.samples = 0

    @property
    def min_samples(self) -> int:
        """Samples before the estimate says anything: half a window, so that a few odd ones
        cannot re-plan."""
        return (self._ratios.maxlen or 1) // 2 + 1

    @property
    def factor(self) -> float:
        """How many times slower than its profile the device runs now (> 1 slower; 1.0 until
        ``min_samples`` are in)."""
        if len(self._ratios) < self.min_samples:
            return 1.0
        return statistics.median(self._ratios)

    def add(self, measured_s: float, expected_s: float | None) -> None:
        """One piece of device work: ``measured_s`` it took, ``expected_s`` the profile said
        (None or too small to time: ignored)."""
        if expected_s is None or not expected_s >= self.MIN_EXPECTED_S or not measured_s > 0:
            return
        self._ratios.append(measured_s / expected_s)
        self.samples += 1

    def moved(self, since: float) -> bool:
        """Has the speed moved more than ``ratio`` times from ``since`` (the factor the plan in
        force was made with)?"""
        r = self.factor / since
        return r > self.ratio or r < 1 / self.ratio
