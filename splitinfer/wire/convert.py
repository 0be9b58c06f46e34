"""Conversions between splitinfer.v1 messages and core values; all message⇄tensor code is here.

Servicers and the device client call these and never touch message fields themselves. Parsing
rejects obviously malformed messages with ``WireError`` (unknown dtype, negative dims, quant
parameter counts that disagree, names too long); the size limits proper (rank, elements, bytes)
are the codec's decode job. Imports protobuf, never grpc or torch.

Payloads are copied only where protobuf forces it: once into a message when building, once out of
it when parsing. Tensors are written straight into their parent message (``add()``), because
assigning a finished ``Tensor`` message to a repeated field would copy the payload again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import DecodeError, Message

from splitinfer.codec import EncodedTensor
from splitinfer.core.errors import WireError
from splitinfer.core.spec import DTYPES, Cut, TensorSpec
from splitinfer.core.timing import StageTiming
from splitinfer.wire.v1 import inference_pb2, model_pb2, tensor_pb2

__all__ = [
    "InferCall", "InferResult", "ItemError", "ModelInfo", "encoded_to_proto",
    "encoded_from_proto", "spec_to_proto", "spec_from_proto", "cut_to_proto", "cut_from_proto",
    "timing_to_proto", "timing_from_proto", "build_infer_request", "parse_infer_request",
    "build_infer_response", "build_error_response", "parse_infer_response", "build_model_info",
    "parse_model_info", "parse_message_bytes",
]

#: Longest tensor name, model name, version, fingerprint or request id accepted.
MAX_NAME_CHARS = 256
#: Longest codec name accepted; real ones are like "int8+zstd".
MAX_CODEC_CHARS = 64
#: Most dims a tensor may have on the wire (the codec's ``Limits.max_rank`` is usually lower).
MAX_RANK = 64
#: Most tensors in one request or response.
MAX_TENSORS = 256

_CODEC_NAME = re.compile(r"[A-Za-z0-9_.+\-]+")
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class InferCall:
    """A parsed InferRequest: what to run and the tensors that crossed the cut."""

    request_id: str
    model: str
    version: str
    fingerprint: str
    cut_id: int
    tensors: tuple[EncodedTensor, ...]
    output_codec: str = ""


@dataclass(frozen=True)
class ItemError:
    """One failed item of a stream: a gRPC status code number and a message that says why."""

    code: int
    message: str


@dataclass(frozen=True)
class InferResult:
    """A parsed InferResponse: outputs and server timing, or the error of one stream item."""

    request_id: str
    outputs: tuple[EncodedTensor, ...]
    timing: StageTiming | None = None
    version: str = ""
    error: ItemError | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What an edge node serves for one model version (the GetModelInfo answer)."""

    model: str
    version: str
    fingerprint: str
    cuts: tuple[Cut, ...]
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    versions: tuple[str, ...] = ()
    #: measured tail latency (seconds, one sample) per cut id; cuts not measured yet are absent
    tail_latency_s: Mapping[int, float] = field(default_factory=dict, hash=False)
    queue_delay_s: float = 0.0
    codecs: tuple[str, ...] = ()


# ---- checks -----------------------------------------------------------------------------------

def _check_text(where: str, value: str, *, required: bool = False) -> str:
    if required and not value:
        raise WireError(f"{where} is empty; it is required")
    if len(value) > MAX_NAME_CHARS:
        raise WireError(f"{where} is {len(value)} characters long; the limit is {MAX_NAME_CHARS}")
    return value


def _check_codec(where: str, codec: str, *, required: bool = True) -> str:
    if not codec:
        if not required:
            return codec
        raise WireError(f"{where} is empty; name a codec such as 'fp16' or 'int8+zstd'")
    if len(codec) > MAX_CODEC_CHARS or not _CODEC_NAME.fullmatch(codec):
        raise WireError(f"{where} {codec[:MAX_CODEC_CHARS]!r} is not a codec name; expected at "
                        f"most {MAX_CODEC_CHARS} characters from [A-Za-z0-9_.+-]")
    return codec


def _check_dtype(where: str, dtype: str) -> str:
    if dtype not in DTYPES:
        raise WireError(f"{where} {dtype[:MAX_NAME_CHARS]!r} is unknown; expected one of "
                        f"{sorted(DTYPES)}")
    return dtype


def _check_seconds(where: str, value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise WireError(f"{where} is {value}; expected a finite number of seconds >= 0")
    return value


def _check_shape(where: str, dims: Sequence[int], lowest: int) -> tuple[int, ...]:
    if len(dims) > MAX_RANK:
        raise WireError(f"{where} has {len(dims)} dims; the limit is {MAX_RANK}")
    shape = tuple(dims)
    for i, d in enumerate(shape):
        if d < lowest:
            expected = "dims are >= 0" if lowest == 0 else "dims are >= 0, or -1 for dynamic"
            raise WireError(f"{where} {list(shape)} has dim {d} at index {i}; {expected}")
    return shape


def _check_quant(where: str, q: tensor_pb2.QuantParams,
                 shape: tuple[int, ...]) -> tuple[int | None, tuple[float, ...], tuple[int, ...]]:
    scales, zero_points = tuple(q.scales), tuple(q.zero_points)
    if len(scales) != len(zero_points):
        raise WireError(f"{where}.quant has {len(scales)} scales but {len(zero_points)} "
                        f"zero_points; they come in pairs")
    if not q.HasField("axis"):
        if len(scales) > 1:
            raise WireError(f"{where}.quant has {len(scales)} scales and no axis; without an "
                            f"axis there is one (scale, zero_point) pair or none")
        return None, scales, zero_points
    axis, rank = q.axis, len(shape)
    if not -rank <= axis < rank:
        raise WireError(f"{where}.quant.axis is {axis}; the tensor has rank {rank}, so the "
                        f"axis is in [{-rank}, {rank})")
    if len(scales) != shape[axis]:
        raise WireError(f"{where}.quant has {len(scales)} scales along axis {axis}; expected "
                        f"one per channel, shape[{axis}] = {shape[axis]}")
    return axis, scales, zero_points


# ---- tensors, specs, cuts, timing -------------------------------------------------------------

def _fill_tensor(msg: tensor_pb2.Tensor, enc: EncodedTensor) -> None:
    try:
        msg.name, msg.dtype, msg.codec = enc.name, enc.dtype, enc.codec
        msg.shape.extend(enc.shape)
        msg.payload = enc.payload if isinstance(enc.payload, bytes) else bytes(enc.payload)
        if enc.axis is not None or enc.scales or enc.zero_points:
            if enc.axis is not None:
                msg.quant.axis = enc.axis
            msg.quant.scales.extend(enc.scales)
            msg.quant.zero_points.extend(enc.zero_points)
    except (TypeError, ValueError) as e:
        raise WireError(f"tensor {enc.name!r} cannot be put in a message: {e}") from e


def encoded_to_proto(enc: EncodedTensor) -> tensor_pb2.Tensor:
    """Build a ``Tensor`` message from an encoded tensor."""
    msg = tensor_pb2.Tensor()
    _fill_tensor(msg, enc)
    return msg


def encoded_from_proto(msg: tensor_pb2.Tensor, where: str = "Tensor") -> EncodedTensor:
    """Read a ``Tensor`` message; raise ``WireError`` naming the field when it is malformed.

    ``where`` says where the message sits (``"InferRequest.tensors[2]"``) for error messages.
    """
    name = _check_text(f"{where}.name", msg.name)
    where = f"{where} {name!r}"
    dtype = _check_dtype(f"{where}: field 'dtype'", msg.dtype)
    codec = _check_codec(f"{where}: field 'codec'", msg.codec)
    shape = _check_shape(f"{where}: field 'shape'", msg.shape, lowest=0)
    axis: int | None = None
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    if msg.HasField("quant"):
        axis, scales, zero_points = _check_quant(where, msg.quant, shape)
    return EncodedTensor(name=name, dtype=dtype, shape=shape, codec=codec, payload=msg.payload,
                         scales=scales, zero_points=zero_points, axis=axis)


def _fill_spec(msg: tensor_pb2.TensorSpec, spec: TensorSpec) -> None:
    msg.name, msg.dtype = spec.name, spec.dtype
    msg.shape.extend(spec.shape)


def spec_to_proto(spec: TensorSpec) -> tensor_pb2.TensorSpec:
    """Build a ``TensorSpec`` message; -1 dims stay -1 (dynamic)."""
    msg = tensor_pb2.TensorSpec()
    _fill_spec(msg, spec)
    return msg


def spec_from_proto(msg: tensor_pb2.TensorSpec, where: str = "TensorSpec") -> TensorSpec:
    """Read a ``TensorSpec`` message; dims are >= 0 or -1 (dynamic)."""
    name = _check_text(f"{where}.name", msg.name)
    where = f"{where} {name!r}"
    dtype = _check_dtype(f"{where}: field 'dtype'", msg.dtype)
    shape = _check_shape(f"{where}: field 'shape'", msg.shape, lowest=-1)
    return TensorSpec(name=name, shape=shape, dtype=dtype)


def _fill_cut(msg: model_pb2.Cut, cut: Cut) -> None:
    msg.id, msg.name = cut.id, cut.name
    msg.head_nodes, msg.head_flops_fraction = cut.head_nodes, cut.head_flops_fraction
    for spec in cut.tensors:
        _fill_spec(msg.tensors.add(), spec)


def cut_to_proto(cut: Cut) -> model_pb2.Cut:
    """Build a ``Cut`` message."""
    msg = model_pb2.Cut()
    _fill_cut(msg, cut)
    return msg


def cut_from_proto(msg: model_pb2.Cut, where: str = "Cut") -> Cut:
    """Read a ``Cut`` message."""
    if msg.id < 0:
        raise WireError(f"{where}.id is {msg.id}; cut ids are >= 0")
    where = f"{where} {msg.id}"
    frac = msg.head_flops_fraction
    if not (math.isfinite(frac) and 0.0 <= frac <= 1.0):
        raise WireError(f"{where}: field 'head_flops_fraction' is {frac}; expected 0..1")
    if msg.head_nodes < 0:
        raise WireError(f"{where}: field 'head_nodes' is {msg.head_nodes}; expected >= 0")
    tensors = tuple(spec_from_proto(t, f"{where}.tensors[{i}]") for i, t in enumerate(msg.tensors))
    return Cut(id=msg.id, name=_check_text(f"{where}.name", msg.name), tensors=tensors,
               head_nodes=msg.head_nodes, head_flops_fraction=frac)


def timing_to_proto(timing: StageTiming) -> inference_pb2.StageTiming:
    """Build a ``StageTiming`` message (seconds per stage)."""
    return inference_pb2.StageTiming(queue_s=timing.queue_s, decode_s=timing.decode_s,
                                     compute_s=timing.compute_s, encode_s=timing.encode_s)


def timing_from_proto(msg: inference_pb2.StageTiming,
                      where: str = "StageTiming") -> StageTiming:
    """Read a ``StageTiming`` message; every stage is a finite number of seconds >= 0."""
    try:
        return StageTiming(queue_s=msg.queue_s, decode_s=msg.decode_s,
                           compute_s=msg.compute_s, encode_s=msg.encode_s)
    except ValueError as e:
        raise WireError(f"{where}: {e}") from e


# ---- requests and responses -------------------------------------------------------------------

def _add_tensors(repeated: RepeatedCompositeFieldContainer[tensor_pb2.Tensor],
                 tensors: Iterable[EncodedTensor]) -> None:
    for enc in tensors:
        _fill_tensor(repeated.add(), enc)


def _read_tensors(where: str, msgs: Sequence[tensor_pb2.Tensor]) -> tuple[EncodedTensor, ...]:
    if len(msgs) > MAX_TENSORS:
        raise WireError(f"{where} holds {len(msgs)} tensors; the limit is {MAX_TENSORS}")
    tensors = tuple(encoded_from_proto(t, f"{where}[{i}]") for i, t in enumerate(msgs))
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise WireError(f"{where} holds two tensors named {t.name!r}; names are unique")
        seen.add(t.name)
    return tensors


def build_infer_request(*, model: str, version: str, fingerprint: str, cut_id: int,
                        tensors: Iterable[EncodedTensor], request_id: str,
                        output_codec: str = "") -> inference_pb2.InferRequest:
    """Build an ``InferRequest``; ``version=""`` means the newest, ``output_codec=""`` the
    edge node's default."""
    msg = inference_pb2.InferRequest(model=model, version=version, fingerprint=fingerprint,
                                     cut_id=cut_id, request_id=request_id,
                                     output_codec=output_codec)
    _add_tensors(msg.tensors, tensors)
    return msg


def parse_infer_request(msg: inference_pb2.InferRequest) -> InferCall:
    """Read an ``InferRequest``; raise ``WireError`` naming the field when it is malformed."""
    if msg.cut_id < 0:
        raise WireError(f"InferRequest.cut_id is {msg.cut_id}; cut ids are >= 0")
    if not msg.tensors:
        raise WireError("InferRequest.tensors is empty; send the tensors of the cut")
    return InferCall(
        request_id=_check_text("InferRequest.request_id", msg.request_id),
        model=_check_text("InferRequest.model", msg.model, required=True),
        version=_check_text("InferRequest.version", msg.version),
        fingerprint=_check_text("InferRequest.fingerprint", msg.fingerprint),
        cut_id=msg.cut_id,
        tensors=_read_tensors("InferRequest.tensors", msg.tensors),
        output_codec=_check_codec("InferRequest.output_codec", msg.output_codec, required=False),
    )


def build_infer_response(*, request_id: str, outputs: Iterable[EncodedTensor],
                         timing: StageTiming | None = None,
                         version: str = "") -> inference_pb2.InferResponse:
    """Build a successful ``InferResponse``."""
    msg = inference_pb2.InferResponse(request_id=request_id, version=version)
    _add_tensors(msg.outputs, outputs)
    if timing is not None:
        msg.timing.CopyFrom(timing_to_proto(timing))
    return msg


def build_error_response(*, request_id: str, code: int, message: str,
                         timing: StageTiming | None = None) -> inference_pb2.InferResponse:
    """Build the ``InferResponse`` of one failed stream item (``code``: a gRPC status number)."""
    if code == 0:
        raise WireError("build_error_response: code 0 is OK; pass the gRPC status code number")
    msg = inference_pb2.InferResponse(request_id=request_id)
    msg.error.code, msg.error.message = code, message
    if timing is not None:
        msg.timing.CopyFrom(timing_to_proto(timing))
    return msg


def parse_infer_response(msg: inference_pb2.InferResponse) -> InferResult:
    """Read an ``InferResponse``; an item error comes back in ``InferResult.error``."""
    error = None
    if msg.HasField("error"):
        if msg.error.code == 0:
            raise WireError("InferResponse.error.code is 0 (OK); an error needs a non-zero code")
        error = ItemError(code=msg.error.code, message=msg.error.message)
    timing = None
    if msg.HasField("timing"):
        timing = timing_from_proto(msg.timing, "InferResponse.timing")
    return InferResult(
        request_id=_check_text("InferResponse.request_id", msg.request_id),
        outputs=_read_tensors("InferResponse.outputs", msg.outputs),
        timing=timing,
        version=_check_text("InferResponse.version", msg.version),
        error=error,
    )


# ---- model info -------------------------------------------------------------------------------

def build_model_info(info: ModelInfo) -> model_pb2.ModelInfoResponse:
    """Build the ``ModelInfoResponse`` that GetModelInfo answers with."""
    msg = model_pb2.ModelInfoResponse(model=info.model, version=info.version,
                                      fingerprint=info.fingerprint, versions=info.versions,
                                      queue_delay_s=info.queue_delay_s, codecs=info.codecs)
    for spec in info.inputs:
        _fill_spec(msg.inputs.add(), spec)
    for spec in info.outputs:
        _fill_spec(msg.outputs.add(), spec)
    for cut in info.cuts:
        entry = msg.cuts.add()
        _fill_cut(entry.cut, cut)
        if cut.id in info.tail_latency_s:
            entry.tail_latency_s = info.tail_latency_s[cut.id]
    return msg


def parse_model_info(msg: model_pb2.ModelInfoResponse) -> ModelInfo:
    """Read a ``ModelInfoResponse``."""
    cuts, latency = [], {}
    for i, entry in enumerate(msg.cuts):
        cut = cut_from_proto(entry.cut, f"ModelInfoResponse.cuts[{i}]")
        cuts.append(cut)
        if entry.HasField("tail_latency_s"):
            latency[cut.id] = _check_seconds(f"ModelInfoResponse.cuts[{i}].tail_latency_s",
                                             entry.tail_latency_s)
    return ModelInfo(
        model=_check_text("ModelInfoResponse.model", msg.model, required=True),
        version=_check_text("ModelInfoResponse.version", msg.version),
        fingerprint=_check_text("ModelInfoResponse.fingerprint", msg.fingerprint),
        cuts=tuple(cuts),
        inputs=tuple(spec_from_proto(s, f"ModelInfoResponse.inputs[{i}]")
                     for i, s in enumerate(msg.inputs)),
        outputs=tuple(spec_from_proto(s, f"ModelInfoResponse.outputs[{i}]")
                      for i, s in enumerate(msg.outputs)),
        versions=tuple(_check_text("ModelInfoResponse.versions[]", v) for v in msg.versions),
        tail_latency_s=latency,
        queue_delay_s=_check_seconds("ModelInfoResponse.queue_delay_s", msg.queue_delay_s),
        codecs=tuple(_check_codec("ModelInfoResponse.codecs[]", c) for c in msg.codecs),
    )


def parse_message_bytes(message_type: type[M], data: bytes) -> M:
    """Parse serialized bytes into ``message_type``; garbage raises ``WireError``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected the bytes of a {message_type.DESCRIPTOR.full_name} message, "
                        f"got {type(data).__name__}")
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except DecodeError as e:
        raise WireError(f"{len(data)} bytes are not a valid {message_type.DESCRIPTOR.full_name} "
                        f"message ({e}); was it sent by a splitinfer.v1 peer?") from e
    return msg
