"""Link values, the rate/duration parsers, and the robust link fit from probe samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from splitinfer.core.link import Link, fit_link, parse_duration, parse_rate


@pytest.mark.parametrize("text, bps", [("20mbit", 20e6), ("1.5gbit", 1.5e9), ("800kbit", 8e5),
                                       ("9600bit", 9600.0), (" 10 MBit ", 1e7), ("1e3kbit", 1e6)])
def test_parse_rate_good(text, bps):
    assert parse_rate(text) == pytest.approx(bps, rel=1e-15)


@pytest.mark.parametrize("text", ["20", "mbit", "20mb", "20 mbps", "-1mbit", "0mbit", "", None,
                                  20, "1e400gbit"])
def test_parse_rate_bad_names_value_and_forms(text):
    with pytest.raises(ValueError) as e:
        parse_rate(text)
    msg = str(e.value)
    assert repr(text) in msg and ("mbit" in msg or "zero" in msg or "finite" in msg)


@pytest.mark.parametrize("text, s", [("30ms", 0.03), ("250us", 250e-6), ("1.5s", 1.5),
                                     ("0ms", 0.0), ("2 S", 2.0)])
def test_parse_duration_good(text, s):
    assert parse_duration(text) == pytest.approx(s, rel=1e-15)


@pytest.mark.parametrize("text", ["30", "30min", "ms", "-5ms", "30 m s", None])
def test_parse_duration_bad(text):
    with pytest.raises(ValueError, match="us, ms, s"):
        parse_duration(text)


def test_link_transfer_and_json():
    link = Link(rtt_s=0.03, bandwidth_bps=8e6)
    assert link.transfer_s(1_000_000) == 1.0
    assert link.transfer_s(0) == 0.0
    assert Link.from_json(link.to_json()) == link
    assert isinstance(Link(0, 10).rtt_s, float)


@pytest.mark.parametrize("rtt, bw, field", [(-0.001, 1e6, "rtt_s"), (math.nan, 1e6, "rtt_s"),
                                            (math.inf, 1e6, "rtt_s"), (0.01, 0, "bandwidth_bps"),
                                            (0.01, -5, "bandwidth_bps"),
                                            (0.01, math.inf, "bandwidth_bps"),
                                            (0.01, math.nan, "bandwidth_bps"),
                                            ("0.01", 1e6, "rtt_s")])
def test_link_rejects_bad_values(rtt, bw, field):
    with pytest.raises(ValueError, match=field):
        Link(rtt_s=rtt, bandwidth_bps=bw)


def test_transfer_rejects_negative_bytes():
    with pytest.raises(ValueError, match="nbytes"):
        Link(0.01, 1e6).transfer_s(-1)


def _samples(rtt, bw, n, jitter, outliers, seed):
    """Probes whose transfer times span 0..10 RTTs, with Gaussian jitter and a few stalls."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(100, max(int(10 * rtt * bw / 8), 200), size=n)
    times = rtt + sizes * 8 / bw + rng.normal(0, jitter * rtt, size=n)
    bad = rng.choice(n, size=outliers, replace=False)
    times[bad] += rng.uniform(2 * rtt, 20 * rtt, size=outliers)  # retransmits: always slower
    return list(zip(sizes.tolist(), times.tolist()))


@pytest.mark.parametrize("rtt, bw, seed", [(0.03, 20e6, 0), (0.1, 1e6, 1), (0.005, 1e9, 2),
                                           (0.25, 5e6, 3)])
def test_fit_link_recovers_rtt_and_bandwidth_despite_outliers(rtt, bw, seed):
    fitted = fit_link(_samples(rtt, bw, n=60, jitter=0.02, outliers=6, seed=seed))
    assert fitted.rtt_s == pytest.approx(rtt, rel=0.05)
    assert fitted.bandwidth_bps == pytest.approx(bw, rel=0.05)


def test_fit_link_exact_samples():
    fitted = fit_link([(b, 0.02 + b * 8 / 1e7) for b in (1000, 5000, 20000, 100000)])
    assert fitted.rtt_s == pytest.approx(0.02, rel=1e-9)
    assert fitted.bandwidth_bps == pytest.approx(1e7, rel=1e-9)


def test_fit_link_ignores_outliers_that_fool_least_squares():
    samples = _samples(0.03, 20e6, n=40, jitter=0.01, outliers=8, seed=7)
    x = np.array([s[0] * 8 for s in samples], float)
    slope, intercept = np.polyfit(x, np.array([s[1] for s in samples]), 1)
    assert abs(intercept - 0.03) / 0.03 > 0.05  # plain least squares is dragged by the stalls
    fitted = fit_link(samples)
    assert fitted.rtt_s == pytest.approx(0.03, rel=0.05)
    assert fitted.bandwidth_bps == pytest.approx(20e6, rel=0.05)


@pytest.mark.parametrize("samples, match", [([], "at least 2"), ([(1000, 0.1)], "at least 2"),
                                            ([(1000, 0.1), (1000, 0.2)], "different payload"),
                                            ([(1000, 0.2), (100000, 0.1)], "does not grow"),
                                            ([(1000, -0.1), (2000, 0.1)], "finite"),
                                            ([(1000, math.nan), (2000, 0.1)], "finite")])
def test_fit_link_rejects_unusable_samples(samples, match):
    with pytest.raises(ValueError, match=match):
        fit_link(samples)


def test_bounded_link_is_a_lower_bound_from_probes_lost_in_noise():
    from splitinfer.core.link import bounded_link

    samples = [(1024, 0.0020), (1024, 0.0022), (1 << 20, 0.0021), (1 << 20, 0.0019)]
    link = bounded_link(samples)
    assert link.rtt_s == pytest.approx(0.0021)
    # the largest probe's extra bytes within the smallest probes' spread (0.2 ms)
    assert link.bandwidth_bps == pytest.approx(((1 << 20) - 1024) * 8 / 0.0002)
    with pytest.raises(ValueError, match="two different sizes"):
        bounded_link([(4096, 0.001), (4096, 0.002)])
