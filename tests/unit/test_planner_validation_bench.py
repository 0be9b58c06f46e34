"""benchmarks.planner_validation's pure parts: what it measures per link, the device's speed in
a link's window, and how rows become targets."""

from __future__ import annotations

import pytest

from benchmarks import planner_validation as pv
from benchmarks.planner_validation import Timing
from splitinfer.core.link import Link
from splitinfer.core.planner import choose
from splitinfer.core.profiles import CodecCost, CutCost, DeviceProfile, EdgeProfile


def _codecs(nbytes: int) -> tuple[CodecCost, ...]:
    return (CodecCost("fp32", nbytes, 0.0005, 0.0005, 0.0),
            CodecCost("int8+zstd", nbytes // 4, 0.004, 0.002, 1e-2))


DEVICE = DeviceProfile("toy", "fp-1", 1, (
    CutCost(0, "input", 0.0, 0.0, 0, 0, _codecs(600_000)),
    CutCost(1, "conv1", 0.020, 1e8, 10_000_000, 3, _codecs(800_000)),
    CutCost(2, "block2", 0.060, 5e8, 30_000_000, 12, _codecs(200_000)),
    CutCost(3, "pool", 0.150, 1e9, 50_000_000, 30, _codecs(8_000)),
    CutCost(4, "output", 0.400, 1.1e9, 60_000_000, 32, ())), response_bytes=40)
EDGE = EdgeProfile("toy", "fp-1", {0: 0.010, 1: 0.008, 2: 0.005, 3: 0.001})
LINK = Link(rtt_s=0.030, bandwidth_bps=10e6)


def test_configs_hold_both_baselines_and_the_choice_at_every_grid_speed():
    plan, configs = pv.configs_for(DEVICE, EDGE, LINK, k=2)
    assert plan == choose(DEVICE, EDGE, LINK)
    assert (4, None) in configs and any(c[0] == 0 for c in configs)
    for f in pv.SPEED_GRID:
        p = choose(DEVICE.scaled(f), EDGE, LINK)
        assert (p.cut_id, p.codec) in configs, f
    assert len(set(configs)) == len(configs)
    # the grid spans a slow spell either way and changes the choice on this link
    assert pv.SPEED_GRID[0] <= 0.5 and pv.SPEED_GRID[-1] >= 2.5
    assert len({choose(DEVICE.scaled(f), EDGE, LINK).cut_id for f in pv.SPEED_GRID}) > 1


def _timing(config, total_s, device_s):
    return Timing(config[0], config[1], (total_s,) * 3, 1000, (device_s,) * 3)


def test_window_speed_is_the_devices_own_steps_against_its_profile():
    plan, configs = pv.configs_for(DEVICE, EDGE, LINK, k=2)
    expected = {c: pv.candidate(plan, c).breakdown.device_s for c in configs}
    # the device ran 1.3x slower than profiled; network and edge time are not its speed
    timings = {c: _timing(c, 5.0 + 9 * e, 1.3 * e) for c, e in expected.items()}
    assert pv.window_speed(timings, plan) == pytest.approx(1.3, rel=1e-12)
    # medians: one sample caught in a spell does not move it
    c = (4, None)
    timings[c] = Timing(4, None, (0.4, 0.4, 9.0), 0, (0.52, 0.52, 9.0))
    assert pv.window_speed(timings, plan) == pytest.approx(1.3, rel=1e-12)


def _row(chosen_ms, oracle_ms, device_ms, edge_ms, cut=2, at_profile_ms=None):
    return {"bandwidth_mbps": 10, "rtt_ms": 30, "chosen_cut": cut, "chosen_ms": chosen_ms,
            "oracle_ms": oracle_ms, "predicted_ms": chosen_ms * 1.1,
            "device_only_ms": device_ms, "edge_only_ms": edge_ms,
            "plan_at_profile_speed": {"measured_ms": at_profile_ms or chosen_ms},
            "cuts": [{"cut_id": 0}, {"cut_id": cut}, {"cut_id": 4}]}


def test_targets_pass_and_fail_on_the_numbers():
    good = [_row(70, 70, 120, 140), _row(100, 98, 110, 160), _row(120, 120, 120, 300, cut=4)]
    targets = pv.check_targets(pv.summarize(good))
    assert all(t["pass"] for t in targets.values()), targets
    bad = good + [_row(170, 128, 128, 230, at_profile_ms=170)]
    s = pv.summarize(bad)
    targets = pv.check_targets(s)
    assert not targets["chosen/oracle worst"]["pass"]
    assert targets["chosen/oracle worst"]["value"] == pytest.approx(170 / 128)
    assert not targets["chosen vs better baseline, worst (baseline/chosen)"]["pass"]
    assert targets["links where a split beats both baselines"]["value"] == 2
    assert s["profile_speed_ratio_worst"] == pytest.approx(170 / 128)


class _FakeRuns:
    """Counts runs; a configuration's time and device/edge parts come from its cut."""

    def __init__(self):
        self.calls = []

    def __call__(self, config):
        cut, codec = config
        self.calls.append(config)
        return pv.Sample(total_s=0.01 * (cut + 1), device_s=0.001 * (cut + 1),
                         edge_compute_s=None if codec is None else 0.002,
                         request_bytes=0 if codec is None else 100 * (cut + 1))


def test_measure_interleaved_runs_each_configuration_its_repeats_in_rotated_rounds():
    client = _FakeRuns()
    configs = [(0, "fp32"), (2, "int8+zstd"), (4, None)]
    timings = pv.measure_interleaved(client, configs, {(0, "fp32"): 3, (2, "int8+zstd"): 1,
                                                       (4, None): 3})
    # one warm-up each, then rounds; the order rotates, a configuration stops at its count
    assert client.calls == configs + [(0, "fp32"), (2, "int8+zstd"), (4, None),
                                      (4, None), (0, "fp32"), (4, None), (0, "fp32")]
    assert [len(timings[c].samples) for c in configs] == [3, 1, 3]
    assert timings[(4, None)].edge_samples == () and timings[(4, None)].request_bytes == 0
    assert timings[(2, "int8+zstd")].device_median_s == pytest.approx(0.003)
    assert timings[(0, "fp32")].edge_median_s == pytest.approx(0.002)


def test_a_choice_between_grid_speeds_is_measured_again_beside_the_best_and_baselines():
    timings = {c: _timing(c, t, 0.01) for c, t in
               [((0, "fp32"), 0.05), ((0, "int8+zstd"), 0.04), ((2, "fp16"), 0.03),
                ((3, "int8+zstd"), 0.06), ((4, None), 0.08)]}
    assert pv.remeasure((1, "fp16"), timings, last=4) == \
        [(1, "fp16"), (2, "fp16"), (0, "fp32"), (0, "int8+zstd"), (4, None)]
    # the best is a baseline itself: listed once
    timings[(0, "int8+zstd")] = _timing((0, "int8+zstd"), 0.01, 0.01)
    assert pv.remeasure((1, "fp16"), timings, last=4) == \
        [(1, "fp16"), (0, "int8+zstd"), (0, "fp32"), (4, None)]


def test_edge_window_speed_is_its_reported_compute_against_its_tail_profile():
    t = {(1, "fp32"): Timing(1, "fp32", (0.1,), 10, (0.01,), (0.012, 0.0104, 0.0104)),
         (3, "fp32"): Timing(3, "fp32", (0.1,), 10, (0.01,), (0.0013,)),
         (4, None): Timing(4, None, (0.1,), 0, (0.01,), ())}
    assert pv.edge_window_speed(t, EDGE) == pytest.approx((0.0104 + 0.0013) / (0.008 + 0.001))
    assert pv.edge_window_speed({(4, None): t[(4, None)]}, EDGE) == 1.0
