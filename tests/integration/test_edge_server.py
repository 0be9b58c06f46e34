"""The edge node in-process on port 0: Infer, InferStream, GetModelInfo, Probe, health, reflection.

Answers are checked against the model run locally: bit-exact with fp32 on the wire, and with a
lossy request codec exactly what the local tail makes of the locally decoded tensors (the edge
runs the same tail on the same decoded values). The shared node has batching off, so every
request is computed alone, as it is locally.
"""

from __future__ import annotations

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from splitinfer.codec import error_bound
from splitinfer.model.tensors import decode_torch
from splitinfer.wire import convert
from splitinfer.wire.v1 import model_pb2, probe_pb2

from .conftest import (
    MAIN_MAX_PROBE_BYTES,
    NOT_SERVING,
    SERVING,
    as_tuple,
    encode_cut,
    make_request,
    outputs_of,
    rpc_error,
)

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


def cut_ids(sm) -> dict[str, int]:
    """The first cut, a middle one where two tensors cross, and the last."""
    n = len(sm.cuts)
    middle = next(c.id for c in sm.cuts[n // 2:] if len(c.tensors) == 2)
    return {"first": 0, "middle": middle, "last": n - 1}


def image(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(1, 3, 64, 64)


def check_timing(response) -> None:
    assert response.HasField("timing")
    t = response.timing
    for stage in (t.queue_s, t.decode_s, t.compute_s, t.encode_s):
        assert stage >= 0.0
    assert t.decode_s + t.compute_s + t.encode_s > 0.0
    assert convert.parse_infer_response(response).timing is not None  # the client's own check


# ---- Infer ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_infer_fp32_both_ways_equals_the_full_model(main_node, bundles, where):
    sm = bundles.resnet
    cut = cut_ids(sm)[where]
    x = image(1)
    with torch.no_grad():
        expected = bundles.resnet_eager(x)
    crossing = sm.head(cut)(x)
    assert len(crossing) == len(sm.cuts[cut].tensors) == (2 if where == "middle" else 1)

    response = main_node.stub.Infer(
        make_request(sm, cut, crossing, request_id=f"fp32-{where}", output_codec="fp32"),
        timeout=30)

    assert response.request_id == f"fp32-{where}"
    assert response.version == "1"
    assert [o.codec for o in response.outputs] == ["fp32"]
    (out,) = outputs_of(response)
    assert torch.equal(out, expected)
    check_timing(response)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_infer_int8_zstd_equals_the_local_tail_on_the_decoded_tensors(main_node, bundles, where):
    sm = bundles.resnet
    cut = cut_ids(sm)[where]
    crossing = sm.head(cut)(image(2))
    encoded = encode_cut(sm, cut, crossing, "int8+zstd")
    decoded = [decode_torch(e) for e in encoded]
    for original, enc, dec in zip(crossing, encoded, decoded):
        assert enc.codec == "int8+zstd"
        bound = error_bound(enc)  # what the codec promises; the edge sees exactly ``dec``
        assert torch.all((original - dec).abs() <= bound.absolute + bound.relative *
                         original.abs())
    expected = as_tuple(sm.tail(cut)(*decoded))

    response = main_node.stub.Infer(make_request(sm, cut, crossing, encoded=encoded,
                                                 request_id="q"), timeout=30)

    out = outputs_of(response)
    assert len(out) == len(expected) == 1
    assert torch.equal(out[0], expected[0])
    assert response.version == "1"
    check_timing(response)


@pytest.mark.parametrize("cut", [0, 1, 5])  # 0 and 1 send the int64 mask itself
def test_infer_two_inputs_with_an_int64_mask(main_node, bundles, cut):
    sm = bundles.twoin9
    torch.manual_seed(3)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.int64)
    with torch.no_grad():
        expected = as_tuple(bundles.twoin_eager(x, mask))
    crossing = sm.head(cut)(x, mask)

    response = main_node.stub.Infer(make_request(sm, cut, crossing, version="9"), timeout=30)

    assert response.version == "9"
    out = outputs_of(response)
    assert [o.name for o in response.outputs] == ["hidden", "logits"]
    assert len(out) == 2 and all(torch.equal(a, b) for a, b in zip(out, expected))


def test_empty_version_runs_the_newest_numerically(main_node, bundles):
    sm = bundles.twoin10  # v10 is newer than v9 although "10" < "9" as text
    x, mask = torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.int64)
    response = main_node.stub.Infer(make_request(sm, 0, (x, mask)), timeout=30)
    assert response.version == "10"
    expected = as_tuple(sm.tail(0)(x, mask))
    assert all(torch.equal(a, b) for a, b in zip(outputs_of(response), expected))


# ---- InferStream ---------------------------------------------------------------------------------

def test_infer_stream_answers_in_order_and_goes_on_after_a_bad_item(main_node, bundles):
    sm = bundles.resnet
    cuts = list(cut_ids(sm).values())
    requests, expected = [], []
    for i in range(20):
        x = image(100 + i)
        cut = cuts[i % len(cuts)]
        if i == 10:  # wrong shape for cut 0
            requests.append(make_request(sm, 0, [torch.randn(1, 3, 32, 32)], request_id="r10"))
            expected.append(None)
            continue
        requests.append(make_request(sm, cut, sm.head(cut)(x), request_id=f"r{i}"))
        with torch.no_grad():
            expected.append(bundles.resnet_eager(x))

    responses = list(main_node.stub.InferStream(iter(requests), timeout=60))

    assert [r.request_id for r in responses] == [f"r{i}" for i in range(20)]
    for response, want in zip(responses, expected):
        if want is None:
            assert response.HasField("error")
            assert response.error.code == INVALID_ARGUMENT.value[0]
            assert "[1, 3, 32, 32]" in response.error.message
            assert "expects shape [-1, 3, 64, 64]" in response.error.message
            assert not response.outputs
        else:
            assert not response.HasField("error"), response.error.message
            (out,) = outputs_of(response)
            assert torch.equal(out, want)
    # the outputs are all different: each answer is its own request's, not a neighbour's
    outs = [outputs_of(r)[0] for r in responses if not r.HasField("error")]
    assert all(not torch.equal(a, b) for a, b in zip(outs, outs[1:]))


# ---- GetModelInfo --------------------------------------------------------------------------------

def model_info(node, model: str, version: str = "") -> convert.ModelInfo:
    return convert.parse_model_info(node.stub.GetModelInfo(
        model_pb2.ModelInfoRequest(model=model, version=version), timeout=10))


def test_model_info_matches_the_bundle(main_node, bundles):
    sm = bundles.resnet
    info = model_info(main_node, "resnet18")

    assert (info.model, info.version, info.versions) == ("resnet18", "1", ("1",))
    assert info.fingerprint == sm.fingerprint
    assert info.cuts == tuple(sm.cuts)
    assert info.inputs == tuple(sm.input_specs) and info.outputs == tuple(sm.output_specs)
    assert {"fp32", "int8+zstd"} <= set(info.codecs)
    assert info.queue_delay_s >= 0.0

    latency = [info.tail_latency_s[c.id] for c in sm.cuts]  # KeyError: a cut was not profiled
    assert set(info.tail_latency_s) == {c.id for c in sm.cuts}
    # a tail is the sum over the nodes after its cut, so it can only shrink as the cut moves on
    assert all(a >= b for a, b in zip(latency, latency[1:]))
    assert latency[0] > 0.0
    assert latency[-1] <= 0.05 * latency[0]


def test_model_info_lists_versions_and_empty_means_newest(main_node, bundles):
    newest = model_info(main_node, "twoin")
    assert newest.version == "10"
    assert newest.versions == ("9", "10")
    assert newest.fingerprint == bundles.twoin10.fingerprint
    older = model_info(main_node, "twoin", "9")
    assert older.version == "9" and older.fingerprint == bundles.twoin9.fingerprint
    assert older.fingerprint != newest.fingerprint
    assert older.cuts == tuple(bundles.twoin9.cuts)


# ---- Probe, health, reflection -------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 1000, MAIN_MAX_PROBE_BYTES])
def test_probe_echoes_the_asked_bytes(main_node, size):
    response = main_node.stub.Probe(probe_pb2.ProbeRequest(probe_id="p1", payload=b"u" * 300,
                                                           response_bytes=size), timeout=10)
    assert response.probe_id == "p1"
    assert len(response.payload) == size
    assert response.received_bytes == 300
    assert response.server_s >= 0.0


@pytest.mark.parametrize("size", [MAIN_MAX_PROBE_BYTES + 1, -1])
def test_probe_over_the_limit_is_invalid_argument(main_node, size):
    err = rpc_error(lambda: main_node.stub.Probe(
        probe_pb2.ProbeRequest(probe_id="p", response_bytes=size), timeout=10))
    assert err.code() == INVALID_ARGUMENT
    assert str(size) in err.details() and "--max-probe-bytes" in err.details()
    assert str(MAIN_MAX_PROBE_BYTES) in err.details()


def test_health_serving_overall_and_per_model(main_node):
    for service in ("", "resnet18", "twoin"):
        assert main_node.check(service) == SERVING
    err = rpc_error(lambda: main_node.check("no-such-model"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert NOT_SERVING != SERVING  # the stop tests look for NOT_SERVING


def test_reflection_lists_the_services(main_node):
    stub = reflection_pb2_grpc.ServerReflectionStub(main_node.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in responses[0].list_services_response.service}
    assert "splitinfer.v1.EdgeInference" in names
    assert health_pb2.DESCRIPTOR.services_by_name["Health"].full_name in names
