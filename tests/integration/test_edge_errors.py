"""Every refusal in docs/architecture.md's status table: the right code and a message that says why.

The request-level cases run against the shared node (resnet18 v1, twoin v9 and v10, a 1 MiB
--max-tensor-bytes). The messages are checked for the value that was wrong and what was expected.
"""

from __future__ import annotations

import dataclasses

import grpc
import torch

from splitinfer.wire.v1 import model_pb2

from .conftest import MAIN_MAX_TENSOR_BYTES, encode_cut, make_request, rpc_error

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def refused(node, request) -> grpc.RpcError:
    return rpc_error(lambda: node.stub.Infer(request, timeout=30))


def assert_refused(node, request, code: grpc.StatusCode, *words: str) -> str:
    err = refused(node, request)
    assert err.code() == code, err.details()
    for word in words:
        assert word in err.details(), f"{word!r} not in {err.details()!r}"
    return err.details()


def requests_with_status(node, status: str) -> float:
    total = 0.0
    for metric in node.node.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "splitinfer_edge_requests_total" and \
                    sample.labels.get("status") == status:
                total += sample.value
    return total


def x() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64)


# ---- INVALID_ARGUMENT ----------------------------------------------------------------------------

def test_wrong_shape_for_the_cut(main_node, bundles):
    before = requests_with_status(main_node, "INVALID_ARGUMENT")
    assert_refused(main_node, make_request(bundles.resnet, 0, [torch.randn(2, 3, 32, 32)]),
                   INVALID_ARGUMENT, "cut 0", "has shape [2, 3, 32, 32] and dtype float32",
                   "expects shape [-1, 3, 64, 64] (-1: any size) and dtype float32")
    assert requests_with_status(main_node, "INVALID_ARGUMENT") == before + 1


def test_wrong_dtype(main_node, bundles):
    sm = bundles.twoin9
    mask = torch.ones(1, 5, dtype=torch.int32)  # the cut takes an int64 mask
    assert_refused(main_node, make_request(sm, 0, [torch.randn(1, 5, 4), mask], version="9"),
                   INVALID_ARGUMENT, "'mask'", "dtype int32", "expects shape [-1, 5]",
                   "dtype int64")
    doubles = x().double()  # fp32 keeps the dtype it was given: float64 arrives as float64
    assert_refused(main_node, make_request(bundles.resnet, 0, [doubles], codec="raw"),
                   INVALID_ARGUMENT, "float64", "float32")


def test_wrong_tensor_count(main_node, bundles):
    sm = bundles.resnet
    cut = next(c for c in sm.cuts if len(c.tensors) == 2)
    head = sm.head(cut.id)(x())
    assert_refused(main_node, make_request(sm, cut.id, head[:1]), INVALID_ARGUMENT,
                   f"cut {cut.id}", "takes 2 tensor(s)", "got 1")


def test_unknown_codec(main_node, bundles):
    sm = bundles.resnet
    (enc,) = encode_cut(sm, 0, [x()])
    bad = dataclasses.replace(enc, codec="zip9")
    assert_refused(main_node, make_request(sm, 0, [], encoded=[bad]), INVALID_ARGUMENT,
                   "unknown codec 'zip9'", "int8+zstd")


def test_payload_of_the_wrong_length(main_node, bundles):
    sm = bundles.resnet
    (enc,) = encode_cut(sm, 0, [x()])
    short = dataclasses.replace(enc, payload=enc.payload[:-4])
    assert_refused(main_node, make_request(sm, 0, [], encoded=[short]), INVALID_ARGUMENT,
                   f"payload is {len(enc.payload) - 4} bytes", f"exactly {len(enc.payload)}")


def test_corrupt_zstd_frame(main_node, bundles):
    sm = bundles.resnet
    (enc,) = encode_cut(sm, 0, [x()], codec="fp32+zstd")
    garbage = dataclasses.replace(enc, payload=b"\x00not a zstd frame" * 10)
    assert_refused(main_node, make_request(sm, 0, [], encoded=[garbage]), INVALID_ARGUMENT,
                   "not a zstd frame")


def test_tensor_over_max_tensor_bytes(main_node, bundles):
    batch = torch.randn(32, 3, 64, 64)  # 1.5 MiB of float32; the node takes 1 MiB
    assert_refused(main_node, make_request(bundles.resnet, 0, [batch], codec="int8+zstd"),
                   INVALID_ARGUMENT, f"decodes to {batch.numel() * 4} bytes",
                   f"the limit is {MAIN_MAX_TENSOR_BYTES}")


def test_malformed_messages(main_node, bundles):
    sm = bundles.resnet
    negative = make_request(sm, 0, [x()])
    negative.tensors[0].shape[0] = -1
    assert_refused(main_node, negative, INVALID_ARGUMENT, "shape", "dim -1 at index 0",
                   "dims are >= 0")
    no_tensors = make_request(sm, 0, [])
    assert_refused(main_node, no_tensors, INVALID_ARGUMENT, "InferRequest.tensors is empty")
    no_model = make_request(sm, 0, [x()], model="")
    assert_refused(main_node, no_model, INVALID_ARGUMENT, "InferRequest.model is empty")
    bad_dtype = make_request(sm, 0, [x()])
    bad_dtype.tensors[0].dtype = "float128"
    assert_refused(main_node, bad_dtype, INVALID_ARGUMENT, "'float128' is unknown")
    bad_output_codec = make_request(sm, 0, [x()], output_codec="zip9")
    assert_refused(main_node, bad_output_codec, INVALID_ARGUMENT, "unknown codec 'zip9'")


# ---- NOT_FOUND ----------------------------------------------------------------------------------

def test_unknown_model(main_node, bundles):
    assert_refused(main_node, make_request(bundles.resnet, 0, [x()], model="nope"), NOT_FOUND,
                   "unknown model 'nope'", "resnet18", "twoin")
    err = rpc_error(lambda: main_node.stub.GetModelInfo(
        model_pb2.ModelInfoRequest(model="nope"), timeout=10))
    assert err.code() == NOT_FOUND and "unknown model 'nope'" in err.details()


def test_unknown_version(main_node, bundles):
    assert_refused(main_node, make_request(bundles.resnet, 0, [x()], version="7"), NOT_FOUND,
                   "resnet18", "no version '7'", "['1']")
    err = rpc_error(lambda: main_node.stub.GetModelInfo(
        model_pb2.ModelInfoRequest(model="twoin", version="11"), timeout=10))
    assert err.code() == NOT_FOUND and "['9', '10']" in err.details()


def test_cut_out_of_range(main_node, bundles):
    sm = bundles.resnet
    last = len(sm.cuts) - 1
    request = make_request(sm, 0, [x()])
    request.cut_id = last + 1
    assert_refused(main_node, request, NOT_FOUND, f"no cut {last + 1}", f"0..{last}")


# ---- FAILED_PRECONDITION ------------------------------------------------------------------------

def test_fingerprint_of_another_model(main_node, bundles):
    sm = bundles.resnet
    other = bundles.twoin9.fingerprint
    assert_refused(main_node, make_request(sm, 0, [x()], fingerprint=other),
                   FAILED_PRECONDITION, other[:16], sm.fingerprint[:16], "resnet18 v1",
                   "another model")
    # v9's head against the newest version (v10): same name, different weights
    twoin = bundles.twoin9
    inputs = [torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.int64)]
    assert_refused(main_node, make_request(twoin, 0, inputs), FAILED_PRECONDITION,
                   "twoin v10", bundles.twoin10.fingerprint[:16])


def test_empty_fingerprint(main_node, bundles):
    assert_refused(main_node, make_request(bundles.resnet, 0, [x()], fingerprint=""),
                   FAILED_PRECONDITION, "(none)", "fingerprint")

