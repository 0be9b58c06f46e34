"""The client follows the link: slow it down through the link emulator and the cut moves; and
it follows the device: when the device runs far slower than its profile, the plan moves.

The device profile is the real one of this machine with its head times scaled so the whole model
takes 100 ms on the "device" (several times the edge's time), so on a fast link sending the input
(cut 0, ~12 KB) wins and on 1 Mbit/s (~100 ms for those bytes alone) computing further on the
device and sending a small activation, or nothing, wins.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from device_client import SplitClient
from device_client.estimator import DeviceSpeed, LinkEstimator
from splitinfer.core.link import Link
from splitinfer.measure.profiler import profile_device
from splitinfer.tools.netem import LinkEmulator, LinkShape

from .conftest import edge_config, wait_until

SLOW = LinkShape(rate_bps=1e6, delay_s=0.01, burst_bytes=1500)


@pytest.fixture(scope="module")
def slow_device(bundles):
    sm = bundles.resnet
    ids = [0, 5, 15, 30, 45, 60, 66, 68, len(sm.cuts) - 1]
    prof = profile_device(sm, codecs=("fp32", "int8+zstd"), repeats=2, cut_ids=ids)
    scale = 0.1 / prof.cuts[-1].head_s
    return dataclasses.replace(prof, cuts=tuple(dataclasses.replace(c, head_s=c.head_s * scale)
                                                for c in prof.cuts))


def test_the_client_switches_cut_when_the_link_slows_and_back_when_it_recovers(
        nodes, bundles, tmp_path, slow_device):
    node = nodes(edge_config(bundles.repo(tmp_path / "repo", ("resnet18", "1")),
                             max_batch_size=1))
    x = torch.randn(1, 3, 64, 64)
    with LinkEmulator(("127.0.0.1", node.node.port)) as proxy, \
            SplitClient(bundles.path("resnet18", "1"), edges=[f"127.0.0.1:{proxy.port}"],
                        cut="auto", codec="auto", device_profile=slow_device, deadline_s=10.0,
                        probe_interval_s=0.2, fallback="error",
                        # the profile is a what-if (a slower device than this machine): the
                        # speed tracker would rightly find this machine faster and plan for it
                        track_device_speed=False) as client:
        fast = client.plan
        assert fast.reason == "planner" and fast.cut_id == 0  # the device is slow: send it all
        for _ in range(3):
            client.infer(x)
        proxy.set_shape(SLOW)
        for _ in range(10):
            assert torch.allclose(client.infer(x), bundles.resnet(x), atol=0.05)
            if client.plan.cut_id != fast.cut_id:
                break
        slow = client.plan
        assert slow.cut_id > fast.cut_id, f"still {slow.describe()} on 1 Mbit/s"
        assert slow.link.bandwidth_bps < 2e6  # the estimate that made it switch
        switches = client.stats.plan_switches
        assert switches >= 1

        proxy.set_shape(LinkShape())  # unshaped again: background probes must notice
        wait_until(lambda: client.plan.cut_id == fast.cut_id, timeout=30,
                   what="the plan to return to cut 0 on the fast link")
        assert client.stats.plan_switches == switches + 1
        assert torch.allclose(client.infer(x), bundles.resnet(x), atol=0.05)


def test_estimator_hysteresis_ignores_noise_and_follows_a_real_change():
    est = LinkEstimator(Link(rtt_s=0.02, bandwidth_bps=10e6))
    start = est.link
    for nbytes, seconds in [(100_000, 0.02 + 0.08 * 1.2), (100_000, 0.02 + 0.08 * 0.9)]:
        est.add_transfer(nbytes, seconds)   # +-20 % noise around 10 Mbit/s
    assert not est.moved(start)
    for _ in range(3):
        est.add_transfer(100_000, 0.02 + 0.8)  # now 1 Mbit/s
    assert est.moved(start)
    assert est.link.bandwidth_bps == pytest.approx(1e6, rel=0.05)
    for _ in range(3):
        est.add_rtt(0.1)
    assert est.link.rtt_s == pytest.approx(0.1)


def test_the_client_leaves_device_only_when_the_device_runs_far_slower_than_its_profile(
        nodes, bundles, tmp_path, slow_device):
    """A profile that promises a 3 ms whole model makes device-only the plan on a fast link;
    the device really takes ~10x this machine's time (``device_slowdown=10``), so after half a
    window of requests the speed estimate says so and the client re-plans to use the edge. The
    same client without speed tracking stays on the device."""
    node = nodes(edge_config(bundles.repo(tmp_path / "repo", ("resnet18", "1")),
                             max_batch_size=1))
    scale = 0.003 / slow_device.cuts[-1].head_s
    promised = slow_device.scaled(scale)
    x = torch.randn(1, 3, 64, 64)
    for track in (False, True):
        with SplitClient(bundles.path("resnet18", "1"), edges=[f"127.0.0.1:{node.node.port}"],
                         cut="auto", codec="auto", device_profile=promised, deadline_s=10.0,
                         device_slowdown=10, fallback="error", probe_interval_s=60,
                         track_device_speed=track) as client:
            assert client.plan.codec is None, client.plan.describe()  # device-only, promised
            for _ in range(12):
                assert torch.allclose(client.infer(x), bundles.resnet(x), atol=0.05)
                if client.plan.codec is not None:
                    break
            stats, plan = client.stats, client.plan
        if not track:
            assert plan.codec is None and stats.plan_switches == 0
            assert stats.device_speed == 1.0
            continue
        assert plan.codec is not None, f"still {plan.describe()}"
        assert stats.plan_switches == 1 and stats.device_only >= DeviceSpeed().min_samples
        # the profile said 3 ms; this machine x10 is far more: the estimate says how much
        assert stats.device_speed > 5
        assert plan.predicted_s > 0.003


def test_device_speed_is_a_median_with_hysteresis():
    speed = DeviceSpeed(window=5, ratio=1.25)
    for _ in range(2):
        speed.add(0.030, 0.010)
    assert speed.factor == 1.0  # under half a window: no verdict yet
    speed.add(0.030, 0.010)
    assert speed.factor == pytest.approx(3.0) and speed.moved(1.0) and not speed.moved(2.6)
    speed.add(0.500, 0.010)   # one request caught in a pause: the median holds
    speed.add(0.0301, 0.0005)  # predicted under a millisecond: too small to time, ignored
    speed.add(0.0, 0.010)      # nonsense: ignored
    speed.add(0.030, None)     # not in the profile: ignored
    assert speed.factor == pytest.approx(3.0) and speed.samples == 4
    for _ in range(5):
        speed.add(0.011, 0.010)
    assert speed.factor == pytest.approx(1.1) and not speed.moved(1.0) and speed.moved(1.5)
    for bad in (dict(window=0), dict(window=2.5), dict(ratio=1.0), dict(ratio=float("nan"))):
        with pytest.raises(ValueError):
            DeviceSpeed(**bad)


def test_device_work_is_head_and_encoding_or_the_whole_model(slow_device):
    from device_client.planning import device_work_s

    cut = slow_device.cuts[3]
    k = cut.codecs[0]
    assert device_work_s(slow_device, cut.cut_id, k.codec) == cut.head_s + k.encode_s
    assert device_work_s(slow_device, cut.cut_id, None) == slow_device.cuts[-1].head_s
    assert device_work_s(slow_device, cut.cut_id, "no-such-codec") is None
    assert device_work_s(slow_device, 10_000, k.codec) is None
    assert device_work_s(None, cut.cut_id, k.codec) is None
