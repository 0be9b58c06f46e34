"""The Open Inference Protocol on an in-process edge node, called by the real tritonclient.

tritonclient (from the registry, ``[test]`` extra) registers the same ``inference.*`` protobuf
names as the node's own OIP code; both live in this one process, which is itself a check that
splitinfer keeps its OIP messages out of protobuf's default pool.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tpb_grpc
from tritonclient.utils import InferenceServerException

from splitinfer.codec import error_bound, get_codec
from splitinfer.model.tensors import decode_torch
from splitinfer.wire.oip_convert import model_name, quant_parameters, set_parameter

from .conftest import TOKEN, as_tuple, edge_config


def cut_ids(sm) -> list[int]:
    """Cut 0, an early one, a middle one where two tensors cross, and the last."""
    n = len(sm.cuts)
    middle = next(c.id for c in sm.cuts[n // 2:] if len(c.tensors) == 2)
    return [0, 2, middle, n - 1]


def image(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(1, 3, 64, 64)


@pytest.fixture(scope="module")
def client(main_node):
    c = tc.InferenceServerClient(main_node.target)
    yield c
    c.close()


def fp32_input(name: str, x: torch.Tensor) -> tc.InferInput:
    arr = x.detach().numpy()
    inp = tc.InferInput(name, list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    return inp


def quantized_input(encoded, signed: bool = False) -> tc.InferInput:
    """One int8-codec tensor as a UINT8 input (or INT8: codes shifted by 128) with its scale
    and zero point in the tensor's parameters (per channel: comma-separated strings)."""
    codes = np.frombuffer(encoded.payload, np.uint8).reshape(encoded.shape)
    zps = list(encoded.zero_points)
    if signed:
        codes = (codes.astype(np.int16) - 128).astype(np.int8)
        zps = [z - 128 for z in zps]
    inp = tc.InferInput(encoded.name, list(encoded.shape), "INT8" if signed else "UINT8")
    inp.set_data_from_numpy(codes)
    params = inp._get_tensor().parameters  # tritonclient has no public setter for these
    for key, value in quant_parameters(encoded.axis, encoded.scales, zps).items():
        set_parameter(params, key, value)
    return inp


def status(exc: InferenceServerException) -> str:
    return str(exc.status()).rpartition(".")[2]


# ---- health, metadata, repository ---------------------------------------------------------------

def test_live_ready_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "splitinfer" and "model_repository" in meta["extensions"]
    assert client.is_model_ready("resnet18") and client.is_model_ready("resnet18.cut3")
    assert client.is_model_ready("twoin", "9") and not client.is_model_ready("twoin", "8")
    assert not client.is_model_ready("nosuch") and not client.is_model_ready("resnet18.cut9999")


def test_repository_index_lists_every_cut_of_every_version(client, bundles):
    index = client.get_model_repository_index(as_json=True)["models"]
    names = {(m["name"], m["version"]) for m in index}
    sm = bundles.resnet
    assert ("resnet18", "1") in names
    assert {(f"resnet18.cut{c.id}", "1") for c in sm.cuts[1:]} <= names
    assert ("twoin", "9") in names and ("twoin", "10") in names
    assert all(m["state"] == "READY" for m in index)
    assert len(index) == len(sm.cuts) + 2 * len(bundles.twoin9.cuts)


@pytest.mark.parametrize("pick", [0, 1, 2, 3])
def test_metadata_of_each_cut_lists_the_tensors_that_cross_it(client, bundles, pick):
    sm = bundles.resnet
    cut = sm.cuts[cut_ids(sm)[pick]]
    meta = client.get_model_metadata(model_name("resnet18", cut.id), as_json=True)
    assert meta["name"] == model_name("resnet18", cut.id) and meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] \
        == [(s.name, "FP32", list(s.shape)) for s in cut.tensors]
    assert [t["name"] for t in meta["outputs"]] == [s.name for s in sm.output_specs]


# ---- ModelInfer ---------------------------------------------------------------------------------

def test_the_bundle_name_is_the_whole_model_bit_exact(client, bundles):
    x = image(1)
    with torch.no_grad():
        expected = bundles.resnet_eager(x).numpy()
    spec = bundles.resnet.cuts[0].tensors[0]
    result = client.infer("resnet18", [fp32_input(spec.name, x)], request_id="whole")
    out = result.as_numpy(bundles.resnet.output_specs[0].name)
    assert out.dtype == np.float32 and np.array_equal(out, expected)
    response = result.get_response(as_json=True)
    assert response["id"] == "whole" and response["model_version"] == "1"
    assert set(response["parameters"]) == {"queue_s", "decode_s", "compute_s", "encode_s"}


@pytest.mark.parametrize("pick", [1, 2, 3])
def test_infer_at_a_cut_in_fp32_equals_the_full_model(client, bundles, pick):
    sm = bundles.resnet
    cut = cut_ids(sm)[pick]
    x = image(2)
    with torch.no_grad():
        expected = bundles.resnet_eager(x).numpy()
    crossing = sm.head(cut)(x)
    inputs = [fp32_input(s.name, t) for s, t in zip(sm.cuts[cut].tensors, crossing)]
    result = client.infer(model_name("resnet18", cut), inputs)
    assert np.array_equal(result.as_numpy(sm.output_specs[0].name), expected)


@pytest.mark.parametrize("pick, signed", [(1, False), (2, True), (3, False)])
def test_infer_at_a_cut_in_int8_is_within_the_codec_bound(client, bundles, pick, signed):
    sm = bundles.resnet
    cut = cut_ids(sm)[pick]
    crossing = sm.head(cut)(image(3))
    encoded = [get_codec("int8").encode(t, name=s.name)
               for s, t in zip(sm.cuts[cut].tensors, crossing)]
    decoded = [decode_torch(e) for e in encoded]
    for original, enc, dec in zip(crossing, encoded, decoded):  # what int8 promises
        bound = error_bound(enc)
        assert torch.all((original - dec).abs() <= bound.absolute + bound.relative *
                         original.abs())
    expected = as_tuple(sm.tail(cut)(*decoded))[0].detach().numpy()
    result = client.infer(model_name("resnet18", cut),
                          [quantized_input(e, signed) for e in encoded])
    # the node ran the tail on exactly the dequantized tensors
    assert np.array_equal(result.as_numpy(sm.output_specs[0].name), expected)


def test_per_tensor_scale_and_fp16_inputs(client, bundles):
    sm = bundles.resnet
    cut = 2
    (t,) = sm.head(cut)(image(4))
    name = sm.cuts[cut].tensors[0].name
    enc = get_codec("int8").encode(t, name=name)
    arr = t.detach().numpy()
    scale = float(np.abs(arr).max() / 127)
    codes = np.clip(np.rint(arr / scale) + 128, 0, 255).astype(np.uint8)
    per_tensor = type(enc)(name=name, dtype="float32", shape=enc.shape, codec="int8",
                           payload=codes.tobytes(), scales=(scale,), zero_points=(128,))
    want = as_tuple(sm.tail(cut)(decode_torch(per_tensor)))[0].detach().numpy()
    got = client.infer(model_name("resnet18", cut), [quantized_input(per_tensor)])
    assert np.array_equal(got.as_numpy(sm.output_specs[0].name), want)

    half = tc.InferInput(name, list(arr.shape), "FP16")
    half.set_data_from_numpy(arr.astype(np.float16))
    want = as_tuple(sm.tail(cut)(torch.from_numpy(arr.astype(np.float16).astype(np.float32))))
    got = client.infer(model_name("resnet18", cut), [half])
    assert np.array_equal(got.as_numpy(sm.output_specs[0].name), want[0].detach().numpy())


def test_two_inputs_with_an_int64_mask_and_a_chosen_output(client, bundles):
    sm = bundles.twoin10
    x = torch.randn(1, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        expected = as_tuple(sm(x, mask))
    specs = sm.cuts[0].tensors
    m = tc.InferInput(specs[1].name, [1, 5], "INT64")
    m.set_data_from_numpy(mask.numpy())
    result = client.infer("twoin", [m, fp32_input(specs[0].name, x)],  # any order, by name
                          outputs=[tc.InferRequestedOutput("logits")])
    assert result.as_numpy("hidden") is None
    assert np.array_equal(result.as_numpy("logits"), expected[1].numpy())
    assert result.get_response().model_version == "10"  # no version: the newest


def test_typed_contents_are_accepted(main_node, bundles):
    """raw_input_contents is what tritonclient sends; other clients send typed contents."""
    sm = bundles.twoin9
    x = torch.randn(1, 5, 4)
    mask = torch.ones(1, 5, dtype=torch.int64)
    request = tpb.ModelInferRequest(model_name="twoin", model_version="9")
    xs, ms = sm.cuts[0].tensors
    t = request.inputs.add(name=xs.name, datatype="FP32", shape=[1, 5, 4])
    t.contents.fp32_contents.extend(x.flatten().tolist())
    t = request.inputs.add(name=ms.name, datatype="INT64", shape=[1, 5])
    t.contents.int64_contents.extend(mask.flatten().tolist())
    stub = tpb_grpc.GRPCInferenceServiceStub(main_node.channel)
    reply = stub.ModelInfer(request, timeout=30)
    with torch.no_grad():
        expected = as_tuple(sm(x, mask))
    outs = {o.name: np.frombuffer(raw, np.float32).reshape(o.shape)
            for o, raw in zip(reply.outputs, reply.raw_output_contents)}
    assert np.array_equal(outs["logits"], expected[1].numpy())


def test_fingerprint_parameter_is_checked_when_given(client, bundles):
    spec = bundles.resnet.cuts[0].tensors[0]
    inp = [fp32_input(spec.name, image(5))]
    client.infer("resnet18", inp, parameters={"fingerprint": bundles.resnet.fingerprint})
    with pytest.raises(InferenceServerException) as info:
        client.infer("resnet18", inp, parameters={"fingerprint": "f" * 64})
    assert status(info.value) == "FAILED_PRECONDITION"
    assert "not the fingerprint of resnet18 v1" in info.value.message()


def test_stream_answers_in_order_with_an_error_item(client, bundles):
    sm = bundles.resnet
    spec = sm.cuts[0].tensors[0]
    got = []
    client.start_stream(callback=lambda result, error: got.append((result, error)))
    try:
        xs = [image(10 + i) for i in range(3)]
        for i, x in enumerate(xs):
            client.async_stream_infer("resnet18", [fp32_input(spec.name, x)],
                                      request_id=f"s{i}")
            if i == 1:
                client.async_stream_infer("resnet18", [fp32_input(spec.name, x[:, :2])],
                                          request_id="bad")
    finally:
        client.stop_stream()
    assert len(got) == 4
    assert [r.get_response().id if r else "bad" for r, _ in got] == ["s0", "s1", "bad", "s2"]
    assert "[INVALID_ARGUMENT]" in got[2][1].message() and "shape" in got[2][1].message()
    with torch.no_grad():
        for (result, error), x in zip([got[0], got[1], got[3]], xs):
            assert error is None
            assert np.array_equal(result.as_numpy(sm.output_specs[0].name),
                                  bundles.resnet_eager(x).numpy())


# ---- errors -------------------------------------------------------------------------------------

def refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_wrong_shape_unknown_model_and_bad_datatype_say_what_was_wrong(client, bundles):
    sm = bundles.resnet
    spec = sm.cuts[2].tensors[0]
    name = model_name("resnet18", 2)
    (t,) = sm.head(2)(image(6))

    err = refused(lambda: client.infer(name, [fp32_input(spec.name, t[:, :3])]))
    assert status(err) == "INVALID_ARGUMENT"
    assert f"{spec.name!r} has shape [1, 3," in err.message() and "expects shape" in err.message()

    err = refused(lambda: client.infer("nosuch", [fp32_input(spec.name, t)]))
    assert status(err) == "NOT_FOUND" and "unknown model 'nosuch'" in err.message()
    assert "resnet18" in err.message()  # what it does serve
    assert err.message().count("nosuch") == 1, err.message()  # said once, not nested

    err = refused(lambda: client.infer("resnet18.cut9999", [fp32_input(spec.name, t)]))
    assert status(err) == "NOT_FOUND" and "no cut 9999" in err.message()
    assert "model 'resnet18.cut9999'" in err.message()

    err = refused(lambda: client.infer(name, [fp32_input(spec.name, t)], model_version="77"))
    assert status(err) == "NOT_FOUND" and "no version '77'" in err.message()
    assert "it has ['1']" in err.message() and "unknown model" not in err.message()

    err = refused(lambda: client.get_model_metadata("nosuch"))
    assert status(err) == "NOT_FOUND"

    bad = tc.InferInput(spec.name, list(t.shape), "INT32")
    bad.set_data_from_numpy(np.zeros(tuple(t.shape), np.int32))
    err = refused(lambda: client.infer(name, [bad]))
    assert status(err) == "INVALID_ARGUMENT"
    assert "datatype INT32 does not fit; the model expects FP32" in err.message()
    assert "narrower float: FP16, BF16;" in err.message() and "'zero_points'" in err.message()

    err = refused(lambda: client.infer(name, [fp32_input("nope", t)]))
    assert status(err) == "INVALID_ARGUMENT" and f"inputs are ['{spec.name}']" in err.message()


def test_bad_quantization_parameters_are_invalid_argument(client, bundles):
    sm = bundles.resnet
    (t,) = sm.head(2)(image(7))
    enc = get_codec("int8").encode(t, name=sm.cuts[2].tensors[0].name)
    name = model_name("resnet18", 2)

    no_params = tc.InferInput(enc.name, list(enc.shape), "UINT8")
    no_params.set_data_from_numpy(np.zeros(enc.shape, np.uint8))
    err = refused(lambda: client.infer(name, [no_params]))
    assert status(err) == "INVALID_ARGUMENT" and "'scale'" in err.message()

    short = quantized_input(enc)
    short._get_tensor().parameters["scales"].string_param = "0.1,0.2"
    err = refused(lambda: client.infer(name, [short]))
    assert status(err) == "INVALID_ARGUMENT" and "has 2 value(s)" in err.message()

    for signed, zp, range_ in ((True, 128, "-128..127"), (False, -1, "0..255")):
        whole = quantized_input(type(enc)(name=enc.name, dtype="float32", shape=enc.shape,
                                          codec="int8", payload=enc.payload, scales=(0.1,),
                                          zero_points=(128,)), signed=signed)
        whole._get_tensor().parameters["zero_point"].int64_param = zp
        err = refused(lambda: client.infer(name, [whole]))
        assert status(err) == "INVALID_ARGUMENT", err.message()
        assert f"[{zp}] outside {range_}" in err.message(), err.message()  # the value sent

    negative = quantized_input(enc)
    negative._get_tensor().parameters["scales"].string_param = ",".join(["-1"] * enc.shape[1])
    err = refused(lambda: client.infer(name, [negative]))
    assert status(err) == "INVALID_ARGUMENT" and "scale" in err.message()


def test_a_payload_of_the_wrong_length_is_invalid_argument(main_node, bundles):
    spec = bundles.resnet.cuts[0].tensors[0]
    request = tpb.ModelInferRequest(model_name="resnet18")
    request.inputs.add(name=spec.name, datatype="FP32", shape=[1, 3, 64, 64])
    request.raw_input_contents.append(b"\0" * 100)
    stub = tpb_grpc.GRPCInferenceServiceStub(main_node.channel)
    with pytest.raises(Exception) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code().name == "INVALID_ARGUMENT"
    assert "100" in info.value.details()


def test_a_missing_token_is_unauthenticated(nodes, bundles, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    node = nodes(edge_config(bundles.repo(tmp_path / "repo", ("chain", "1")),
                             token_file=str(token_file)))
    client = tc.InferenceServerClient(node.target)
    x = tc.InferInput(bundles.chain.cuts[0].tensors[0].name, [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    try:
        err = refused(lambda: client.infer("chain", [x]))
        assert status(err) == "UNAUTHENTICATED" and "missing bearer token" in err.message()
        err = refused(lambda: client.is_server_ready())
        assert status(err) == "UNAUTHENTICATED"
        out = client.infer("chain", [x], headers={"authorization": f"Bearer {TOKEN}"})
        with torch.no_grad():
            want = bundles.chain_eager(torch.ones(1, 16)).numpy()
        assert np.array_equal(out.as_numpy(bundles.chain.output_specs[0].name), want)
    finally:
        client.close()


def test_tls_through_tritonclients_options(nodes, bundles, tmp_path, tls_files):
    repo = bundles.repo(tmp_path / "repo", ("chain", "1"))
    node = nodes(edge_config(repo, tls_cert=str(tls_files.server_cert),
                             tls_key=str(tls_files.server_key),
                             tls_client_ca=str(tls_files.ca)),
                 credentials=_mtls(tls_files))
    client = tc.InferenceServerClient(node.target, ssl=True,
                                      root_certificates=str(tls_files.ca),
                                      private_key=str(tls_files.client_key),
                                      certificate_chain=str(tls_files.client_cert))
    try:
        assert client.is_server_ready()
        x = tc.InferInput(bundles.chain.cuts[0].tensors[0].name, [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        with torch.no_grad():
            want = bundles.chain_eager(torch.ones(1, 16)).numpy()
        out = client.infer("chain", [x])
        assert np.array_equal(out.as_numpy(bundles.chain.output_specs[0].name), want)
    finally:
        client.close()
    plain = tc.InferenceServerClient(node.target)  # no TLS: the handshake fails
    try:
        err = refused(lambda: plain.is_server_live(client_timeout=5))
        assert status(err) in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    finally:
        plain.close()


def _mtls(tls_files):
    import grpc

    return grpc.ssl_channel_credentials(root_certificates=tls_files.ca.read_bytes(),
                                        private_key=tls_files.client_key.read_bytes(),
                                        certificate_chain=tls_files.client_cert.read_bytes())


def test_a_draining_node_is_not_ready_and_refuses_with_unavailable(nodes, bundles, tmp_path):
    node = nodes(edge_config(bundles.repo(tmp_path / "repo", ("chain", "1"))))
    client = tc.InferenceServerClient(node.target)
    x = tc.InferInput(bundles.chain.cuts[0].tensors[0].name, [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    try:
        client.infer("chain", [x])
        node.node.servicer.draining = True  # what EdgeNode.stop sets first
        assert not client.is_server_ready() and not client.is_model_ready("chain")
        err = refused(lambda: client.infer("chain", [x]))
        assert status(err) == "UNAVAILABLE" and "shutting down" in err.message()
    finally:
        client.close()


def test_oip_requests_are_counted_in_the_metrics(client, main_node, bundles):
    registry = main_node.node.metrics.registry

    def count(**labels) -> float:
        return registry.get_sample_value("splitinfer_edge_requests_total", labels) or 0.0

    ok = dict(model="resnet18", version="1", cut="2", status="OK")
    bad = dict(model="resnet18", version="1", cut="2", status="INVALID_ARGUMENT")
    unknown = dict(model="(unknown)", version="", cut="0", status="NOT_FOUND")
    before = count(**ok), count(**bad), count(**unknown)
    (t,) = bundles.resnet.head(2)(image(8))
    name = bundles.resnet.cuts[2].tensors[0].name
    client.infer("resnet18.cut2", [fp32_input(name, t)])
    refused(lambda: client.infer("resnet18.cut2", [fp32_input(name, t[:, :1])]))
    refused(lambda: client.infer("nosuch", [fp32_input(name, t)]))
    assert (count(**ok), count(**bad), count(**unknown)) == tuple(b + 1 for b in before)
