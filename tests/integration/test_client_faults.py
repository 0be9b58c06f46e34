"""The device client when edges fail: stopped mid-stream, hung, refusing, unreachable.

Every request gets exactly one answer or a clear error, as configured, and ``client.stats``
accounts for each: requests == edge + local + device + errors + cancelled (+ in flight, 0 here).
Nodes answer one request at a time (no batching), so answers from the edge and from the local
fallback are both bit-for-bit the local model's (fp32).
"""

from __future__ import annotations

import pytest
import torch

from device_client import BreakerPolicy, SplitClient
from splitinfer.core.errors import EdgeUnavailable, FingerprintMismatch, Unauthenticated

from .conftest import Gate, edge_config

TOKEN = "s3cret-token"


def node_for(nodes, bundles, where, *entries, **config):
    repo = bundles.repo(where, *(entries or (("resnet18", "1"),)))
    return nodes(edge_config(repo, max_batch_size=1, **config))


def balanced(stats):
    return stats.requests == (stats.answered_by_edge + stats.local_fallbacks + stats.device_only
                              + stats.errors + stats.cancelled + stats.in_flight)


def frames_that_stop(node, n, stop_after):
    """Yield ``n`` frames; stop ``node`` (no grace) once ``stop_after`` have been taken."""
    torch.manual_seed(1)
    xs = [torch.randn(1, 3, 64, 64) for _ in range(n)]
    sent = []

    def gen():
        for i, x in enumerate(xs):
            if i == stop_after:
                node.stop()
            sent.append(x)
            yield x
    return gen(), sent


def test_edge_stopped_mid_stream_falls_back_locally_for_every_unanswered_frame(
        nodes, bundles, tmp_path):
    node = node_for(nodes, bundles, tmp_path / "repo")
    frames, sent = frames_that_stop(node, 30, stop_after=10)
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], cut=30, codec="fp32",
                     window=4, deadline_s=5.0, fallback="local") as client:
        got = list(client.stream(frames))
        stats = client.stats
    assert len(got) == 30
    for y, x in zip(got, sent):
        assert torch.equal(y, bundles.resnet(x))
    assert balanced(stats) and stats.errors == stats.in_flight == 0
    # frames are read ahead of the answers: up to `window` were in flight when it stopped
    assert stats.answered_by_edge >= 10 - 4 and stats.local_fallbacks >= 1
    assert stats.answered_by_edge + stats.local_fallbacks == 30


def test_edge_stopped_mid_stream_with_fallback_error_raises_once_and_accounts(
        nodes, bundles, tmp_path):
    node = node_for(nodes, bundles, tmp_path / "repo")
    frames, sent = frames_that_stop(node, 30, stop_after=10)
    got = []
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], cut=30, codec="fp32",
                     window=4, deadline_s=5.0, fallback="error") as client:
        with pytest.raises(EdgeUnavailable, match="no edge answered.*fallback is 'error'"):
            for y in client.stream(frames):
                got.append(y)
        stats = client.stats
    assert len(got) >= 10 - 4
    for y, x in zip(got, sent):
        assert torch.equal(y, bundles.resnet(x))
    assert balanced(stats) and stats.in_flight == 0 and stats.errors >= 1
    assert stats.answered_by_edge == len(got)


def test_edge_stopped_mid_stream_fails_over_to_the_other_edge(nodes, bundles, tmp_path):
    a = node_for(nodes, bundles, tmp_path / "a")
    b = node_for(nodes, bundles, tmp_path / "b")
    frames, sent = frames_that_stop(a, 30, stop_after=10)
    with SplitClient(bundles.path("resnet18", "1"), edges=[a.target, b.target], cut=30,
                     codec="fp32", window=4, deadline_s=5.0, fallback="error") as client:
        got = list(client.stream(frames))
        stats = client.stats
    assert all(torch.equal(y, bundles.resnet(x)) for y, x in zip(got, sent))
    assert stats.answered_by_edge == 30 and stats.local_fallbacks == stats.errors == 0
    assert balanced(stats)


def test_a_hung_edge_is_skipped_after_its_breaker_opens(nodes, bundles, tmp_path):
    hung = node_for(nodes, bundles, tmp_path / "hung")
    hung.gate = Gate().install(hung.node)  # its tail never returns (until teardown)
    good = node_for(nodes, bundles, tmp_path / "good")
    policy = BreakerPolicy(failures=3, reset_s=30.0, max_reset_s=30.0)
    with SplitClient(bundles.path("resnet18", "1"), edges=[hung.target, good.target], cut=30,
                     codec="fp32", deadline_s=2.0, fallback="error", breaker=policy) as client:
        outs = [client.infer_result(torch.randn(1, 3, 64, 64)) for _ in range(8)]
        stats = client.stats
    assert all(o.answered_by == f"edge {good.target}" for o in outs)
    edges = {e.address: e for e in stats.edges}
    assert edges[hung.target].failures == 3 and edges[hung.target].breaker == "open"
    assert edges[good.target].ok == 8
    assert stats.retries == 3 and stats.answered_by_edge == 8 and balanced(stats)


@pytest.mark.parametrize("fallback", ["local", "error"])
def test_a_single_hung_edge_answers_locally_or_errors_within_the_deadline(
        nodes, bundles, tmp_path, fallback):
    hung = node_for(nodes, bundles, tmp_path / "hung")
    hung.gate = Gate().install(hung.node)
    policy = BreakerPolicy(failures=2, reset_s=30.0, max_reset_s=30.0)
    xs = [torch.randn(1, 3, 64, 64) for _ in range(5)]
    with SplitClient(bundles.path("resnet18", "1"), edges=[hung.target], cut=30, codec="fp32",
                     deadline_s=0.5, fallback=fallback, breaker=policy) as client:
        results = []
        for x in xs:
            try:
                results.append(client.infer_result(x))
            except EdgeUnavailable as exc:
                results.append(exc)
        stats = client.stats
    assert balanced(stats) and stats.requests == 5
    if fallback == "local":
        assert all(torch.equal(r.outputs, bundles.resnet(x)) for r, x in zip(results, xs))
        assert stats.local_fallbacks == 5
        assert stats.fallback_reasons == {"DEADLINE_EXCEEDED": 2, "NO_EDGE": 3}
        assert all(r.latency_s < 0.5 + 0.25 for r in results)  # local tail within the budget
    else:
        assert all(isinstance(r, EdgeUnavailable) for r in results)
        assert stats.errors == 5
        assert "DEADLINE_EXCEEDED" in str(results[0]) and "breaker" in str(results[-1])


def test_wrong_token_is_a_clear_error_at_connect(nodes, bundles, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    node = node_for(nodes, bundles, tmp_path / "repo", ("chain", "1"),
                    token_file=str(token_file))
    with pytest.raises(Unauthenticated, match="wrong bearer token.*token="):
        SplitClient(bundles.path("chain", "1"), edges=[node.target], cut=1, codec="fp32",
                    token="not-it")
    with pytest.raises(Unauthenticated, match="missing bearer token"):
        SplitClient(bundles.path("chain", "1"), edges=[node.target], cut=1, codec="fp32")
    with SplitClient(bundles.path("chain", "1"), edges=[node.target], cut=1, codec="fp32",
                     token=TOKEN, fallback="error") as client:
        assert torch.equal(client.infer(x := torch.randn(2, 16)), bundles.chain(x))


def test_fingerprint_mismatch_is_a_clear_error_at_connect(nodes, bundles, tmp_path):
    node = node_for(nodes, bundles, tmp_path / "repo", ("twoin", "10"))
    with pytest.raises(FingerprintMismatch, match=r"versions \['10'\], none with this bundle"):
        SplitClient(bundles.path("twoin", "9"), edges=[node.target], cut=2, codec="fp32")


def test_the_client_pins_the_version_whose_fingerprint_matches(nodes, bundles, tmp_path):
    node = node_for(nodes, bundles, tmp_path / "repo", ("twoin", "9"), ("twoin", "10"))
    x, mask = torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.int64)
    for version, sm in (("9", bundles.twoin9), ("10", bundles.twoin10)):
        with SplitClient(bundles.path("twoin", version), edges=[node.target], cut=2,
                         codec="fp32", fallback="error") as client:
            assert client.edges[0].version == version
            assert torch.equal(client.infer(x, mask)[1], sm(x, mask)[1])


def test_unreachable_edge_at_connect(bundles, tmp_path):
    with pytest.raises(EdgeUnavailable, match="no edge reachable"):
        SplitClient(bundles.path("chain", "1"), edges=["127.0.0.1:1"], cut=1, codec="fp32",
                    fallback="error", connect_timeout_s=2.0)
    with SplitClient(bundles.path("chain", "1"), edges=["127.0.0.1:1"], cut="auto",
                     fallback="local", connect_timeout_s=2.0) as client:
        got = client.infer_result(x := torch.randn(1, 16))
        assert client.plan.codec is None and "no edge reachable" in client.plan.reason
    assert got.answered_by == "device" and torch.equal(got.outputs, bundles.chain(x))


def test_an_edge_that_comes_back_is_used_again(nodes, bundles, tmp_path, loop):
    first = node_for(nodes, bundles, tmp_path / "repo", ("chain", "1"))
    port = first.node.port
    first.stop()
    policy = BreakerPolicy(failures=1, reset_s=0.2, max_reset_s=0.2)
    with SplitClient(bundles.path("chain", "1"), edges=[f"127.0.0.1:{port}"], cut=1,
                     codec="fp32", fallback="local", breaker=policy,
                     connect_timeout_s=2.0) as client:
        assert client.infer_result(torch.randn(1, 16)).answered_by == "local fallback"
        nodes(edge_config(bundles.repo(tmp_path / "repo2", ("chain", "1")),
                          listen=f"127.0.0.1:{port}", max_batch_size=1))
        from .conftest import wait_until
        wait_until(lambda: client.edges[0].breaker.state != "open", timeout=20,
                   what="the breaker to be probed back")
        got = client.infer_result(x := torch.randn(1, 16))
    assert got.answered_by == f"edge 127.0.0.1:{port}"
    assert torch.equal(got.outputs, bundles.chain(x))
