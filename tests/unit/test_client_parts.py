"""The device client's pure parts: circuit breaker, link estimator, stats, plan, edge pool."""

from __future__ import annotations

import numpy as np
import pytest

from device_client.breaker import CLOSED, HALF_OPEN, OPEN, BreakerPolicy, CircuitBreaker
from device_client.estimator import LinkEstimator
from device_client.planning import make_plan, objective_of, profile_cut_ids
from device_client.stats import StatsRecorder
from splitinfer.core.errors import PlanningError
from splitinfer.core.link import Link
from splitinfer.core.planner import Constraints
from splitinfer.core.profiles import CodecCost, CutCost, DeviceProfile, EdgeProfile


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_consecutive_failures_and_probes_back():
    clock = Clock()
    b = CircuitBreaker(BreakerPolicy(failures=3, reset_s=1.0, max_reset_s=4.0), clock=clock)
    b.record_failure()
    b.record_failure()
    b.record_success()          # a success resets the count
    b.record_failure()
    b.record_failure()
    assert b.state == CLOSED and b.allow()
    b.record_failure()
    assert b.state == OPEN and not b.allow() and b.opened == 1
    assert not b.probe_due()
    clock.t = 1.0
    assert b.probe_due()
    b.probe_succeeded()
    assert b.state == HALF_OPEN
    assert b.allow() and not b.allow()   # one trial at a time
    b.record_failure()                   # the trial failed: open, twice as long
    assert b.state == OPEN and b.wait_s == 2.0
    clock.t = 3.0
    b.probe_failed()
    assert b.wait_s == 4.0               # capped at max_reset_s next time
    b.probe_failed()
    assert b.wait_s == 4.0
    b.probe_succeeded()
    assert b.allow()
    b.record_success()
    assert b.state == CLOSED and b.wait_s == 1.0


def test_breaker_trial_released_without_verdict():
    b = CircuitBreaker(BreakerPolicy(failures=1))
    b.record_failure()
    b.probe_succeeded()
    assert b.allow() and not b.allow()
    b.release_trial()
    assert b.allow()


@pytest.mark.parametrize("kwargs", [{"failures": 0}, {"reset_s": 0}, {"reset_s": 5,
                                                                      "max_reset_s": 1}])
def test_breaker_policy_checks_its_values(kwargs):
    with pytest.raises(ValueError, match="BreakerPolicy"):
        BreakerPolicy(**kwargs)


def test_estimator_uses_small_messages_for_rtt_and_bounds_for_fast_links():
    est = LinkEstimator(Link(rtt_s=0.05, bandwidth_bps=1e6))
    for _ in range(3):
        est.add_transfer(500, 0.01)      # tiny: an RTT sample
    assert est.link.rtt_s == pytest.approx(0.01)
    for _ in range(3):                   # 1 MB in 11 ms at 10 ms RTT: too fast to time, >= bound
        est.add_transfer(1_000_000, 0.0105)
    assert est.link.bandwidth_bps > 1e9
    assert est.moved(Link(rtt_s=0.05, bandwidth_bps=1e6))


def test_estimator_rejects_bad_settings():
    with pytest.raises(ValueError, match="window"):
        LinkEstimator(Link(0.01, 1e6), window=0)
    with pytest.raises(ValueError, match="must be > 1"):
        LinkEstimator(Link(0.01, 1e6), bandwidth_ratio=1.0)


def test_stats_balance_and_shadow_top1():
    s = StatsRecorder()
    for outcome in ("edge", "local", "device", "error", "cancelled"):
        s.started()
        s.finished(outcome, 0.01, "UNAVAILABLE" if outcome == "local" else "")
    s.started()
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], np.float32)
    other = np.array([[0.1, 0.8, 0.0], [0.1, 0.8, 0.1]], np.float32)
    s.shadow((logits,), (other,))
    snap = s.snapshot(link=None, cut_id=1, codec="fp16", edges=())
    assert snap.requests == 6 and snap.in_flight == 1
    assert (snap.answered_by_edge, snap.local_fallbacks, snap.device_only, snap.errors,
            snap.cancelled) == (1, 1, 1, 1, 1)
    assert snap.fallback_reasons == {"UNAVAILABLE": 1}
    assert snap.shadow.checks == 1 and snap.shadow.top1_agreement == 0.5
    assert snap.shadow.max_abs_error == pytest.approx(0.7)
    assert snap.latency_p50_s == pytest.approx(0.01)


def _profiles() -> tuple[DeviceProfile, EdgeProfile]:
    def cut(i: int, head_s: float, nbytes: int) -> CutCost:
        codecs = (CodecCost("fp32", nbytes, 0.0, 0.0), CodecCost("int8", nbytes // 4, 0.001,
                                                                   0.001, error=0.01))
        return CutCost(i, f"c{i}", head_s, float(i), 0, i, codecs if i < 3 else ())
    device = DeviceProfile("m", "fp", 1, (cut(0, 0.0, 1_000_000), cut(1, 0.01, 10_000),
                                          cut(2, 0.05, 1_000), cut(3, 0.2, 0)), 40)
    edge = EdgeProfile("m", "fp", {0: 0.02, 1: 0.015, 2: 0.005})
    return device, edge


def test_make_plan_auto_fixed_cut_and_fixed_codec():
    device, edge = _profiles()
    names = ["c0", "c1", "c2", "c3"]
    slow = Link(rtt_s=0.02, bandwidth_bps=1e6)
    auto = make_plan(device, edge, slow, cut=None, codec=None, objective="latency",
                     constraints=Constraints(), cut_names=names)
    assert auto.reason == "planner" and (auto.cut_id, auto.codec) == (1, "int8")
    assert auto.predicted_s == pytest.approx(auto.plan.alternatives[0].breakdown.total_s)
    fixed_cut = make_plan(device, edge, slow, cut=2, codec=None, objective="latency",
                          constraints=Constraints(), cut_names=names)
    assert (fixed_cut.cut_id, fixed_cut.codec, fixed_cut.reason) == (2, "int8", "planner")
    fixed = make_plan(device, edge, slow, cut=2, codec="fp32", objective="latency",
                      constraints=Constraints(), cut_names=names)
    assert (fixed.cut_id, fixed.codec, fixed.reason) == (2, "fp32", "fixed")
    assert objective_of(fixed.plan, 2, "fp32") == pytest.approx(fixed.predicted_s)
    with pytest.raises(PlanningError, match="cut 2 is not a candidate"):
        make_plan(device, EdgeProfile("m", "fp", {0: 0.02}), slow, cut=2, codec=None,
                  objective="latency", constraints=Constraints(), cut_names=names)


def test_profile_cut_ids_spreads_and_keeps_the_ends():
    assert profile_cut_ids(10, None, 24) == list(range(10))
    ids = profile_cut_ids(200, None, 24)
    assert ids[0] == 0 and ids[-1] == 199 and len(ids) <= 24
    assert profile_cut_ids(200, 57, 24) == [0, 57, 199]


def test_a_draining_refusal_reads_back_as_shutting_down_and_a_lost_connection_does_not():
    from splitinfer.core.errors import ShuttingDown
    from splitinfer.transport import error_for

    refused = error_for("UNAVAILABLE", f"{ShuttingDown.PREFIX} and takes no new requests")
    lost = error_for("UNAVAILABLE", "failed to connect to all addresses")
    assert isinstance(refused, ShuttingDown) and refused.code == "UNAVAILABLE"
    assert not isinstance(lost, ShuttingDown) and lost.code == "UNAVAILABLE"
    # the prefix on another code is not a drain
    assert not isinstance(error_for("INTERNAL", ShuttingDown.PREFIX), ShuttingDown)


def test_link_probes_lost_in_noise_give_a_lower_bound_not_an_error():
    import asyncio

    from device_client.link_probe import measure_link

    class FlatEdge:  # loopback on a busy machine: the size makes no difference to the time
        address = "flat"

        def __init__(self) -> None:
            self.times = iter([0.0020, 0.0021, 0.0019, 0.0024, 0.0018, 0.0022] * 10)

        async def probe(self, size: int, timeout: float) -> float:
            return next(self.times) + (1e-5 if size == 1024 else 0.0)  # larger is "faster"

    link, samples = asyncio.run(measure_link(FlatEdge()))  # type: ignore[arg-type]
    sizes = sorted({s for s, _ in samples})
    assert 0.0018 <= link.rtt_s <= 0.0024
    # at least the largest probe's extra bytes within the noise (<= 0.6 ms here)
    assert link.bandwidth_bps >= (sizes[-1] - sizes[0]) * 8 / 0.0006
    with pytest.raises(ValueError, match="same size"):  # one size is still the caller's error
        asyncio.run(measure_link(FlatEdge(), sizes=[4096]))  # type: ignore[arg-type]
