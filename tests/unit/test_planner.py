"""The planner on hand-built profiles with known answers, its constraints, objectives and laws."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitinfer.core.errors import PlanningError, SplitInferError
from splitinfer.core.link import Link
from splitinfer.core.planner import (
    Breakdown,
    Candidate,
    Constraints,
    Plan,
    PowerModel,
    baseline_label,
    choose,
)
from splitinfer.core.profiles import CodecCost, CutCost, DeviceProfile, EdgeProfile

ENC = {"fp32": 0.0005, "fp16": 0.001, "int8+zstd": 0.004}
DEC = {"fp32": 0.0005, "fp16": 0.001, "int8+zstd": 0.002}
ERR = {"fp32": 0.0, "fp16": 1e-3, "int8+zstd": 1e-2}
RATIO = {"fp32": 1, "fp16": 2, "int8+zstd": 4}


def _codecs(fp32_bytes: int, names=("fp32", "fp16", "int8+zstd")) -> tuple[CodecCost, ...]:
    return tuple(CodecCost(n, fp32_bytes // RATIO[n], ENC[n], DEC[n], ERR[n]) for n in names)


def device(scale: float = 1.0) -> DeviceProfile:
    """A toy CNN: a big input, an even bigger early activation, then smaller and smaller ones."""
    cuts = (CutCost(0, "input", 0.0, 0.0, 0, 0, _codecs(600_000, ("fp32", "fp16"))),
            CutCost(1, "conv1", 0.020 * scale, 1e8, 10_000_000, 3, _codecs(800_000)),
            CutCost(2, "block2", 0.060 * scale, 5e8, 30_000_000, 12, _codecs(200_000)),
            CutCost(3, "pool", 0.150 * scale, 1e9, 50_000_000, 30, _codecs(8_000)),
            CutCost(4, "output", 0.400 * scale, 1.1e9, 60_000_000, 32, ()))
    return DeviceProfile("toy", "fp-1", 4, cuts, response_bytes=40)


EDGE = EdgeProfile("toy", "fp-1", {0: 0.010, 1: 0.008, 2: 0.005, 3: 0.001})
SLOW = Link(rtt_s=0.100, bandwidth_bps=1e6)
FAST = Link(rtt_s=0.005, bandwidth_bps=1e9)
MID = Link(rtt_s=0.020, bandwidth_bps=20e6)


SPEEDUP = 0.400 / 0.010  # the edge runs the toy's whole model 40x faster: it decodes 40x faster


def latency(dev: DeviceProfile, edge: EdgeProfile, link: Link, cut_id: int, codec: str) -> float:
    """The cost model written out once more, independently of the planner's code."""
    cut = next(c for c in dev.cuts if c.cut_id == cut_id)
    k = next(c for c in cut.codecs if c.codec == codec)
    speedup = (dev.cuts[-1].head_s - dev.cuts[0].head_s) / edge.tail_s[0]
    return (cut.head_s + k.encode_s + k.request_bytes * 8 / link.bandwidth_bps + link.rtt_s
            + edge.queue_s + k.decode_s / speedup + edge.decode_s_per_mb * k.request_bytes / 1e6
            + edge.tail_s[cut_id] + edge.response_encode_s
            + dev.response_bytes * 8 / link.bandwidth_bps + dev.response_decode_s)


def picked(plan: Plan) -> tuple[int, str | None]:
    return plan.cut_id, plan.codec


# --- the three regimes ----------------------------------------------------------------------

def test_slow_link_picks_a_late_cut_with_the_smallest_codec():
    plan = choose(device(), EDGE, SLOW)
    assert picked(plan) == (3, "int8+zstd") and plan.cut_name == "pool"
    # head + encode + 2000 B up + RTT + decode (the device's, 40x faster) + tail + 40 B down
    assert plan.predicted_s == pytest.approx(0.150 + 0.004 + 0.016 + 0.100 + 0.002 / SPEEDUP
                                             + 0.001 + 0.00032, rel=1e-12)
    assert plan.device_only_s == 0.4
    assert plan.speedup_vs_device_only == pytest.approx(0.4 / plan.predicted_s)
    assert plan.edge_only_s == pytest.approx(latency(device(), EDGE, SLOW, 0, "fp16"), rel=1e-12)


def test_fast_link_and_slow_device_pick_edge_only():
    plan = choose(device(scale=10), EDGE, FAST)
    assert picked(plan) == (0, "fp16")
    # a 10x slower device: the edge is 400x faster, and decodes 400x faster
    assert plan.predicted_s == pytest.approx(0.001 + 0.0024 + 0.005 + 0.001 / (10 * SPEEDUP)
                                             + 0.010 + 3.2e-7, rel=1e-12)
    assert plan.edge_only_s == plan.predicted_s and plan.speedup_vs_edge_only == 1.0


def test_middle_link_picks_a_middle_cut():
    plan = choose(device(), EDGE, MID)
    assert picked(plan) == (2, "int8+zstd")
    assert plan.predicted_s == pytest.approx(latency(device(), EDGE, MID, 2, "int8+zstd"),
                                             rel=1e-12)
    assert plan.predicted_s < plan.edge_only_s < plan.device_only_s


def test_the_edge_decodes_as_much_faster_as_it_computes_faster():
    # the device profile holds the device's decode time; the edge's is that over the speedup
    plan = choose(device(), EDGE, MID)
    k = next(c for c in device().cuts[2].codecs if c.codec == "int8+zstd")
    assert plan.breakdown.edge_decode_s == pytest.approx(k.decode_s / SPEEDUP, rel=1e-12)
    # an edge as slow as the device decodes as slowly; no time for cut 0: no scaling either
    slow_edge = EdgeProfile("toy", "fp-1", {0: 0.400, 1: 0.38, 2: 0.34, 3: 0.25})
    for edge in (slow_edge, EdgeProfile("toy", "fp-1", {1: 0.008, 2: 0.005, 3: 0.001})):
        b = next(a.breakdown for a in choose(device(), edge, MID).alternatives
                 if (a.cut_id, a.codec) == (2, "int8+zstd"))
        assert b.edge_decode_s == pytest.approx(k.decode_s, rel=1e-12)


def test_very_slow_link_runs_everything_on_the_device():
    plan = choose(device(), EDGE, Link(0.5, 1e5))
    assert picked(plan) == (4, None)
    assert plan.breakdown == Breakdown(head_s=0.4) and plan.predicted_s == 0.4


# --- constraints ----------------------------------------------------------------------------

@pytest.mark.parametrize("constraints, link, scale, expected", [
    (Constraints(min_device_cut=3), MID, 1, (3, "fp16")),
    (Constraints(device_memory_bytes=20_000_000), MID, 1, (1, "int8+zstd")),
    (Constraints(max_codec_error=5e-3), MID, 1, (2, "fp16")),
    (Constraints(max_codec_error=0.0), MID, 1, (2, "fp32")),
    (Constraints(codecs=("fp32",)), MID, 1, (2, "fp32")),
    (Constraints(allow_edge_only=False), FAST, 10, (1, "fp16")),
    (Constraints(allow_device_only=False), Link(0.5, 1e5), 1, (3, "int8+zstd")),
])
def test_each_constraint_changes_the_choice(constraints, link, scale, expected):
    unconstrained = choose(device(scale), EDGE, link)
    plan = choose(device(scale), EDGE, link, constraints=constraints)
    assert picked(plan) == expected != picked(unconstrained)
    assert plan.predicted_s >= unconstrained.predicted_s


def test_min_device_cut_keeps_raw_input_home_and_drops_edge_only_baseline():
    plan = choose(device(scale=10), EDGE, FAST, constraints=Constraints(min_device_cut=1))
    assert all(a.cut_id >= 1 for a in plan.alternatives)
    assert plan.edge_only_s is None and plan.speedup_vs_edge_only is None
    assert [baseline_label(b) for b in plan.baselines] == ["device-only"]


def test_device_only_needs_no_codec_and_passes_any_error_bound():
    plan = choose(device(), EDGE, SLOW, constraints=Constraints(min_device_cut=4,
                                                                max_codec_error=0.0))
    assert picked(plan) == (4, None)


@pytest.mark.parametrize("constraints, words", [
    (Constraints(min_device_cut=5), ["min_device_cut=5", "cut 4 (output)"]),
    (Constraints(min_device_cut=4, allow_device_only=False), ["min_device_cut=4",
                                                              "allow_device_only=False"]),
    (Constraints(device_memory_bytes=1, allow_edge_only=False), ["device_memory_bytes=1",
                                                                 "allow_edge_only=False"]),
    (Constraints(allow_device_only=False, codecs=("bf16",)), ["codecs=['bf16']",
                                                              "fp16 at cut 2"]),
    (Constraints(allow_device_only=False, max_codec_error=-0.0, codecs=("fp16",)),
     ["max_codec_error=", "(error 0.001)"]),
])
def test_nothing_allowed_raises_planning_error_naming_the_constraint(constraints, words):
    with pytest.raises(PlanningError) as e:
        choose(device(), EDGE, MID, constraints=constraints)
    assert isinstance(e.value, SplitInferError)
    for word in words:
        assert word in str(e.value)


def test_missing_tail_removes_the_cut_and_says_so():
    edge = EdgeProfile("toy", "fp-1", {0: 0.010, 1: 0.008, 3: 0.001})
    plan = choose(device(), edge, MID)
    assert all(a.cut_id != 2 for a in plan.alternatives)
    assert picked(plan) == (1, "int8+zstd")  # the runner-up once cut 2 is gone
    assert any("no tail" in n and "cut 2" in n for n in plan.notes)


def test_mismatched_fingerprint_is_a_planning_error():
    with pytest.raises(PlanningError, match="fp-2"):
        choose(device(), EdgeProfile("toy", "fp-2", EDGE.tail_s), MID)


@pytest.mark.parametrize("make", [
    lambda: CodecCost("fp32", 10, -0.1, 0.0),
    lambda: CodecCost("fp32", -10, 0.1, 0.0),
    lambda: CutCost(0, "x", math.nan, 0.0, 0, 0, ()),
    lambda: EdgeProfile("toy", "f", {0: -1.0}),
    lambda: EdgeProfile("toy", "f", {0: 1.0}, queue_s=-1),
    lambda: DeviceProfile("toy", "f", 1, (), 0),
    lambda: DeviceProfile("toy", "f", 1, device().cuts[::-1], 0),
    lambda: Constraints(max_codec_error=-1.0),
    lambda: Constraints(codecs="fp32"),
    lambda: Constraints(device_memory_bytes=-1),
    lambda: Constraints(min_agreement=1.5),
    lambda: Constraints(min_agreement=-0.1),
    lambda: Constraints(min_agreement=True),
    lambda: Constraints(max_accuracy_drop=-0.01),
    lambda: Constraints(max_accuracy_drop=2.0),
    lambda: Constraints(max_accuracy_drop=float("nan")),
    lambda: CodecCost("int8", 1, 0, 0, accuracy_drop=1.5),
    lambda: CodecCost("int8", 1, 0, 0, accuracy_drop=True),
    lambda: PowerModel(compute_w=-1),
    lambda: choose(device(), EDGE, MID, objective="speed"),
])
def test_bad_inputs_are_value_errors(make):
    with pytest.raises(ValueError):
        make()


# --- baselines: the frame as a JPEG ---------------------------------------------------------

def image_device(scale: float = 1.0, agreement: dict[str, float] | None = None) -> DeviceProfile:
    """The toy with a camera frame at cut 0: besides fp32/fp16, the frame as a 30 kB JPEG and a
    400 kB PNG. ``agreement``: codec -> measured top-1 agreement (the rest: not measured)."""
    agree = agreement or {}
    dev = device(scale)
    frame = (CodecCost("jpeg", 30_000, 0.002, 0.002, 0.02),
             CodecCost("png", 400_000, 0.008, 0.004, 0.0))
    cuts = list(dev.cuts)
    cuts[0] = CutCost(0, "input", 0.0, 0.0, 0, 0, cuts[0].codecs + frame)
    cuts = [CutCost(c.cut_id, c.name, c.head_s, c.head_flops, c.head_memory_bytes, c.head_nodes,
                    tuple(CodecCost(k.codec, k.request_bytes, k.encode_s, k.decode_s, k.error,
                                    agree.get(k.codec)) for k in c.codecs)) for c in cuts]
    return DeviceProfile("toy", "fp-1", 4, tuple(cuts), response_bytes=40)


def test_edge_only_jpeg_is_a_candidate_and_wins_on_a_fast_link_with_a_slow_device():
    dev = image_device(scale=10)
    plan = choose(dev, EDGE, FAST)
    assert picked(plan) == (0, "jpeg")
    assert plan.predicted_s == pytest.approx(latency(dev, EDGE, FAST, 0, "jpeg"), rel=1e-12)
    assert plan.alternatives[0].request_bytes == 30_000
    # every baseline, scored like a candidate, best first; the best is the plan itself
    labels = [baseline_label(b) for b in plan.baselines]
    assert sorted(labels) == ["device-only", "edge-only fp16", "edge-only fp32",
                              "edge-only jpeg", "edge-only png"]
    assert labels[0] == "edge-only jpeg" and plan.best_baseline == plan.alternatives[0]
    values = [b.objective_value for b in plan.baselines]
    assert values == sorted(values)
    for b in plan.baselines:
        assert b in plan.alternatives  # the same scoring: the same Candidate
        expected = 4.0 if b.codec is None else latency(dev, EDGE, FAST, 0, b.codec)
        assert b.breakdown.total_s == pytest.approx(expected, rel=1e-12)
    assert plan.edge_only_s == plan.predicted_s and plan.speedup_over(plan.best_baseline) == 1.0


def test_a_split_that_beats_edge_only_jpeg_names_it_as_the_baseline_it_beat():
    dev = image_device()
    plan = choose(dev, EDGE, SLOW)
    assert picked(plan) == (3, "int8+zstd")
    best = plan.best_baseline
    assert best is not None and baseline_label(best) == "edge-only jpeg"
    jpeg_s = latency(dev, EDGE, SLOW, 0, "jpeg")
    assert best.breakdown.total_s == pytest.approx(jpeg_s, rel=1e-12)
    assert plan.edge_only_s == pytest.approx(jpeg_s, rel=1e-12)  # the best codec at cut 0
    assert plan.speedup_over(best) == pytest.approx(jpeg_s / plan.predicted_s, rel=1e-12)
    assert 1.2 < plan.speedup_over(best) < plan.speedup_vs_device_only
    assert {b.request_bytes for b in plan.baselines} == {0, 600_000, 300_000, 30_000, 400_000}


def test_baselines_follow_the_codec_constraints_and_device_only_is_always_one():
    plan = choose(image_device(scale=10), EDGE, FAST,
                  constraints=Constraints(codecs=("fp16", "int8+zstd"), allow_device_only=False))
    assert picked(plan) == (0, "fp16")
    assert [baseline_label(b) for b in plan.baselines] == ["edge-only fp16", "device-only"]
    assert all(a.codec is not None for a in plan.alternatives)  # device-only: a baseline only


def test_min_agreement_drops_codecs_below_it_and_those_never_measured():
    agree = {"fp32": 1.0, "fp16": 1.0, "int8+zstd": 0.995, "jpeg": 0.95}  # png: not measured
    dev = image_device(scale=10, agreement=agree)
    assert picked(choose(dev, EDGE, FAST)) == (0, "jpeg")
    plan = choose(dev, EDGE, FAST, constraints=Constraints(min_agreement=0.99))
    assert picked(plan) == (0, "fp16")
    assert all(a.codec not in ("jpeg", "png") for a in plan.alternatives + plan.baselines)
    note = next(n for n in plan.notes if n.startswith("min_agreement=0.99"))
    assert "jpeg at cut 0 (agreement 0.95)" in note
    assert "png at cut 0 (not measured: run splitinfer fidelity)" in note
    assert picked(choose(dev, EDGE, FAST, constraints=Constraints(min_agreement=0.95))) \
        == (0, "jpeg")  # at the bound: kept


def _with_drops(dev: DeviceProfile, drops: dict[str, float]) -> DeviceProfile:
    """``dev`` with measured accuracy drops per codec (the rest: not measured)."""
    cuts = tuple(replace(c, codecs=tuple(replace(k, accuracy_drop=drops.get(k.codec))
                                         for k in c.codecs)) for c in dev.cuts)
    return replace(dev, cuts=cuts)


def test_max_accuracy_drop_is_the_accuracy_budget():
    """Codecs that lost more accuracy than the budget are out, and so are those never
    measured, except a codec whose measured output error is 0 (same answers: no loss)."""
    dev = _with_drops(image_device(scale=10), {"jpeg": 0.012, "int8+zstd": 0.002})
    assert picked(choose(dev, EDGE, FAST)) == (0, "jpeg")
    plan = choose(dev, EDGE, FAST, constraints=Constraints(max_accuracy_drop=0.005))
    assert picked(plan)[1] in ("fp32", "int8+zstd")  # fp32: error 0, so no drop to measure
    assert all(a.codec not in ("jpeg", "fp16") for a in plan.alternatives)
    note = next(n for n in plan.notes if n.startswith("max_accuracy_drop=0.005"))
    assert "jpeg at cut 0 (accuracy drop 0.012)" in note
    assert "fp16 at cut 0 (not measured: run splitinfer fidelity on labelled data)" in note
    assert "png" not in note  # png's error is 0: kept though never measured
    assert picked(choose(dev, EDGE, FAST, constraints=Constraints(max_accuracy_drop=0.012))) \
        == (0, "jpeg")  # at the budget: kept
    gain = _with_drops(image_device(scale=10), {"jpeg": -0.01})  # the split scored higher
    assert picked(choose(gain, EDGE, FAST, constraints=Constraints(max_accuracy_drop=0.0))) \
        == (0, "jpeg")
    back = DeviceProfile.from_json(_json(dev))
    assert back == dev and back.cuts[0].codecs[-2].accuracy_drop == 0.012


def test_min_agreement_without_any_fidelity_run_leaves_device_only_and_says_why():
    plan = choose(image_device(), EDGE, FAST, constraints=Constraints(min_agreement=0.5))
    assert picked(plan) == (4, None) and plan.edge_only_s is None
    assert any("not measured: run splitinfer fidelity" in n for n in plan.notes)
    with pytest.raises(PlanningError, match="not measured: run splitinfer fidelity"):
        choose(image_device(), EDGE, FAST,
               constraints=Constraints(min_agreement=0.5, allow_device_only=False))


# --- objectives -----------------------------------------------------------------------------

def test_throughput_ignores_rtt_and_differs_from_latency_on_a_satellite_link():
    sat = Link(rtt_s=1.0, bandwidth_bps=1e9)
    assert picked(choose(device(), EDGE, sat)) == (4, None)
    plan = choose(device(), EDGE, sat, objective="throughput")
    assert picked(plan) == (0, "fp32")
    # bottleneck: edge queue + decode + tail = 0 + 0.0005 / 40 + 0.010
    assert plan.alternatives[0].objective_value == pytest.approx(0.0005 / SPEEDUP + 0.010,
                                                                 rel=1e-12)
    assert plan.predicted_s == pytest.approx(latency(device(), EDGE, sat, 0, "fp32"), rel=1e-12)


def test_throughput_value_is_the_slowest_stage():
    plan = choose(device(), EDGE, MID, objective="throughput")
    for a in plan.alternatives:
        b = a.breakdown
        stages = (b.head_s + b.encode_s + b.response_decode_s, b.uplink_s,
                  b.queue_s + b.edge_decode_s + b.tail_s + b.response_encode_s, b.downlink_s)
        assert a.objective_value == max(stages)


def test_energy_with_an_expensive_radio_sends_fewer_bytes():
    default = choose(device(), EDGE, MID, objective="device_energy")
    radio = choose(device(), EDGE, MID, objective="device_energy",
                   power=PowerModel(radio_tx_w=100.0))
    assert picked(default) == (0, "fp16")  # little device compute, 300 kB on a cheap radio
    assert picked(radio) == (3, "int8+zstd")
    b = radio.breakdown
    assert radio.alternatives[0].objective_value == pytest.approx(
        2.0 * (0.150 + 0.004) + 100.0 * 2000 * 8 / 20e6 + 0.5 * 40 * 8 / 20e6
        + 0.1 * (0.020 + 0.002 / SPEEDUP + 0.001), rel=1e-12)
    assert b.uplink_s < default.breakdown.uplink_s


# --- ties -----------------------------------------------------------------------------------

def _twins(flops_a: float, flops_b: float) -> DeviceProfile:
    same = (CodecCost("fp16", 1000, 0.001, 0.001), CodecCost("bf16", 1000, 0.001, 0.001))
    return DeviceProfile("t", "f", 1, (
        CutCost(0, "in", 0.0, 0.0, 0, 0, (CodecCost("fp32", 10**9, 0.0, 0.0),)),
        CutCost(1, "a", 0.01, flops_a, 0, 1, same), CutCost(2, "b", 0.01, flops_b, 0, 1, same),
        CutCost(3, "out", 10.0, 9e9, 0, 3, ())), response_bytes=0)


TWIN_EDGE = EdgeProfile("t", "f", {0: 0.0, 1: 0.002, 2: 0.002})


def test_ties_go_to_fewer_device_flops_then_lower_cut_then_codec_name():
    assert picked(choose(_twins(5e8, 1e8), TWIN_EDGE, MID)) == (2, "bf16")
    assert picked(choose(_twins(1e8, 1e8), TWIN_EDGE, MID)) == (1, "bf16")
    plan = choose(_twins(1e8, 1e8), TWIN_EDGE, MID)
    assert [(a.cut_id, a.codec) for a in plan.alternatives[:4]] == [
        (1, "bf16"), (1, "fp16"), (2, "bf16"), (2, "fp16")]


def test_near_ties_within_1e_12_are_ties():
    # cut 2 costs a few ulps more but has fewer FLOPs: float noise must not decide
    edge = EdgeProfile("t", "f", {0: 0.0, 1: 0.002, 2: 0.002 * (1 + 1e-13)})
    plan = choose(_twins(5e8, 1e8), edge, MID)
    assert plan.alternatives[0].objective_value > plan.alternatives[1].objective_value
    assert picked(plan)[0] == 2
    edge = EdgeProfile("t", "f", {0: 0.0, 1: 0.002, 2: 0.002 * (1 + 1e-6)})
    assert picked(choose(_twins(5e8, 1e8), edge, MID))[0] == 1


def test_a_scaled_device_profile_scales_every_device_time_and_nothing_else():
    dev = device()
    slow = dev.scaled(2.5)
    for a, b in zip(dev.cuts, slow.cuts):
        assert b.head_s == pytest.approx(2.5 * a.head_s, rel=1e-12)
        assert (b.cut_id, b.name, b.head_flops, b.head_memory_bytes) == \
            (a.cut_id, a.name, a.head_flops, a.head_memory_bytes)
        for k, m in zip(a.codecs, b.codecs):
            assert (m.encode_s, m.decode_s) == pytest.approx((2.5 * k.encode_s, 2.5 * k.decode_s))
            assert (m.codec, m.request_bytes, m.error) == (k.codec, k.request_bytes, k.error)
    assert slow.response_decode_s == pytest.approx(2.5 * dev.response_decode_s)
    assert slow.response_bytes == dev.response_bytes and dev.scaled(1.0) == dev
    # a slower device moves the choice toward the edge: the toy on the MID link
    assert picked(choose(dev.scaled(10), EDGE, MID)) == (0, "fp16")
    for bad in (0, -1.0, float("nan"), float("inf"), "2", True):
        with pytest.raises(ValueError, match="factor is"):
            dev.scaled(bad)


def test_a_scaled_edge_profile_scales_its_compute_and_not_its_queue():
    edge = EdgeProfile("toy", "fp-1", {0: 0.010, 2: 0.004}, queue_s=0.003,
                       decode_s_per_mb=0.001, response_encode_s=0.0002)
    slow = edge.scaled(1.5)
    assert dict(slow.tail_s) == pytest.approx({0: 0.015, 2: 0.006}, rel=1e-12)
    assert slow.response_encode_s == pytest.approx(0.0003, rel=1e-12)
    assert (slow.queue_s, slow.decode_s_per_mb, slow.model, slow.fingerprint) == \
        (0.003, 0.001, "toy", "fp-1")
    assert edge.scaled(1.0) == edge
    # a slower edge costs edge-only its lead on a fast link (the toy device, 10x slower)
    assert picked(choose(device(scale=10), EDGE.scaled(200), FAST))[0] != 0
    for bad in (0, -1.0, float("nan"), float("inf"), "2", True):
        with pytest.raises(ValueError, match="factor is"):
            edge.scaled(bad)


# --- JSON -----------------------------------------------------------------------------------

def _json(obj):
    return json.loads(json.dumps(obj.to_json()))


def test_profiles_and_plan_round_trip_through_json():
    dev = device()
    assert DeviceProfile.from_json(_json(dev)) == dev
    edge = EdgeProfile("toy", "fp-1", EDGE.tail_s, queue_s=0.001, decode_s_per_mb=0.002,
                       response_encode_s=0.0001)
    back = EdgeProfile.from_json(_json(edge))
    assert back == edge and hash(back) == hash(edge) and back.tail_s[2] == 0.005
    for kw in ({}, {"objective": "throughput"}, {"constraints": Constraints(min_device_cut=1)}):
        plan = choose(dev, edge, MID, **kw)
        assert Plan.from_json(_json(plan)) == plan
    plan = choose(image_device(agreement={"jpeg": 0.97}), edge, SLOW)
    back = Plan.from_json(_json(plan))
    assert back == plan and back.best_baseline == plan.best_baseline
    assert back.baselines[0].codec == "jpeg" and back.baselines[0].request_bytes == 30_000
    assert DeviceProfile.from_json(_json(image_device(agreement={"jpeg": 0.97}))) \
        == image_device(agreement={"jpeg": 0.97})


def test_plan_json_from_before_baselines_still_reads():
    obj = _json(choose(device(), EDGE, MID))
    del obj["baselines"]
    for cand in obj["alternatives"]:
        del cand["request_bytes"]
    old = Plan.from_json(obj)
    assert old.baselines == () and old.best_baseline is None
    assert all(a.request_bytes == 0 for a in old.alternatives)
    assert Candidate.from_json(obj["alternatives"][0]) == old.alternatives[0]


# --- laws, on random profiles ---------------------------------------------------------------

_sec = st.floats(0.0, 1.0, allow_nan=False)
_names = ["fp32", "fp16", "int8", "int8+zstd"]


@st.composite
def profiles(draw):
    n = draw(st.integers(2, 5))
    cuts = []
    for i in range(n):
        names = draw(st.lists(st.sampled_from(_names), min_size=1, max_size=3, unique=True))
        codecs = tuple(CodecCost(k, draw(st.integers(0, 10**7)), draw(_sec), draw(_sec),
                                 draw(st.floats(0.0, 0.1))) for k in names)
        cuts.append(CutCost(i, f"c{i}", draw(_sec), draw(st.floats(0, 1e12)),
                            draw(st.integers(0, 10**9)), i, codecs if i < n - 1 else ()))
    dev = DeviceProfile("m", "f", 1, tuple(cuts), draw(st.integers(0, 10**6)), draw(_sec))
    edge = EdgeProfile("m", "f", {i: draw(_sec) for i in range(n - 1)}, draw(_sec), draw(_sec),
                       draw(_sec))
    return dev, edge


_bw = st.floats(1e3, 1e10)
_rtt = st.floats(0.0, 2.0)


@settings(max_examples=150, deadline=None)
@given(profiles(), _rtt, _bw, st.sampled_from(["latency", "throughput", "device_energy"]))
def test_breakdown_sums_and_choice_is_the_minimum(prof, rtt, bw, objective):
    plan = choose(*prof, Link(rtt, bw), objective=objective)
    for a in plan.alternatives:
        b = a.breakdown
        parts = [b.head_s, b.encode_s, b.uplink_s, b.rtt_s, b.queue_s, b.edge_decode_s,
                 b.tail_s, b.response_encode_s, b.downlink_s, b.response_decode_s]
        assert b.total_s == pytest.approx(math.fsum(parts), rel=1e-12, abs=1e-300)
    best = min(a.objective_value for a in plan.alternatives)
    assert plan.alternatives[0].objective_value <= best * (1 + 1e-12)
    assert plan.predicted_s == plan.breakdown.total_s
    assert (plan.cut_id, plan.codec) == (plan.alternatives[0].cut_id, plan.alternatives[0].codec)
    # with nothing constrained every baseline is a candidate: the plan is never worse than one
    assert all(b in plan.alternatives for b in plan.baselines)
    assert plan.alternatives[0].objective_value <= plan.best_baseline.objective_value


@settings(max_examples=150, deadline=None)
@given(profiles(), _rtt, _bw, st.floats(1.0, 100.0))
def test_more_bandwidth_never_makes_the_plan_slower(prof, rtt, bw, factor):
    slow = choose(*prof, Link(rtt, bw)).predicted_s
    fast = choose(*prof, Link(rtt, bw * factor)).predicted_s
    assert fast <= slow * (1 + 1e-9)


@settings(max_examples=150, deadline=None)
@given(profiles(), _rtt, _bw, st.floats(0.0, 1.0))
def test_lower_rtt_never_makes_the_plan_slower(prof, rtt, bw, shrink):
    slow = choose(*prof, Link(rtt, bw)).predicted_s
    fast = choose(*prof, Link(rtt * shrink, bw)).predicted_s
    assert fast <= slow * (1 + 1e-9)
