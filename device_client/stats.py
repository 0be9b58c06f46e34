"""What the client counts: where each request was answered, latencies, bytes, plans, shadows.

Every request ends in exactly one of ``answered_by_edge``, ``local_fallbacks``, ``device_only``
(the plan in force ran everything here), ``errors`` or ``cancelled`` (a stream the caller
stopped reading); until then it is ``in_flight``. So ``requests == answered_by_edge +
local_fallbacks + device_only + errors + cancelled + in_flight`` always,
which is how tests check that nothing was lost or answered twice.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from splitinfer.core.link import Link

__all__ = ["ClientStats", "EdgeStats", "ShadowStats", "StatsRecorder"]

_LATENCY_WINDOW = 1000


@dataclass(frozen=True)
class EdgeStats:
    address: str
    requests: int
    ok: int
    failures: int
    breaker: str
    breaker_opened: int
    last_error: str
    incompatible: str


@dataclass(frozen=True)
class ShadowStats:
    """Split answers checked against a full local run (``shadow_rate``): their divergence."""

    checks: int = 0
    skipped: int = 0                     # due, but the device was still busy with the last one
    max_abs_error: float = 0.0           # worst over all checks
    mean_max_abs_error: float = 0.0      # mean over checks of each check's max abs error
    top1_checks: int = 0                 # checks whose output looked like class scores
    top1_agreement: float | None = None  # fraction of rows with the same arg-max


@dataclass(frozen=True)
class ClientStats:
    requests: int
    in_flight: int
    answered_by_edge: int
    local_fallbacks: int
    device_only: int
    errors: int
    cancelled: int
    retries: int
    fallback_reasons: Mapping[str, int]
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_mean_s: float | None
    bytes_sent: int
    bytes_received: int
    replans: int
    plan_switches: int
    link: Link | None
    cut_id: int | None
    codec: str | None
    edges: tuple[EdgeStats, ...]
    shadow: ShadowStats = field(default_factory=ShadowStats)
    # the device's speed against its profile now: > 1 slower (DeviceSpeed; 1.0 untracked)
    device_speed: float = 1.0


class StatsRecorder:
    """Mutable counters behind ``ClientStats``; thread-safe (the sync client reads from another
    thread than the one that counts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = self.in_flight = self.answered_by_edge = self.local_fallbacks = 0
        self.device_only = self.errors = self.cancelled = self.retries = 0
        self.bytes_sent = self.bytes_received = self.replans = self.plan_switches = 0
        self.fallback_reasons: dict[str, int] = {}
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._shadow_counts = {"checks": 0, "skipped": 0, "top1_rows": 0, "top1_agree": 0,
                               "top1_checks": 0}
        self._shadow_errors = {"max": 0.0, "sum": 0.0}

    def started(self) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1

    def finished(self, outcome: str, latency_s: float | None, reason: str = "") -> None:
        """``outcome``: "edge", "local", "device", "error" or "cancelled"."""
        with self._lock:
            self.in_flight -= 1
            if outcome == "edge":
                self.answered_by_edge += 1
            elif outcome == "local":
                self.local_fallbacks += 1
                self.fallback_reasons[reason] = self.fallback_reasons.get(reason, 0) + 1
            elif outcome == "device":
                self.device_only += 1
            elif outcome == "cancelled":
                self.cancelled += 1
            else:
                self.errors += 1
            if latency_s is not None and outcome not in ("error", "cancelled"):
                self._latencies.append(latency_s)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def shadow_skipped(self) -> None:
        with self._lock:
            self._shadow_counts["skipped"] += 1

    def shadow(self, remote: tuple[np.ndarray, ...], local: tuple[np.ndarray, ...]) -> None:
        """Record one shadow check: remote (split) answer vs the local full-precision one."""
        err = max((float(np.max(np.abs(r.astype(np.float64) - q.astype(np.float64))))
                   for r, q in zip(remote, local) if r.size and r.dtype.kind == "f"),
                  default=0.0)
        with self._lock:
            s, e = self._shadow_counts, self._shadow_errors
            s["checks"] += 1
            e["max"] = max(e["max"], err)
            e["sum"] += err
            first_r, first_l = remote[0], local[0]
            if first_r.ndim == 2 and first_r.shape[1] > 1 and first_r.dtype.kind == "f":
                s["top1_checks"] += 1
                s["top1_rows"] += first_r.shape[0]
                s["top1_agree"] += int(np.sum(first_r.argmax(1) == first_l.argmax(1)))

    def snapshot(self, *, link: Link | None, cut_id: int | None, codec: str | None,
                 edges: tuple[EdgeStats, ...], device_speed: float = 1.0) -> ClientStats:
        with self._lock:
            lat = np.array(self._latencies) if self._latencies else None
            s, e = self._shadow_counts, self._shadow_errors
            shadow = ShadowStats(
                checks=s["checks"], skipped=s["skipped"], max_abs_error=e["max"],
                mean_max_abs_error=e["sum"] / s["checks"] if s["checks"] else 0.0,
                top1_checks=s["top1_checks"],
                top1_agreement=s["top1_agree"] / s["top1_rows"] if s["top1_rows"] else None)
            return ClientStats(
                requests=self.requests, in_flight=self.in_flight,
                answered_by_edge=self.answered_by_edge, local_fallbacks=self.local_fallbacks,
                device_only=self.device_only, errors=self.errors, cancelled=self.cancelled,
                retries=self.retries,
                fallback_reasons=dict(self.fallback_reasons),
                latency_p50_s=_pct(lat, 50), latency_p95_s=_pct(lat, 95),
                latency_mean_s=float(lat.mean()) if lat is not None else None,
                bytes_sent=self.bytes_sent, bytes_received=self.bytes_received,
                replans=self.replans, plan_switches=self.plan_switches, link=link,
                cut_id=cut_id, codec=codec, edges=edges, shadow=shadow,
                device_speed=device_speed)


def _pct(values: Any, q: float) -> float | None:
    return None if values is None else float(np.percentile(values, q))
