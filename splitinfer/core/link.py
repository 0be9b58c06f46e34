"""The network link between device and edge as the planner sees it: round-trip time and bandwidth.

Pure values and arithmetic: ``Link`` is what the planner consumes, ``parse_rate``/``parse_duration``
read the human forms the CLI and configs use ("20mbit", "30ms"), and ``fit_link`` turns probe
measurements (bytes sent, seconds taken) into a ``Link``. Measuring is someone else's job.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

__all__ = ["Link", "parse_rate", "parse_duration", "fit_link", "bounded_link"]

_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]+)\s*$")


@dataclass(frozen=True)
class Link:
    """Round-trip time in seconds and bandwidth in bits per second, same both ways."""

    rtt_s: float
    bandwidth_bps: float

    def __post_init__(self) -> None:
        rtt, bw = _as_float(self.rtt_s, "rtt_s"), _as_float(self.bandwidth_bps, "bandwidth_bps")
        if not math.isfinite(rtt) or rtt < 0:
            raise ValueError(f"Link.rtt_s is {self.rtt_s!r}; expected a finite number of seconds "
                             f">= 0 (e.g. 0.03 for 30 ms)")
        if not math.isfinite(bw) or bw <= 0:
            raise ValueError(f"Link.bandwidth_bps is {self.bandwidth_bps!r}; expected a finite "
                             f"number of bits per second > 0 (e.g. 20e6 for 20 Mbit/s)")
        object.__setattr__(self, "rtt_s", rtt)
        object.__setattr__(self, "bandwidth_bps", bw)

    def transfer_s(self, nbytes: float) -> float:
        """Seconds to push ``nbytes`` through the link, serialization only (no RTT)."""
        if nbytes < 0:
            raise ValueError(f"transfer_s: nbytes is {nbytes!r}; expected >= 0")
        return nbytes * 8 / self.bandwidth_bps

    def to_json(self) -> dict[str, Any]:
        return {"rtt_s": self.rtt_s, "bandwidth_bps": self.bandwidth_bps}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Link":
        return cls(rtt_s=float(obj["rtt_s"]), bandwidth_bps=float(obj["bandwidth_bps"]))


def _as_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Link.{name} is {value!r}; expected a number")
    return float(value)


def _parse(text: object, units: dict[str, float], what: str, example: str) -> float:
    forms = ", ".join(units)
    match = _NUMBER_UNIT.match(text) if isinstance(text, str) else None
    unit = match.group(2).lower() if match else None
    if match is None or unit not in units:
        raise ValueError(f"cannot read {what} {text!r}; expected a number >= 0 followed by one of "
                         f"{forms} (e.g. {example!r})")
    value = float(match.group(1)) * units[unit]
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is not finite; expected e.g. {example!r}")
    return value


def parse_rate(text: str) -> float:
    """Bits per second from "20mbit", "1.5gbit", "800kbit" or "9600bit" (decimal prefixes)."""
    value = _parse(text, _RATE_UNITS, "rate", "20mbit")
    if value <= 0:
        raise ValueError(f"rate {text!r} is zero; a link needs a bandwidth > 0 (e.g. '20mbit')")
    return value


def parse_duration(text: str) -> float:
    """Seconds from "30ms", "250us" or "1.5s"."""
    return _parse(text, _DURATION_UNITS, "duration", "30ms")


def fit_link(samples: Iterable[tuple[float, float]]) -> Link:
    """Fit ``seconds = rtt + bytes * 8 / bandwidth`` to (bytes, seconds) probe samples.

    Probes over real networks have heavy-tailed outliers (a retransmit, a scheduler hiccup), so
    a plain least-squares fit would be dragged by them. We start from Theil–Sen (median of
    pairwise slopes: tolerates ~29% outliers), drop samples whose residual is more than 3.5 robust
    standard deviations (MAD) away, and refine with least squares on the rest, which is more
    precise than Theil–Sen once the outliers are gone.
    """
    data = np.asarray([(float(b), float(s)) for b, s in samples], dtype=np.float64)
    if data.ndim != 2 or len(data) < 2:
        raise ValueError(f"fit_link needs at least 2 (bytes, seconds) samples; got {len(data)}")
    if not np.all(np.isfinite(data)) or np.any(data < 0):
        raise ValueError("fit_link: samples must be finite (bytes, seconds) pairs >= 0")
    x, y = data[:, 0] * 8, data[:, 1]
    if np.unique(x).size < 2:
        raise ValueError("fit_link: all samples have the same size, so bandwidth cannot be told "
                         "from RTT; probe with at least two different payload sizes")
    slope, intercept = _theil_sen(x, y)
    residual = y - (intercept + slope * x)
    mad = float(np.median(np.abs(residual - np.median(residual))))
    # 1.4826 * MAD estimates the standard deviation under Gaussian noise
    keep = np.abs(residual) <= 3.5 * 1.4826 * mad if mad > 0 else np.abs(residual) <= 1e-12
    if np.unique(x[keep]).size >= 2:
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
    if not slope > 0:
        raise ValueError(f"fit_link: time does not grow with size (slope {slope:.3g} s/bit); "
                         f"probe with larger payloads so transfer time beats the noise")
    return Link(rtt_s=max(float(intercept), 0.0), bandwidth_bps=1.0 / float(slope))


def bounded_link(samples: Iterable[tuple[float, float]]) -> Link:
    """A link from (bytes, seconds) probes whose sizes made no measurable difference (where
    :func:`fit_link` finds no slope): the RTT is the smallest probes' median time, and the
    bandwidth a lower bound, the largest probe's extra bytes sent within the noise (the spread
    of the smallest probes' times, at least 0.1 ms)."""
    data = [(float(b), float(s)) for b, s in samples]
    small_size, large_size = min(b for b, _ in data), max(b for b, _ in data)
    if not large_size > small_size:
        raise ValueError("bounded_link needs probes of at least two different sizes")
    small = [s for b, s in data if b == small_size]
    large = [s for b, s in data if b == large_size]
    rtt = float(np.median(small))
    noise = max(float(np.median(large)) - rtt, max(small) - min(small), 1e-4)
    return Link(rtt_s=max(rtt, 0.0), bandwidth_bps=(large_size - small_size) * 8 / noise)


def _theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    ok = dx != 0
    slope = float(np.median((y[j] - y[i])[ok] / dx[ok]))
    return slope, float(np.median(y - slope * x))
