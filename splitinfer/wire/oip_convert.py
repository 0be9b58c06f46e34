"""The Open Inference Protocol (KServe v2 / Triton gRPC) ⇄ splitinfer values; all OIP message code.

The edge node serves every cut of a bundle as an OIP model, and the device client can use any
OIP server as its edge; both convert here, never touching message fields themselves. Imports
protobuf and numpy, never grpc or torch.

Naming: the bundle's name is the whole model (cut 0: its own inputs); ``<bundle>.cut<ID>`` is
the tail after cut ID, its inputs the tensors that cross that cut (:func:`model_name`,
:func:`parse_model_name`). A bundle whose own name ends in ``.cut<digits>`` keeps that name for
cut 0 (the node looks the whole name up first).

Tensors: an input travels in the cut's own dtype (``FP32``, ``INT64``, ...; raw bytes in
``raw_input_contents`` or typed ``contents``), or, for a float input, compressed as an OIP
datatype with its parameters (:data:`QUANT_PARAMS`):

    FP16, BF16      rounded floats (no parameters)
    UINT8           affine codes, real = scale * (q - zero_point): parameters ``scale`` (double)
                    and ``zero_point`` (int64) for the whole tensor, or per channel ``axis``
                    (int64) with ``scales`` and ``zero_points`` (strings: comma-separated, one
                    per channel along ``axis``)
    INT8            the same with signed codes (q in -128..127)

They become the codecs ``raw``, ``fp16``, ``bf16`` and ``int8`` of :mod:`splitinfer.codec`,
whose checks (shape and size limits, payload length, parameters) then apply as to our own
protocol. Outputs travel raw in their own dtype. A request may carry the bundle's fingerprint as
the string parameter ``fingerprint`` (checked when given); the node's stage times come back as
double parameters ``queue_s``, ``decode_s``, ``compute_s``, ``encode_s``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitinfer.codec import EncodedTensor
from splitinfer.core.errors import InvalidRequest, WireError
from splitinfer.core.spec import DTYPES, TensorSpec
from splitinfer.core.timing import StageTiming
from splitinfer.wire.oip import grpc_service_pb2 as pb

__all__ = [
    "DATATYPES", "DTYPES_OF", "OIP_CODECS", "QUANT_PARAMS", "TIMING_PARAMS", "OipCall", "model_name",
    "parse_model_name", "set_parameter", "quant_parameters", "parse_infer_request", "build_infer_request",
    "build_infer_response", "parse_infer_response", "build_model_metadata",
    "parse_model_metadata", "tensor_metadata",
]

#: our dtype -> OIP datatype
DATATYPES: dict[str, str] = {
    "float32": "FP32", "float16": "FP16", "bfloat16": "BF16", "float64": "FP64",
    "int64": "INT64", "int32": "INT32", "int16": "INT16", "int8": "INT8", "uint8": "UINT8",
    "bool": "BOOL",
}
#: OIP datatype -> our dtype
DTYPES_OF: dict[str, str] = {v: k for k, v in DATATYPES.items()}
#: tensor parameters of a quantized (UINT8/INT8) float input
QUANT_PARAMS = ("scale", "zero_point", "axis", "scales", "zero_points")
#: the codecs whose payloads have an OIP form (:func:`build_infer_request`); zstd and the image
#: codecs have none
OIP_CODECS = ("raw", "fp32", "fp16", "bf16", "int8")
#: response parameters with the node's stage times, in seconds
TIMING_PARAMS = ("queue_s", "decode_s", "compute_s", "encode_s")

_CUT_NAME = re.compile(r"(.+)\.cut(\d{1,6})")
_FLOATS = ("float32", "float64", "float16", "bfloat16")
# a float datatype sent for a float32/float64 input, and the codec that reads it
_FLOAT_CODECS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# typed contents field per OIP datatype, and the numpy dtype its values are read as
_CONTENTS = {"FP32": ("fp32_contents", "<f4"), "FP64": ("fp64_contents", "<f8"),
             "INT64": ("int64_contents", "<i8"), "INT32": ("int_contents", "<i4"),
             "INT16": ("int_contents", "<i2"), "INT8": ("int_contents", "i1"),
             "UINT8": ("uint_contents", "u1"), "BOOL": ("bool_contents", "?")}
_MAX_TENSORS = 256
_MAX_RANK = 64
_MAX_NAME = 256


def model_name(bundle: str, cut_id: int) -> str:
    """The OIP model name of ``bundle``'s tail after cut ``cut_id`` (cut 0: the bundle's name)."""
    return bundle if cut_id == 0 else f"{bundle}.cut{cut_id}"


def parse_model_name(name: str) -> tuple[str, int]:
    """(bundle, cut id) of an OIP model name; a name without ``.cut<ID>`` is cut 0."""
    m = _CUT_NAME.fullmatch(name)
    return (m.group(1), int(m.group(2))) if m else (name, 0)


@dataclass(frozen=True)
class OipCall:
    """A parsed ModelInferRequest, its inputs in the order given (names checked later)."""

    request_id: str
    model: str
    version: str
    fingerprint: str
    tensors: tuple[EncodedTensor, ...]
    outputs: tuple[str, ...]  # requested outputs; empty: all


# ---- parameters -------------------------------------------------------------------------------

def _param(params: Mapping[str, pb.InferParameter], key: str) -> bool | int | float | str | None:
    if key not in params:
        return None
    p = params[key]
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _int_param(params: Mapping[str, pb.InferParameter], key: str, where: str) -> int | None:
    value = _param(params, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{where}: parameter {key!r} must be an int64_param; got "
                        f"{type(value).__name__} {value!r}")
    return value


def _float_param(params: Mapping[str, pb.InferParameter], key: str, where: str) -> float | None:
    value = _param(params, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{where}: parameter {key!r} must be a double_param; got "
                        f"{type(value).__name__} {value!r}")
    return float(value)


def _list_param(params: Mapping[str, pb.InferParameter], key: str, where: str,
                kind: type[float] | type[int], count: int) -> tuple[float, ...] | tuple[int, ...]:
    value = _param(params, key)
    if not isinstance(value, str):
        raise WireError(f"{where}: per-channel parameter {key!r} must be a string_param of "
                        f"{count} comma-separated numbers; got {value!r}")
    items = value.split(",") if value else []
    if len(items) != count:
        raise WireError(f"{where}: parameter {key!r} has {len(items)} value(s); axis has "
                        f"{count} channel(s)")
    try:
        return tuple(kind(v) for v in items)
    except ValueError:
        raise WireError(f"{where}: parameter {key!r} holds a value that is not "
                        f"{'a number' if kind is float else 'an integer'}: {value[:80]!r}"
                        ) from None


def set_parameter(params: Mapping[str, Any], key: str, value: float | int | str) -> None:
    """Set ``params[key]`` (a map of OIP ``InferParameter``: ours, tritonclient's ``InferInput.
    _get_tensor().parameters``, any generated copy) to a string, int64 or double parameter."""
    p = params[key]  # a map of messages: indexing adds the entry
    if isinstance(value, str):
        p.string_param = value
    elif isinstance(value, int):
        p.int64_param = value
    else:
        p.double_param = value


def quant_parameters(axis: int | None, scales: Sequence[float], zero_points: Sequence[int]
                     ) -> dict[str, float | int | str]:
    """The tensor parameters of UINT8/INT8 codes: ``scale`` (double) and ``zero_point`` (int64)
    for the whole tensor (``axis`` None), else ``axis`` (int64) with comma-separated ``scales``
    and ``zero_points`` (strings); each value for :func:`set_parameter`."""
    if axis is None:
        return {"scale": float(scales[0]), "zero_point": int(zero_points[0])}
    return {"axis": int(axis), "scales": ",".join(repr(float(s)) for s in scales),
            "zero_points": ",".join(str(int(z)) for z in zero_points)}


# ---- requests ---------------------------------------------------------------------------------

def _shape(dims: Sequence[int], where: str) -> tuple[int, ...]:
    if len(dims) > _MAX_RANK:
        raise WireError(f"{where}: shape has {len(dims)} dims; the limit is {_MAX_RANK}")
    if any(d < 0 for d in dims):
        raise WireError(f"{where}: shape {list(dims)} has a negative dim; OIP tensors in a "
                        "request have concrete dims")
    return tuple(int(d) for d in dims)


def _contents_bytes(t: Any, shape: tuple[int, ...], where: str) -> bytes:
    """Typed contents as little-endian bytes of the tensor's datatype."""
    if t.datatype not in _CONTENTS:
        raise WireError(f"{where}: datatype {t.datatype} cannot travel as typed contents; send "
                        "it in raw_input_contents")
    field, np_dtype = _CONTENTS[t.datatype]
    values = getattr(t.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise WireError(f"{where}: contents.{field} holds {len(values)} value(s); shape "
                        f"{list(shape)} needs {count}")
    arr = np.asarray(values)
    if np.dtype(np_dtype).kind in "iu" and len(arr):
        info = np.iinfo(np_dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise WireError(f"{where}: contents.{field} holds values outside {t.datatype}'s "
                            f"range {info.min}..{info.max}")
    return arr.astype(np_dtype).tobytes()


def _quant(t: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...], where: str
           ) -> tuple[tuple[float, ...], tuple[int, ...], int | None]:
    """(scales, zero points, axis) of a UINT8/INT8 input that carries a float tensor."""
    params = t.parameters
    axis = _int_param(params, "axis", where)
    if axis is None:
        scale = _float_param(params, "scale", where)
        zp = _int_param(params, "zero_point", where)
        if scale is None or zp is None:
            raise WireError(f"{where}: a {t.datatype} input for a float tensor needs the "
                            "parameters 'scale' (double_param) and 'zero_point' (int64_param), "
                            "or 'axis' (int64_param) with per-channel 'scales' and "
                            "'zero_points' (string_param, comma-separated)")
        return (scale,), (zp,), None
    if not -len(shape) <= axis < len(shape):
        raise WireError(f"{where}: parameter 'axis' {axis} is outside the tensor's "
                        f"{len(shape)} dims")
    n = shape[axis]
    scales = _list_param(params, "scales", where, float, n)
    zps = _list_param(params, "zero_points", where, int, n)
    return tuple(float(s) for s in scales), tuple(int(z) for z in zps), axis


def input_tensor(t: pb.ModelInferRequest.InferInputTensor, raw: bytes | None,
                 spec: TensorSpec, where: str) -> EncodedTensor:
    """One OIP input as the EncodedTensor that the codecs check and decode into ``spec``'s dtype.

    Payload lengths, limits and parameter values are the codec's checks (``codec.check``)."""
    shape = _shape(t.shape, where)
    wire = DTYPES_OF.get(t.datatype)
    if wire is None:
        raise InvalidRequest(f"{where}: datatype {t.datatype!r} is not supported; the model "
                             f"expects {DATATYPES[spec.dtype]}" + _alternatives(spec))
    payload = raw if raw is not None else _contents_bytes(t, shape, where)
    quantized = any(k in t.parameters for k in QUANT_PARAMS)
    if wire == spec.dtype and not quantized:
        return EncodedTensor(name=t.name, dtype=spec.dtype, shape=shape, codec="raw",
                             payload=payload)
    if spec.dtype in ("float32", "float64"):
        if wire in _FLOAT_CODECS and not quantized:  # a narrower float, widened on decode
            return EncodedTensor(name=t.name, dtype=spec.dtype, shape=shape,
                                 codec=_FLOAT_CODECS[wire], payload=payload)
        if wire in ("uint8", "int8"):
            scales, zps, axis = _quant(t, shape, where)
            low, high = (-128, 127) if wire == "int8" else (0, 255)
            bad = [z for z in zps if not low <= z <= high]
            if bad:  # checked here, before the shift below would hide the value sent
                raise InvalidRequest(f"{where}: zero point(s) {bad[:4]} outside {low}..{high}, "
                                     f"the range of {t.datatype} codes")
            if wire == "int8":  # signed codes: shift to the codec's unsigned ones (exact)
                payload = (np.frombuffer(payload, np.uint8) ^ 0x80).tobytes()
                zps = tuple(z + 128 for z in zps)
            return EncodedTensor(name=t.name, dtype=spec.dtype, shape=shape, codec="int8",
                                 payload=payload, scales=scales, zero_points=zps, axis=axis)
    if quantized:
        raise InvalidRequest(f"{where}: quantization parameters come only with a UINT8 or INT8 "
                             f"input for a float tensor; this one is {t.datatype} and the model "
                             f"expects {DATATYPES[spec.dtype]}")
    raise InvalidRequest(f"{where}: datatype {t.datatype} does not fit; the model expects "
                         f"{DATATYPES[spec.dtype]}" + _alternatives(spec))


def _alternatives(spec: TensorSpec) -> str:
    if spec.dtype in ("float32", "float64"):
        floats = "FP16, BF16" if spec.dtype == "float32" else "FP32, FP16, BF16"
        return (f" (or a narrower float: {floats}; or UINT8/INT8 codes with the parameters "
                "'scale' and 'zero_point', or per channel 'axis', 'scales' and 'zero_points')")
    return ""


def _text(where: str, value: str) -> str:
    if len(value) > _MAX_NAME:
        raise WireError(f"{where} is {len(value)} characters long; the limit is {_MAX_NAME}")
    return value


def parse_infer_request(request: pb.ModelInferRequest,
                        specs: Mapping[str, TensorSpec] | None = None,
                        order: Sequence[str] = ()) -> OipCall:
    """Check a ModelInferRequest against the served model and return its inputs, in ``order``.

    ``specs``: the model's inputs by name (the cut's tensors); None parses without them (the
    inputs then keep the datatype they came with, raw). Every name must be given once, none
    unknown.
    """
    model = _text("model_name", request.model_name)
    if not model:
        raise WireError("model_name is empty; name the model (the bundle, or "
                        "<bundle>.cut<ID> for the tail after a cut)")
    n = len(request.inputs)
    if n > _MAX_TENSORS:
        raise WireError(f"the request has {n} inputs; the limit is {_MAX_TENSORS}")
    raws = list(request.raw_input_contents)
    if raws and len(raws) != n:
        raise WireError(f"raw_input_contents has {len(raws)} entries for {n} input(s); give "
                        "one per input, in order, or none (typed contents)")
    fingerprint = _param(request.parameters, "fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise WireError("parameter 'fingerprint' must be a string_param")
    tensors: dict[str, EncodedTensor] = {}
    for i, t in enumerate(request.inputs):
        name = _text(f"inputs[{i}].name", t.name)
        where = f"input {name!r}"
        if name in tensors:
            raise InvalidRequest(f"{where} is given twice")
        if specs is None:
            dtype = DTYPES_OF.get(t.datatype)
            if dtype is None:
                raise InvalidRequest(f"{where}: datatype {t.datatype!r} is not supported")
            spec = TensorSpec(name, tuple(t.shape), dtype)
        elif name not in specs:
            raise InvalidRequest(f"unknown input {name!r} for model {model!r}; its inputs are "
                                 f"{list(order or specs)}")
        else:
            spec = specs[name]
        tensors[name] = input_tensor(t, raws[i] if raws else None, spec, where)
    names = list(order or tensors)
    missing = [k for k in names if k not in tensors]
    if missing:
        raise InvalidRequest(f"model {model!r} takes the inputs {names}; missing {missing}")
    outputs = tuple(_text("outputs.name", o.name) for o in request.outputs)
    return OipCall(request_id=_text("id", request.id), model=model,
                   version=_text("model_version", request.model_version),
                   fingerprint=fingerprint or "", tensors=tuple(tensors[k] for k in names),
                   outputs=outputs)


def build_infer_request(model: str, tensors: Sequence[EncodedTensor], *, version: str = "",
                        request_id: str = "", fingerprint: str = "") -> pb.ModelInferRequest:
    """A ModelInferRequest from encoded tensors (codecs raw, fp32, fp16, bf16, int8; no zstd)."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    if fingerprint:
        request.parameters["fingerprint"].string_param = fingerprint
    for e in tensors:
        t = request.inputs.add(name=e.name, shape=e.shape)
        if e.codec == "raw":
            t.datatype = DATATYPES[e.dtype]
        elif e.codec in ("fp32", "fp16", "bf16"):
            t.datatype = {"fp32": "FP32", "fp16": "FP16", "bf16": "BF16"}[e.codec]
        elif e.codec == "int8":
            t.datatype = "UINT8"
            for key, value in quant_parameters(e.axis, e.scales, e.zero_points).items():
                set_parameter(t.parameters, key, value)
        else:
            raise WireError(f"tensor {e.name!r}: codec {e.codec!r} has no Open Inference "
                            "Protocol form; use raw, fp32, fp16, bf16 or int8")
        request.raw_input_contents.append(e.payload)
    return request


# ---- responses --------------------------------------------------------------------------------

def build_infer_response(model: str, version: str, request_id: str,
                         outputs: Sequence[EncodedTensor],
                         timing: StageTiming | None = None) -> pb.ModelInferResponse:
    """A ModelInferResponse of raw outputs (codec ``raw``: each in its own dtype)."""
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for e in outputs:
        if e.codec != "raw":
            raise WireError(f"output {e.name!r} is {e.codec}; OIP outputs travel raw")
        response.outputs.add(name=e.name, datatype=DATATYPES[e.dtype], shape=e.shape)
        response.raw_output_contents.append(e.payload)
    if timing is not None:
        for key in TIMING_PARAMS:
            response.parameters[key].double_param = float(getattr(timing, key))
    return response


def parse_infer_response(response: pb.ModelInferResponse
                         ) -> tuple[tuple[EncodedTensor, ...], StageTiming | None]:
    """The outputs (codec raw, checked by the codec on decode) and the server's stage times
    (None when it sent none: a server other than splitinfer's)."""
    raws = list(response.raw_output_contents)
    if raws and len(raws) != len(response.outputs):
        raise WireError(f"raw_output_contents has {len(raws)} entries for "
                        f"{len(response.outputs)} output(s)")
    outputs = []
    for i, t in enumerate(response.outputs):
        where = f"output {t.name!r}"
        dtype = DTYPES_OF.get(t.datatype)
        if dtype is None:
            raise WireError(f"{where}: datatype {t.datatype!r} is not supported")
        shape = _shape(t.shape, where)
        payload = raws[i] if raws else _contents_bytes(t, shape, where)
        outputs.append(EncodedTensor(name=t.name, dtype=dtype, shape=shape, codec="raw",
                                     payload=payload))
    timing = None
    if all(k in response.parameters for k in TIMING_PARAMS):
        values = {k: _float_param(response.parameters, k, "response") or 0.0
                  for k in TIMING_PARAMS}
        timing = StageTiming(**values)
    return tuple(outputs), timing


# ---- metadata ---------------------------------------------------------------------------------

def tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name,
                                                   datatype=DATATYPES[spec.dtype],
                                                   shape=spec.shape)


def build_model_metadata(name: str, versions: Sequence[str], inputs: Sequence[TensorSpec],
                         outputs: Sequence[TensorSpec], platform: str = "splitinfer"
                         ) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(name=name, versions=list(versions), platform=platform,
                                    inputs=[tensor_metadata(s) for s in inputs],
                                    outputs=[tensor_metadata(s) for s in outputs])


def parse_model_metadata(reply: pb.ModelMetadataResponse
                         ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of a ModelMetadataResponse as TensorSpecs (-1: a dynamic dim)."""
    def spec(t: pb.ModelMetadataResponse.TensorMetadata) -> TensorSpec:
        dtype = DTYPES_OF.get(t.datatype)
        if dtype is None:
            raise WireError(f"tensor {t.name!r}: datatype {t.datatype!r} is not supported")
        try:
            return TensorSpec(t.name, tuple(t.shape), dtype)
        except ValueError as exc:
            raise WireError(str(exc)) from None
    return tuple(spec(t) for t in reply.inputs), tuple(spec(t) for t in reply.outputs)


assert set(DATATYPES) == set(DTYPES), "every dtype needs an OIP datatype"
