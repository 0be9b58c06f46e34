"""Serve a splitinfer bundle's ONNX tails on KServe's ModelServer, under splitinfer's OIP names.

    python splitinfer_tails.py BUNDLE_DIR [--grpc-port 8081] [--http-port 8080] [--name NAME]
                               [--threads N]

Run it in KServe's environment (``pip install kserve onnxruntime``; tested with kserve 0.21.0 and
onnxruntime 1.32.0): it imports only the standard library, numpy, onnxruntime and kserve, never
splitinfer. ``BUNDLE_DIR`` is a bundle with ONNX tails, as ``splitinfer export --from-bundle
BUNDLE_DIR --onnx --cut ID [--cut ID ...]`` writes them (``onnx/index.json`` and
``onnx/cut-<ID>-tail.onnx``). Each tail becomes one KServe model named as the splitinfer edge
node names it (docs/edge-node.md): ``<bundle>.cut<ID>`` for the tail after cut ID, ``<bundle>``
for cut 0 (the whole model). ``SplitClient(..., protocol="oip")`` then uses this server as its
edge (docs/client.md).

Inputs are the tensors that cross the cut, by name. A float input may come as FP32, FP16 or BF16,
or as UINT8/INT8 codes with the tensor parameters splitinfer's SDK sends: ``scale`` and
``zero_point`` for the whole tensor, or ``axis`` with comma-separated ``scales`` and
``zero_points``; it is dequantized as ``(q - zero_point) * scale`` in float32, the arithmetic of
splitinfer's own int8 codec, so the tail sees the very values a splitinfer node would. Bad
parameters, datatypes, shapes and payload sizes are refused with INVALID_ARGUMENT naming what was
wrong (as the node does), never as KServe's bare INTERNAL.

KServe 0.21's own InferParameter message has no ``double_param``: the whole-tensor ``scale``
arrives as an unknown field and its gRPC-to-dict conversion drops it before ``predict`` sees it.
KServe also refuses BF16 before ``predict`` and its ``as_numpy`` does not know it.
:func:`accept_splitinfer_inputs` mends both in this process (BF16 is read from the raw bytes).
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: ONNX Runtime's input type -> numpy dtype of what the tail takes
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
#: OIP datatype -> numpy dtype of its raw bytes (BF16: the bits, widened in as_tail_input)
_WIRE = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "BF16": "<u2", "INT64": "<i8",
         "INT32": "<i4", "INT16": "<i2", "INT8": "i1", "UINT8": "u1", "BOOL": "?"}
#: tensor parameters of a quantized (UINT8/INT8) float input
QUANT_PARAMS = ("scale", "zero_point", "axis", "scales", "zero_points")
_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
              np.dtype(np.float16): "FP16", np.dtype(np.int64): "INT64",
              np.dtype(np.int32): "INT32", np.dtype(np.int16): "INT16",
              np.dtype(np.int8): "INT8", np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL"}


class BadInput(ValueError):
    """A request's input that cannot be read (its message names the input and the problem)."""


def _param(params: dict[str, Any] | None, key: str) -> Any:
    if not params or key not in params:
        return None
    value = params[key]
    # KServe hands the InferParameter message or its value, depending on the path
    return _message_value(value) if hasattr(value, "WhichOneof") else value


def _int_param(params: dict[str, Any] | None, key: str, name: str) -> int | None:
    value = _param(params, key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadInput(f"input {name!r}: parameter {key!r} must be an int64_param; got "
                       f"{type(value).__name__} {value!r}")
    return value


def _float_param(params: dict[str, Any] | None, key: str, name: str) -> float | None:
    value = _param(params, key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise BadInput(f"input {name!r}: parameter {key!r} must be a double_param; got "
                       f"{type(value).__name__} {value!r}")
    return None if value is None else float(value)


def _numbers(text: Any, key: str, name: str, count: int, kind: type) -> np.ndarray:
    if not isinstance(text, str):
        raise BadInput(f"input {name!r}: per-channel parameter {key!r} must be a string of "
                       f"{count} comma-separated numbers; got {text!r}")
    items = text.split(",") if text else []
    if len(items) != count:
        raise BadInput(f"input {name!r}: parameter {key!r} has {len(items)} value(s); axis has "
                       f"{count} channel(s)")
    try:
        return np.array([kind(v) for v in items], dtype=np.float64 if kind is float else np.int64)
    except (ValueError, OverflowError):
        raise BadInput(f"input {name!r}: parameter {key!r} holds a value that is not a "
                       f"number: {text[:80]!r}") from None


def dequantize(codes: np.ndarray, signed: bool, params: dict[str, Any] | None,
               name: str) -> np.ndarray:
    """UINT8/INT8 codes with splitinfer's parameters -> float32 (q - zp) * scale.

    The arithmetic of splitinfer's int8 codec (``splitinfer.codec._quant.dequantize``): codes
    and zero points as float32, subtracted, times the float32 scale, so the result is
    bit-identical with what a splitinfer node decodes from the same codes. Scales are checked
    as float32 (finite, > 0), zero points against the codes' range."""
    q = np.asarray(codes).astype(np.float32)
    axis = _int_param(params, "axis", name)
    if axis is None:
        scale = _float_param(params, "scale", name)
        zp = _int_param(params, "zero_point", name)
        if scale is None or zp is None:
            raise BadInput(f"input {name!r}: {'INT8' if signed else 'UINT8'} codes for a float "
                           "tensor need the parameters 'scale' (double_param) and 'zero_point' "
                           "(int64_param), or 'axis' (int64_param) with per-channel 'scales' "
                           "and 'zero_points' (string_param, comma-separated)")
        scales, zps, shape = np.array([scale]), np.array([zp]), (1,) * q.ndim
    else:
        if not -q.ndim <= axis < q.ndim:
            raise BadInput(f"input {name!r}: parameter 'axis' {axis} is outside the tensor's "
                           f"{q.ndim} dims")
        n = q.shape[axis]
        scales = _numbers(_param(params, "scales"), "scales", name, n, float)
        zps = _numbers(_param(params, "zero_points"), "zero_points", name, n, int)
        shape = tuple(n if d == axis % q.ndim else 1 for d in range(q.ndim))
    with np.errstate(over="ignore"):  # 1e300 -> inf in float32: refused just below
        scales32 = scales.astype(np.float64).astype(np.float32)
    bad = ~(np.isfinite(scales32) & (scales32 > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise BadInput(f"input {name!r}: scale {i} is {float(scales[i])!r}; scales must be "
                       "finite and > 0 in float32")
    low, high = (-128, 127) if signed else (0, 255)
    if np.any(zps < low) or np.any(zps > high):
        raise BadInput(f"input {name!r}: zero points must be ints in {low}..{high} for "
                       f"{'INT8' if signed else 'UINT8'} codes; got "
                       f"{zps[(zps < low) | (zps > high)][:4].tolist()}")
    out = q - zps.astype(np.float32).reshape(shape)
    out *= scales32.reshape(shape)
    return out


def raw_array(raw: bytes, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """An input's raw bytes as an array of its datatype (BF16: its uint16 bits), the byte count
    checked against the shape."""
    if datatype not in _WIRE:
        raise BadInput(f"input {name!r}: datatype {datatype!r} is not supported; send one of "
                       f"{sorted(_WIRE)}")
    if any(d < 0 for d in shape):
        raise BadInput(f"input {name!r}: shape {list(shape)} has a negative dim")
    dtype = np.dtype(_WIRE[datatype])
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise BadInput(f"input {name!r}: raw_input_contents holds {len(raw)} bytes; shape "
                       f"{list(shape)} of {datatype} needs exactly {need}")
    return np.frombuffer(raw, dtype).reshape(shape)


def as_tail_input(arr: np.ndarray, datatype: str, params: dict[str, Any] | None, name: str,
                  want: Any) -> np.ndarray:
    """What the tail takes (``want``: a numpy dtype) from one request input, with the forms
    the splitinfer node accepts: the tensor's own datatype, a narrower float for a float tensor
    (FP16, BF16 as uint16 bits; FP32 for float64), UINT8/INT8 codes with quantization
    parameters for a float tensor."""
    quantized = any(_param(params, k) is not None for k in QUANT_PARAMS)
    if _DATATYPES.get(np.dtype(want)) == datatype and not quantized:
        return arr
    if want in (np.float32, np.float64):
        if datatype in ("UINT8", "INT8"):  # codes: dequantize() names missing parameters
            return dequantize(arr, datatype == "INT8", params, name).astype(want, copy=False)
        if datatype == "BF16" and not quantized:  # bfloat16 bits -> float32, exact
            return (arr.astype(np.uint32) << 16).view(np.float32).astype(want, copy=False)
        if datatype in ("FP32", "FP16") and not quantized:
            return arr.astype(want)
    if quantized:
        raise BadInput(f"input {name!r}: quantization parameters come only with a UINT8 or "
                       f"INT8 input for a float tensor; this one is {datatype} and the model "
                       f"expects {_DATATYPES.get(np.dtype(want), want)}")
    hint = (" (or a narrower float: FP16, BF16; or UINT8/INT8 codes with the parameters scale "
            "and zero_point, or axis, scales and zero_points)") if want == np.float32 else ""
    raise BadInput(f"input {name!r}: datatype {datatype} does not fit; the model expects "
                   f"{_DATATYPES.get(np.dtype(want), want)}{hint}")


def check_shapes(shapes: dict[str, tuple[int, ...]], dims: dict[str, list[Any]],
                 model: str) -> None:
    """Each input's rank and fixed dims against the ONNX graph's, and one size per symbolic dim
    (the batch) across the inputs, as the node checks the tensors that cross a cut."""
    seen: dict[Any, tuple[str, int]] = {}
    for name, shape in shapes.items():
        want = dims[name]
        if len(shape) != len(want) or any(isinstance(w, int) and w >= 0 and w != d
                                          for w, d in zip(want, shape)):
            raise BadInput(f"input {name!r} has shape {list(shape)}; model {model!r} expects "
                           f"{[w if isinstance(w, int) else -1 for w in want]} (-1: any size)")
        for w, d in zip(want, shape):
            if isinstance(w, str):
                if w in seen and seen[w][1] != d:
                    raise BadInput(f"input {name!r} has {d} along dim {w!r}, {seen[w][0]!r} "
                                   f"has {seen[w][1]}; all inputs share that dimension (batch)")
                seen.setdefault(w, (name, d))


def _message_value(param: Any) -> Any:
    """The value of an InferParameter message, also when it is a ``double_param`` or
    ``uint64_param``: KServe 0.21's own InferParameter message has only bool, int64 and string
    fields, so those two (fields 4 and 5 of the Open Inference Protocol's message, as
    tritonclient and splitinfer send them) arrive as unknown fields and are read here."""
    which = param.WhichOneof("parameter_choice")
    if which is not None:
        return getattr(param, which)
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
    except ImportError:  # protobuf < 4.22: no reader for unknown fields
        return None
    value = None
    for f in UnknownFieldSet(param):  # the last one wins, as in a oneof
        if f.field_number == 4 and f.wire_type == 1:  # double_param: fixed64
            value = struct.unpack("<d", struct.pack("<Q", f.data))[0]
        elif f.field_number == 5 and f.wire_type == 0:  # uint64_param: varint
            value = int(f.data)
    return value


def accept_splitinfer_inputs() -> None:
    """Make KServe's gRPC request conversion keep what splitinfer's inputs carry (this process
    only; KServe 0.21's ``kserve.protocol.infer_type``, wrapped, not replaced):

    - every input parameter: KServe's InferParameter message lacks ``double_param`` (and
      ``uint64_param``), and ``to_http_parameters`` keeps only the fields it knows, so the
      whole-tensor ``scale`` (a double) would never reach ``predict`` (:func:`_message_value`);
    - BF16 inputs: ``get_content`` refuses BF16 ("invalid content type") even when its bytes are
      in ``raw_input_contents``, the only place OIP has for them (read by :func:`raw_array`).
    """
    from kserve.protocol import infer_type

    original = infer_type.to_http_parameters
    if getattr(original, "splitinfer", False):
        return
    original_content = infer_type.get_content

    def to_http_parameters(parameters: Any) -> dict[str, Any]:
        out: dict[str, Any] = original(parameters)
        for key, value in parameters.items():
            if key not in out and hasattr(value, "WhichOneof"):
                got = _message_value(value)
                if got is not None:
                    out[key] = got
        return out

    def get_content(datatype: str, data: Any) -> Any:
        # BF16 has no typed contents: its data is in raw_input_contents (as FP16's)
        return [] if datatype == "BF16" else original_content(datatype, data)

    to_http_parameters.splitinfer = True  # type: ignore[attr-defined]
    infer_type.to_http_parameters = to_http_parameters
    infer_type.get_content = get_content


def load_tails(bundle: Path, name: str | None = None) -> list[tuple[str, Path, int]]:
    """(OIP model name, ONNX file, cut id) of every tail the bundle's ONNX index lists, named
    after ``name`` (default: the bundle's own name, from its manifest)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    index_path = bundle / "onnx" / "index.json"
    if not index_path.is_file():
        raise SystemExit(f"{index_path} is missing: write ONNX tails first with `splitinfer "
                         f"export --from-bundle {bundle} --onnx --cut ID`")
    index = json.loads(index_path.read_text())
    name = name or manifest["name"]
    tails = []
    for cut_id, entry in sorted(index["cuts"].items(), key=lambda kv: int(kv[0])):
        tail = entry.get("tail")
        if not tail or "file" not in tail:
            continue
        model = name if int(cut_id) == 0 else f"{name}.cut{cut_id}"
        tails.append((model, bundle / "onnx" / tail["file"], int(cut_id)))
    if not tails:
        raise SystemExit(f"{index_path} lists no tails (exported with --no-onnx-tail?)")
    return tails


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="bundle directory with onnx/ tails")
    ap.add_argument("--grpc-port", type=int, default=8081)
    ap.add_argument("--http-port", type=int, default=8080)
    ap.add_argument("--name", default=None,
                    help="the bundle's name in the model names (default: its manifest's name; "
                         "the SDK looks the bundle's own name up)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be >= 1")

    import kserve
    import onnxruntime as ort
    from kserve import InferOutput, InferRequest, InferResponse
    from kserve.errors import InvalidInput
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    accept_splitinfer_inputs()  # the whole-tensor 'scale' (a double), BF16
    manifest = json.loads((args.bundle / "manifest.json").read_text())

    class Tail(kserve.Model):  # type: ignore[misc]
        """One ONNX tail: splitinfer's input forms in, raw outputs out."""

        def __init__(self, name: str, path: Path) -> None:
            super().__init__(name)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
            for a in [*self.session.get_inputs(), *self.session.get_outputs()]:
                if a.type not in _ORT_TYPES:
                    raise SystemExit(f"{path}: tensor {a.name!r} is {a.type}; this server "
                                     f"handles {sorted(_ORT_TYPES)}")
            self.inputs = {i.name: _ORT_TYPES[i.type] for i in self.session.get_inputs()}
            #: each input's dims: ints, or a symbolic dim's name (None: unnamed)
            self.dims = {i.name: list(i.shape) for i in self.session.get_inputs()}
            self.outputs = [o.name for o in self.session.get_outputs()]
            self.ready = True

        @staticmethod
        def _metadata(args: Any) -> list[dict[str, Any]]:
            # ONNX's symbolic (dynamic) dims are -1, as in the bundle's specs
            return [{"name": a.name, "datatype": _DATATYPES[np.dtype(_ORT_TYPES[a.type])],
                     "shape": [d if isinstance(d, int) else -1 for d in a.shape]}
                    for a in args]

        def get_input_types(self) -> list[dict[str, Any]]:
            """ModelMetadata's inputs: the tensors that cross the cut (the SDK checks them)."""
            return self._metadata(self.session.get_inputs())

        def get_output_types(self) -> list[dict[str, Any]]:
            return self._metadata(self.session.get_outputs())

        def predict(self, payload: InferRequest, headers: dict[str, str] | None = None
                    ) -> InferResponse:
            feed = {}
            for inp in payload.inputs:
                if inp.name not in self.inputs:
                    raise InvalidInput(f"unknown input {inp.name!r} for model {self.name!r}; "
                                       f"its inputs are {list(self.inputs)}")
                if inp.name in feed:
                    raise InvalidInput(f"input {inp.name!r} is given twice")
                try:
                    # raw bytes (what gRPC clients send) read here: KServe's as_numpy does
                    # not know BF16 and its size errors would come back as INTERNAL
                    raw = getattr(inp, "_raw_data", None)
                    if raw is not None:
                        arr = raw_array(raw, inp.datatype, list(inp.shape), inp.name)
                    elif inp.datatype == "BF16":
                        raise BadInput(f"input {inp.name!r}: BF16 travels only in "
                                       "raw_input_contents")
                    else:
                        try:
                            arr = inp.as_numpy()
                        except ValueError as exc:  # contents that do not fill the shape
                            raise BadInput(f"input {inp.name!r}: {exc}") from None
                    feed[inp.name] = as_tail_input(arr, inp.datatype, inp.parameters,
                                                   inp.name, self.inputs[inp.name])
                except BadInput as exc:
                    raise InvalidInput(str(exc)) from None
            missing = [n for n in self.inputs if n not in feed]
            if missing:
                raise InvalidInput(f"model {self.name!r} takes the inputs {list(self.inputs)}; "
                                   f"missing {missing}")
            try:
                check_shapes({k: v.shape for k, v in feed.items()}, self.dims, self.name)
            except BadInput as exc:
                raise InvalidInput(str(exc)) from None
            try:
                results = self.session.run(self.outputs, feed)
            except InvalidArgument as exc:  # what the checks above missed: still the input's
                raise InvalidInput(f"model {self.name!r}: {exc}") from None
            outs = []
            for name, y in zip(self.outputs, results):
                y = np.ascontiguousarray(y)
                out = InferOutput(name=name, shape=list(y.shape),
                                  datatype=_DATATYPES[y.dtype])
                out.set_data_from_numpy(y, binary_data=True)
                outs.append(out)
            return InferResponse(response_id=payload.id, model_name=self.name,
                                 model_version=str(manifest.get("version", "")),
                                 infer_outputs=outs)

    models = [Tail(name, path) for name, path, _ in load_tails(args.bundle, args.name)]
    print(f"serving {[m.name for m in models]} on gRPC {args.grpc_port}, HTTP "
          f"{args.http_port}", flush=True)
    kserve.ModelServer(grpc_port=args.grpc_port, http_port=args.http_port, workers=1,
                       enable_grpc=True, enable_latency_logging=False).start(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
