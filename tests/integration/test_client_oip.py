"""``SplitClient(..., protocol="oip")`` against the Open Inference Protocol of in-process nodes.

The SDK's OIP edge sees only KServe v2 gRPC: cuts found by their OIP names and metadata, tail
times measured by itself, probes as ServerLive. KServe's ModelServer as the edge is in
tests/e2e/test_client_kserve.py.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from device_client import AsyncSplitClient, SplitClient
from device_client.oip_edge import OipEdge, probe_request
from splitinfer.core.errors import NotFound
from splitinfer.model.manifest import read_manifest
from splitinfer.wire.oip import grpc_service_pb2 as pb

from .conftest import edge_config


def exact_node(nodes, bundles, tmp_path, *entries):
    repo = bundles.repo(tmp_path / "repo", *(entries or (("resnet18", "1"),)))
    return nodes(edge_config(repo, max_batch_size=1))


@pytest.mark.parametrize("cut", [0, 9, 40])
def test_fp32_over_oip_equals_local_inference_bit_for_bit(nodes, bundles, tmp_path, cut):
    node = exact_node(nodes, bundles, tmp_path)
    x = torch.randn(2, 3, 64, 64)
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], cut=cut,
                     codec="fp32", fallback="error", protocol="oip") as client:
        got = client.infer_result(x)
    assert got.answered_by == f"edge {node.target}" and got.cut_id == cut
    assert torch.equal(got.outputs, bundles.resnet(x))
    assert got.edge_timing is not None  # a splitinfer node reports its stage times


def test_int8_over_oip_is_within_the_codec_error_and_streams_in_order(nodes, bundles, tmp_path):
    node = exact_node(nodes, bundles, tmp_path)
    sm = bundles.resnet
    frames = [torch.randn(1, 3, 64, 64) for _ in range(6)]
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], cut=20,
                     codec="int8", window=3, fallback="error", protocol="oip") as client:
        got = list(client.stream(frames))
    for y, x in zip(got, frames):
        want = sm(x)
        assert not torch.equal(y, want)
        assert (y - want).abs().max() <= 0.02 * want.abs().max()


def test_planning_over_oip_uses_the_measured_tails(nodes, bundles, tmp_path):
    """A device 20x slower than this machine: the planner sends work to the edge, at a cut
    whose tail time the OIP edge measured, with a codec that has an OIP form."""
    node = exact_node(nodes, bundles, tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], fallback="error",
                     protocol="oip", max_profile_cuts=6, device_slowdown=20) as client:
        plan = client.plan
        y = client.infer(x)
    assert plan.cut_id < len(bundles.resnet.cuts) - 1, plan
    assert plan.codec in ("fp32", "fp16", "int8")
    assert (y - bundles.resnet(x)).abs().max() <= 0.02 * bundles.resnet(x).abs().max()


def test_model_info_finds_every_cut_and_measures_tails(nodes, bundles, tmp_path):
    node = exact_node(nodes, bundles, tmp_path, ("twoin", "9"), ("twoin", "10"))
    manifest = read_manifest(bundles.path("twoin", "10"))

    async def go():
        edge = OipEdge(node.target, manifest)
        try:
            info = await edge.model_info("twoin", "", 10)
            old = await edge.model_info("twoin", "9", 10)
            live = await edge.probe(0, 5), await edge.probe(100_000, 5)
        finally:
            await edge.close()
        return info, old, live

    info, old, (rtt, upload) = asyncio.run(go())
    assert info.version == "10" and set(info.versions) == {"9", "10"}
    assert info.fingerprint == manifest.fingerprint
    assert set(info.tail_latency_s) == {c.id for c in manifest.cuts}
    assert all(t >= 0 for t in info.tail_latency_s.values())
    assert old.version == "9"
    assert rtt > 0 and upload > 0


def test_probe_payload_is_an_unknown_field_any_parser_skips():
    raw = probe_request(70_000)
    parsed = pb.ServerLiveRequest.FromString(raw)  # parses: the payload is an unknown field
    assert len(raw) > 70_000 and parsed.ListFields() == []
    assert probe_request(0) == b""


def test_a_node_without_the_bundle_is_not_found_at_connect(nodes, bundles, tmp_path):
    node = exact_node(nodes, bundles, tmp_path, ("chain", "1"))
    with pytest.raises(NotFound, match="serves none of resnet18's cuts"):
        SplitClient(bundles.path("resnet18", "1"), edges=[node.target], fallback="error",
                    protocol="oip").connect()


def test_zstd_and_image_codecs_are_refused_with_oip():
    with pytest.raises(ValueError, match="no Open Inference Protocol form"):
        SplitClient("unused", edges=["127.0.0.1:1"], codec="int8+zstd", protocol="oip")
    with pytest.raises(ValueError, match="protocol"):
        SplitClient("unused", edges=["127.0.0.1:1"], protocol="kserve")


def test_failover_and_fallback_over_oip(nodes, bundles, tmp_path):
    a = exact_node(nodes, bundles, tmp_path / "a")
    b = exact_node(nodes, bundles, tmp_path / "b")
    x = torch.randn(1, 3, 64, 64)

    async def go():
        async with AsyncSplitClient(bundles.path("resnet18", "1"), edges=[a.target, b.target],
                                    cut=9, codec="fp32", fallback="local", protocol="oip",
                                    background=False) as client:
            first = await client.infer_result(x)
            a.stop()
            second = [await client.infer_result(x) for _ in range(3)]
            b.stop()
            last = await client.infer_result(x)
        return first, second, last

    first, second, last = asyncio.run(go())
    want = bundles.resnet(x)
    assert torch.equal(first.outputs, want)
    assert all(r.answered_by == f"edge {b.target}" for r in second)
    assert all(torch.equal(r.outputs, want) for r in second)
    assert last.answered_by == "local fallback" and torch.equal(last.outputs, want)


def test_wrong_token_over_oip_is_refused_at_connect(nodes, bundles, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("right")
    node = nodes(edge_config(bundles.repo(tmp_path / "repo", ("resnet18", "1")),
                             token_file=str(token_file)))
    with pytest.raises(Exception, match="UNAUTHENTICATED|bearer token"):
        SplitClient(bundles.path("resnet18", "1"), edges=[node.target], token="wrong",
                    fallback="error", protocol="oip").connect()
    with SplitClient(bundles.path("resnet18", "1"), edges=[node.target], token="right",
                     cut=9, codec="fp32", fallback="error", protocol="oip") as client:
        x = torch.randn(1, 3, 64, 64)
        assert torch.equal(client.infer(x), bundles.resnet(x))

