"""The device client against real in-process edge nodes: answers, order, plans, multi-edge.

Fault behaviour (stopped, hung, refusing edges) is in test_client_faults.py; link changes in
test_client_replan.py.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np
import pytest
import torch

from device_client import TLS, AsyncSplitClient, SplitClient
from splitinfer.core.errors import EdgeUnavailable, InvalidRequest

from .conftest import edge_config, wait_until


def exact_node(nodes, bundles, tmp_path, *entries):
    """A node that answers one request at a time (batching changes float rounding)."""
    repo = bundles.repo(tmp_path / "repo", *(entries or (("resnet18", "1"),)))
    return nodes(edge_config(repo, max_batch_size=1))


@pytest.mark.parametrize("cut", [0, 9, 40, 68])
def test_infer_fp32_equals_local_inference_bit_for_bit(nodes, bundles, tmp_path, cut):
    node = exact_node(nodes, bundles, tmp_path)
    sm = bundles.resnet
    x = torch.randn(2, 3, 64, 64)
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], cut=cut,
                     codec="fp32", fallback="error") as client:
        got = client.infer_result(x)
    assert got.answered_by == f"edge {node.target}"
    assert got.cut_id == cut and got.codec == "fp32"
    assert torch.equal(got.outputs, sm(x))


def test_lossy_codec_answer_is_within_the_codec_error(nodes, bundles, tmp_path):
    node = exact_node(nodes, bundles, tmp_path)
    sm = bundles.resnet
    x = torch.randn(1, 3, 64, 64)
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], cut=20,
                     codec="int8+zstd", fallback="error") as client:
        y = client.infer(x)
    want = sm(x)
    # int8 on the crossing activation: the logits move by a small fraction of their range
    assert not torch.equal(y, want)
    assert (y - want).abs().max() <= 0.02 * want.abs().max()


def test_stream_keeps_input_order_with_a_window(nodes, bundles, tmp_path):
    node = exact_node(nodes, bundles, tmp_path)
    sm = bundles.resnet
    frames = [torch.randn(1, 3, 64, 64) for _ in range(24)]
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], cut=30,
                     codec="fp32", window=6, fallback="error") as client:
        got = list(client.stream(frames))
        stats = client.stats
    assert len(got) == len(frames)
    for y, x in zip(got, frames):
        assert torch.equal(y, sm(x))
    assert stats.requests == stats.answered_by_edge == 24 and stats.in_flight == 0
    assert stats.local_fallbacks == stats.errors == stats.cancelled == 0


def test_several_inputs_and_outputs_and_numpy_inputs(nodes, bundles, tmp_path):
    node = exact_node(nodes, bundles, tmp_path, ("twoin", "9"))
    sm = bundles.twoin9
    x = torch.randn(3, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.int64)
    mask[0, 3:] = 0
    with SplitClient(bundles.path("twoin", "9"), edges=[node.target], cut=2, codec="fp32",
                     fallback="error") as client:
        hidden, logits = client.infer(x, mask)
        again = client.infer(x.numpy(), mask.numpy())
    want = sm(x, mask)
    assert torch.equal(hidden, want[0]) and torch.equal(logits, want[1])
    assert torch.equal(again[1], want[1])


def test_bad_inputs_are_refused_with_a_clear_error_and_counted(nodes, bundles, tmp_path):
    node = exact_node(nodes, bundles, tmp_path, ("twoin", "9"))
    with SplitClient(bundles.path("twoin", "9"), edges=[node.target], cut=2,
                     codec="fp32") as client:
        with pytest.raises(InvalidRequest, match="takes 2 input"):
            client.infer(torch.randn(1, 5, 4))
        with pytest.raises(InvalidRequest, match="'mask'.*dtype float32.*int64|mask.*int64"):
            client.infer(torch.randn(1, 5, 4), torch.ones(1, 5))
        with pytest.raises(InvalidRequest, match=r"shape \[1, 5, 7\]"):
            client.infer(torch.randn(1, 5, 7), torch.ones(1, 5, dtype=torch.int64))
        ok = client.infer(torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.int64))
        stats = client.stats
    assert ok[1].shape == (1, 3)
    assert stats.requests == 4 and stats.errors == 3 and stats.answered_by_edge == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"cut": 999}, "cut is 999"),
    ({"cut": "no.such.layer"}, "not a cut name"),
    ({"codec": "int9"}, "unknown codec"),
    ({"fallback": "maybe"}, "fallback"),
    ({"deadline_s": 0}, "deadline_s"),
    ({"window": 0}, "window"),
    ({"shadow_rate": 2.0}, "shadow_rate"),
    ({"edges": []}, "edges is empty"),
    ({"edges": ["a:1", "a:1"]}, "twice"),
    ({"tls": {"cert": "c.pem"}}, "cert and key go together"),
    ({"device_slowdown": 0.5}, "device_slowdown is 0.5"),
    ({"device_slowdown": "2"}, "device_slowdown is '2'"),
    ({"device_slowdown": float("inf")}, "device_slowdown is inf"),
    ({"track_device_speed": "yes"}, "track_device_speed is 'yes'"),
])
def test_bad_arguments_name_the_problem(bundles, kwargs, match):
    kwargs = {"edges": ["127.0.0.1:1"], **kwargs}
    with pytest.raises((ValueError, Exception), match=match):
        SplitClient(bundles.path("resnet18", "1"), **kwargs).close()


def test_auto_plan_uses_profiles_and_explains_itself(nodes, bundles, tmp_path):
    node = exact_node(nodes, bundles, tmp_path)
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], cut="auto",
                     codec="auto", max_profile_cuts=8) as client:
        plan = client.plan
        y = client.infer(torch.randn(1, 3, 64, 64))
    assert plan.reason == "planner" and plan.plan is not None
    assert plan.predicted_s == pytest.approx(plan.plan.predicted_s)
    assert plan.plan.alternatives[0].cut_id == plan.cut_id
    assert y.shape == (1, 1000)
    assert str(plan.cut_id) in plan.describe() or "device only" in plan.describe()


def test_requests_spread_over_several_edges(nodes, bundles, tmp_path):
    a = exact_node(nodes, bundles, tmp_path / "a")
    b = exact_node(nodes, bundles, tmp_path / "b")
    with SplitClient(bundles.path("resnet18", "1"), edges=[a.target, b.target], cut=40,
                     codec="fp16", fallback="error") as client:
        for _ in range(10):
            client.infer(torch.randn(1, 3, 64, 64))
        edges = {e.address: e for e in client.stats.edges}
    assert edges[a.target].ok == 5 and edges[b.target].ok == 5


def test_shadow_checks_record_divergence(nodes, bundles, tmp_path):
    node = exact_node(nodes, bundles, tmp_path)
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], cut=20,
                     codec="int8", shadow_rate=0.5) as client:
        for _ in range(8):
            client.infer(torch.randn(1, 3, 64, 64))
        # shadow checks run after the answer, on the device thread
        wait_until(lambda: client.stats.shadow.checks + client.stats.shadow.skipped >= 4,
                   what="4 shadow checks")
        shadow = client.stats.shadow
    assert shadow.checks + shadow.skipped == 4
    assert shadow.checks >= 1
    assert 0 < shadow.max_abs_error < 1.0  # int8: some error, not garbage
    assert shadow.top1_checks == shadow.checks and shadow.top1_agreement is not None


def test_async_client_infer_and_stream(nodes, bundles, tmp_path, loop):
    node = exact_node(nodes, bundles, tmp_path, ("chain", "1"))
    sm = bundles.chain
    xs = [torch.randn(1, 16) for _ in range(10)]

    async def run():
        async with AsyncSplitClient(bundles.path("chain", "1"), [node.target], cut=1,
                                    codec="fp32", fallback="error") as client:
            one = await client.infer(xs[0])

            async def frames():
                for x in xs:
                    yield x

            many = [y async for y in client.stream(frames())]
            return one, many, client.stats

    one, many, stats = asyncio.run(run())
    assert torch.equal(one, sm(xs[0]))
    assert all(torch.equal(y, sm(x)) for y, x in zip(many, xs))
    assert stats.requests == 11 and stats.answered_by_edge == 11


def test_device_only_plan_runs_locally_without_the_network(nodes, bundles, tmp_path):
    node = exact_node(nodes, bundles, tmp_path)
    last = len(bundles.resnet.cuts) - 1
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], cut=last,
                     codec="fp32", fallback="error", max_profile_cuts=4) as client:
        x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
        got = client.infer_result(x)
    assert got.answered_by == "device" and got.codec is None
    assert torch.equal(got.outputs, bundles.resnet(torch.from_numpy(x)))


def test_device_slowdown_emulates_a_slower_device(nodes, bundles, tmp_path):
    # every piece of device work idles (K - 1) x its CPU time, inside the request: the idle is
    # counted from the device thread's CPU time, not from a wall clock, so a busy machine cannot
    # make this fail (a wall-clock ratio did: the CPU time of a request is much less than its
    # wall time when other processes share the cores); the answers do not change
    node = exact_node(nodes, bundles, tmp_path)
    last = len(bundles.resnet.cuts) - 1
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    for k in (1, 6):
        with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], cut=last,
                         codec="fp32", fallback="error", device_slowdown=k) as client:
            client.infer(x)  # warm-up
            slow = client._client._device._slow  # the device thread's dilation account
            assert (slow is None) == (k == 1)
            cpu0, idle0 = (slow.cpu_s, slow.idle_s) if slow else (0.0, 0.0)
            results = [client.infer_result(x) for _ in range(5)]
            if slow is None:
                continue
            cpu, idle = slow.cpu_s - cpu0, slow.idle_s - idle0
        assert all(torch.equal(r.outputs, bundles.resnet(torch.from_numpy(x))) for r in results)
        # the head ran on the device thread and was paid for: (K - 1) x its CPU time idled
        # (a sleep's overshoot is credit to the next step, at most a few ms over five requests)
        assert cpu > 0.005, cpu
        assert (k - 1) * cpu - 0.02 <= idle <= (k - 1) * cpu + 0.05, (cpu, idle)
        # ... inside the requests' device time, which is inside their latency
        device = sum(r.device_s for r in results)
        assert device >= idle and sum(r.latency_s for r in results) >= device, (device, idle)


def test_mutual_tls_and_token_like_the_edge_node(nodes, bundles, tmp_path, tls_files):
    token = tmp_path / "token"
    token.write_text("t0ken")
    config = edge_config(bundles.repo(tmp_path / "repo", ("chain", "1")),
                         tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key),
                         tls_client_ca=str(tls_files.ca), token_file=str(token))
    ca = tls_files.ca.read_bytes()
    node = nodes(config, credentials=grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=tls_files.client_key.read_bytes(),
        certificate_chain=tls_files.client_cert.read_bytes()))
    tls = TLS(ca=tls_files.ca, cert=tls_files.client_cert, key=tls_files.client_key)
    x = torch.randn(2, 16)
    with SplitClient(bundles.path("chain", "1"), edges=[node.target], cut=1, codec="fp32",
                     tls=tls, token="t0ken", fallback="error") as client:
        assert torch.equal(client.infer(x), bundles.chain(x))
    # a client without a certificate never gets through the handshake: no edge reachable
    with pytest.raises(EdgeUnavailable, match="no edge reachable"):
        SplitClient(bundles.path("chain", "1"), edges=[node.target], cut=1, codec="fp32",
                    tls={"ca": str(tls_files.ca)}, token="t0ken", fallback="error",
                    connect_timeout_s=3.0)


def test_the_request_id_reaches_the_edge_logs(nodes, bundles, tmp_path, caplog):
    node = exact_node(nodes, bundles, tmp_path, ("chain", "1"))
    with caplog.at_level(logging.DEBUG, logger="edge_node.servicer"), \
            SplitClient(bundles.path("chain", "1"), edges=[node.target], cut=1,
                        codec="fp32") as client:
        got = client.infer_result(torch.randn(1, 16), request_id="trace-me-42")
        auto = client.infer_result(torch.randn(1, 16))
    ids = [getattr(r, "request_id", None) for r in caplog.records]
    assert got.request_id == "trace-me-42" and "trace-me-42" in ids
    assert len(auto.request_id) == 32 and auto.request_id in ids
