"""Message ⇄ core value conversions in splitinfer.wire.convert, and the wire contract itself."""

from __future__ import annotations

import dataclasses

import pytest

from splitinfer.codec import EncodedTensor
from splitinfer.core.errors import WireError
from splitinfer.core.spec import Cut, TensorSpec
from splitinfer.core.timing import StageTiming
from splitinfer.wire import convert
from splitinfer.wire.v1 import inference_pb2, model_pb2, service_pb2, tensor_pb2

pytestmark = pytest.mark.unit

FP16 = EncodedTensor(name="layer3.out", dtype="float32", shape=(2, 3, 4), codec="fp16",
                     payload=bytes(range(48)))
INT8_PER_CHANNEL = EncodedTensor(name="x", dtype="float32", shape=(1, 2), codec="int8",
                                 payload=bytes([1, 255]), scales=(0.5, 0.25),
                                 zero_points=(0, -3), axis=1)
INT8_PER_TENSOR = EncodedTensor(name="y", dtype="bfloat16", shape=(4,), codec="int8+zstd",
                                payload=b"\x28\xb5\x2f\xfd", scales=(0.1,), zero_points=(7,))
SCALAR = EncodedTensor(name="s", dtype="int64", shape=(), codec="fp32", payload=b"\0" * 8)
EMPTY = EncodedTensor(name="e", dtype="bool", shape=(0, 5), codec="fp32", payload=b"")


def through_bytes(msg):
    """Serialize and parse again, as the network would."""
    return type(msg).FromString(msg.SerializeToString())


def tensor_msg(**changes) -> tensor_pb2.Tensor:
    msg = convert.encoded_to_proto(INT8_PER_CHANNEL)
    for name, value in changes.items():
        msg.ClearField(name)
        if isinstance(value, (list, tuple)):
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return msg


# ---- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("enc", [FP16, INT8_PER_CHANNEL, INT8_PER_TENSOR, SCALAR, EMPTY],
                         ids=lambda e: e.codec + ":" + e.name)
def test_encoded_tensor_round_trips_through_bytes(enc):
    back = convert.encoded_from_proto(through_bytes(convert.encoded_to_proto(enc)))
    assert back == enc
    assert type(back.payload) is bytes and type(back.shape) is tuple


def test_negative_quant_axis_round_trips():
    enc = dataclasses.replace(INT8_PER_CHANNEL, axis=-1)
    assert convert.encoded_from_proto(through_bytes(convert.encoded_to_proto(enc))) == enc


def test_tensor_golden_bytes():
    # Field numbers and types are the wire contract: this must never change within v1.
    golden = bytes.fromhex(
        "0a01781207666c6f617433321a0201022204696e74382a2108011210000000000000e03f"
        "000000000000d03f1a0b00fdffffffffffffffff01320201ff")
    assert convert.encoded_to_proto(INT8_PER_CHANNEL).SerializeToString() == golden
    assert convert.encoded_from_proto(tensor_pb2.Tensor.FromString(golden)) == INT8_PER_CHANNEL


def test_codec_without_quant_leaves_quant_unset():
    assert not convert.encoded_to_proto(FP16).HasField("quant")


def test_spec_round_trips_with_dynamic_dims():
    spec = TensorSpec(name="input", shape=(-1, 3, 224, 224), dtype="float32")
    assert convert.spec_from_proto(through_bytes(convert.spec_to_proto(spec))) == spec


def test_cut_round_trips():
    cut = Cut(id=3, name="layer2", head_nodes=41, head_flops_fraction=0.375,
              tensors=(TensorSpec("a", (-1, 64, 28, 28), "float32"),
                       TensorSpec("mask", (-1, 28), "bool")))
    assert convert.cut_from_proto(through_bytes(convert.cut_to_proto(cut))) == cut


def test_request_round_trips():
    msg = convert.build_infer_request(model="resnet18", version="3", fingerprint="sha256:ab12",
                                      cut_id=2, tensors=[FP16, INT8_PER_TENSOR],
                                      request_id="req-7", output_codec="fp16+zstd")
    call = convert.parse_infer_request(through_bytes(msg))
    assert call == convert.InferCall(request_id="req-7", model="resnet18", version="3",
                                     fingerprint="sha256:ab12", cut_id=2,
                                     tensors=(FP16, INT8_PER_TENSOR), output_codec="fp16+zstd")


def test_response_round_trips_with_timing():
    timing = StageTiming(queue_s=0.001, decode_s=0.0002, compute_s=0.0125, encode_s=0.0003)
    msg = convert.build_infer_response(request_id="req-7", outputs=[SCALAR], timing=timing,
                                       version="3")
    result = convert.parse_infer_response(through_bytes(msg))
    assert result == convert.InferResult(request_id="req-7", outputs=(SCALAR,), timing=timing,
                                         version="3", error=None)
    assert result.timing.total_s == pytest.approx(0.014)


def test_error_response_round_trips():
    msg = convert.build_error_response(request_id="frame-9", code=3, message="bad shape")
    result = convert.parse_infer_response(through_bytes(msg))
    assert result.error == convert.ItemError(code=3, message="bad shape")
    assert result.outputs == () and result.timing is None


def test_model_info_round_trips():
    cuts = (Cut(id=0, name="input", tensors=(TensorSpec("x", (-1, 3, 32, 32), "float32"),)),
            Cut(id=1, name="layer1", tensors=(TensorSpec("h", (-1, 16), "float32"),),
                head_nodes=5, head_flops_fraction=0.5))
    info = convert.ModelInfo(
        model="tiny", version="2", fingerprint="abc", cuts=cuts,
        inputs=(TensorSpec("x", (-1, 3, 32, 32), "float32"),),
        outputs=(TensorSpec("logits", (-1, 10), "float32"),),
        versions=("1", "2"), tail_latency_s={1: 0.004}, queue_delay_s=0.002,
        codecs=("fp32", "int8+zstd"))
    back = convert.parse_model_info(through_bytes(convert.build_model_info(info)))
    assert back == info
    assert back.tail_latency_s == {1: 0.004}  # cut 0 not measured: absent, not 0.0


# ---- malformed messages -----------------------------------------------------------------------

@pytest.mark.parametrize("changes, words", [
    ({"shape": [1, -2]}, ["shape", "-2", ">= 0"]),
    ({"shape": [1] * 65}, ["65 dims", "64"]),
    ({"dtype": "complex256"}, ["dtype", "complex256", "float32"]),
    ({"dtype": ""}, ["dtype"]),
    ({"codec": ""}, ["codec", "empty"]),
    ({"codec": "int8; rm -rf"}, ["codec", "not a codec name"]),
    ({"codec": "z" * 65}, ["codec", "64"]),
    ({"name": "n" * 257}, ["name", "257", "256"]),
])
def test_malformed_tensor_is_refused(changes, words):
    with pytest.raises(WireError) as info:
        convert.encoded_from_proto(tensor_msg(**changes))
    for word in words:
        assert word in str(info.value)


def test_malformed_error_names_the_tensor():
    with pytest.raises(WireError, match=r"Tensor 'x': field 'shape'"):
        convert.encoded_from_proto(tensor_msg(shape=[-1, 2]))


@pytest.mark.parametrize("edit, match", [
    (lambda q: q.zero_points.append(1), r"2 scales but 3 zero_points"),
    (lambda q: setattr(q, "axis", 2), r"axis is 2.*rank 2"),
    (lambda q: setattr(q, "axis", -3), r"axis is -3"),
    (lambda q: setattr(q, "axis", 0), r"2 scales along axis 0.*shape\[0\] = 1"),
    (lambda q: q.ClearField("axis"), r"2 scales and no axis"),
])
def test_malformed_quant_params_are_refused(edit, match):
    msg = tensor_msg()
    edit(msg.quant)
    with pytest.raises(WireError, match=match):
        convert.encoded_from_proto(msg)


def test_spec_dims_below_dynamic_are_refused():
    msg = tensor_pb2.TensorSpec(name="x", dtype="float32", shape=[-1, -2])
    with pytest.raises(WireError, match=r"TensorSpec 'x': field 'shape'.*-2"):
        convert.spec_from_proto(msg)


def request_msg(**changes) -> inference_pb2.InferRequest:
    fields = dict(model="m", version="", fingerprint="f", cut_id=1, tensors=[FP16],
                  request_id="r", output_codec="")
    fields.update(changes)
    return convert.build_infer_request(**fields)


@pytest.mark.parametrize("changes, match", [
    ({"model": ""}, r"InferRequest.model is empty"),
    ({"cut_id": -1}, r"InferRequest.cut_id is -1"),
    ({"tensors": []}, r"InferRequest.tensors is empty"),
    ({"tensors": [FP16, FP16]}, r"two tensors named 'layer3.out'"),
    ({"tensors": [FP16, dataclasses.replace(SCALAR, dtype="int3")]},
     r"InferRequest.tensors\[1\] 's': field 'dtype'"),
    ({"output_codec": "fp16 zstd"}, r"InferRequest.output_codec"),
    ({"request_id": "r" * 300}, r"InferRequest.request_id is 300 characters"),
])
def test_malformed_request_is_refused(changes, match):
    with pytest.raises(WireError, match=match):
        convert.parse_infer_request(through_bytes(request_msg(**changes)))


def test_response_error_with_ok_code_is_refused():
    msg = inference_pb2.InferResponse(request_id="r", error=inference_pb2.Status(code=0))
    with pytest.raises(WireError, match=r"error.code is 0"):
        convert.parse_infer_response(msg)


def test_negative_timing_is_refused():
    msg = inference_pb2.InferResponse(request_id="r",
                                      timing=inference_pb2.StageTiming(compute_s=-1.0))
    with pytest.raises(WireError, match=r"InferResponse.timing.*compute_s"):
        convert.parse_infer_response(msg)


def test_model_info_bad_cut_is_refused():
    msg = model_pb2.ModelInfoResponse(model="m")
    msg.cuts.add().cut.head_flops_fraction = 1.5
    with pytest.raises(WireError, match=r"cuts\[0\].*head_flops_fraction"):
        convert.parse_model_info(msg)


def test_garbage_bytes_raise_wire_error():
    with pytest.raises(WireError, match=r"not a valid splitinfer.v1.InferRequest"):
        convert.parse_message_bytes(inference_pb2.InferRequest, b"\xff\xff\xff\xff garbage")
    with pytest.raises(WireError, match=r"expected the bytes"):
        convert.parse_message_bytes(inference_pb2.InferRequest, "not bytes")  # type: ignore
    msg = convert.parse_message_bytes(inference_pb2.InferRequest,
                                      request_msg().SerializeToString())
    assert convert.parse_infer_request(msg).tensors == (FP16,)


# ---- the service contract ---------------------------------------------------------------------

def test_service_has_the_four_rpcs():
    service = service_pb2.DESCRIPTOR.services_by_name["EdgeInference"]
    assert service.full_name == "splitinfer.v1.EdgeInference"
    shapes = {m.name: (m.input_type.name, m.output_type.name, m.client_streaming,
                       m.server_streaming) for m in service.methods}
    assert shapes == {
        "Infer": ("InferRequest", "InferResponse", False, False),
        "InferStream": ("InferRequest", "InferResponse", True, True),
        "GetModelInfo": ("ModelInfoRequest", "ModelInfoResponse", False, False),
        "Probe": ("ProbeRequest", "ProbeResponse", False, False),
    }


def test_quant_axis_has_presence():
    assert tensor_pb2.QuantParams.DESCRIPTOR.fields_by_name["axis"].has_presence
    assert model_pb2.CutInfo.DESCRIPTOR.fields_by_name["tail_latency_s"].has_presence
