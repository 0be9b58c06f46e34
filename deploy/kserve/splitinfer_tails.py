"""Serve a splitinfer bundle's ONNX tails on KServe's ModelServer, under splitinfer's OIP names.

    python splitinfer_tails.py BUNDLE_DIR [--grpc-port 8081] [--http-port 8080] [--threads N]

Run it in KServe's environment (``pip install kserve onnxruntime``; tested with kserve 0.21.0 and
onnxruntime 1.2x): it imports only the standard library, numpy, onnxruntime and kserve, never
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
parameters are refused with INVALID_ARGUMENT naming what was wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: ONNX Runtime's input type -> numpy dtype of what the tail takes
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
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
    if hasattr(value, "WhichOneof"):
        which = value.WhichOneof("parameter_choice")
        return None if which is None else getattr(value, which)
    return value


def _numbers(text: Any, key: str, name: str, count: int, kind: type) -> np.ndarray:
    if not isinstance(text, str):
        raise BadInput(f"input {name!r}: per-channel parameter {key!r} must be a string of "
                       f"{count} comma-separated numbers; got {text!r}")
    items = text.split(",") if text else []
    if len(items) != count:
        raise BadInput(f"input {name!r}: parameter {key!r} has {len(items)} value(s); axis has "
                       f"{count} channel(s)")
    try:
        return np.array([kind(v) for v in items])
    except ValueError:
        raise BadInput(f"input {name!r}: parameter {key!r} holds a value that is not a "
                       f"number: {text[:80]!r}") from None


def dequantize(codes: np.ndarray, signed: bool, params: dict[str, Any] | None,
               name: str) -> np.ndarray:
    """UINT8/INT8 codes with splitinfer's parameters -> float32 (q - zp) * scale."""
    q = codes.astype(np.float32)
    axis = _param(params, "axis")
    if axis is None:
        scale, zp = _param(params, "scale"), _param(params, "zero_point")
        if scale is None or zp is None:
            raise BadInput(f"input {name!r}: {'INT8' if signed else 'UINT8'} codes for a float "
                           "tensor need the parameters 'scale' and 'zero_point' (or 'axis' with "
                           "'scales' and 'zero_points')")
        scales, zps, shape = np.array([float(scale)]), np.array([int(zp)]), (1,) * q.ndim
    else:
        axis = int(axis)
        if not -q.ndim <= axis < q.ndim:
            raise BadInput(f"input {name!r}: parameter 'axis' {axis} is outside its "
                           f"{q.ndim} dims")
        n = q.shape[axis]
        scales = _numbers(_param(params, "scales"), "scales", name, n, float)
        zps = _numbers(_param(params, "zero_points"), "zero_points", name, n, int)
        shape = tuple(n if d == axis % q.ndim else 1 for d in range(q.ndim))
    low, high = (-128, 127) if signed else (0, 255)
    if not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
        raise BadInput(f"input {name!r}: every scale must be finite and > 0")
    if np.any(zps < low) or np.any(zps > high):
        raise BadInput(f"input {name!r}: zero points must lie in {low}..{high}")
    out = q - zps.astype(np.float32).reshape(shape)
    out *= scales.astype(np.float32).reshape(shape)
    return out


def as_tail_input(arr: np.ndarray, datatype: str, params: dict[str, Any] | None, name: str,
                  want: Any) -> np.ndarray:
    """What the tail takes (``want``: a numpy dtype) from one request input."""
    quantized = any(_param(params, k) is not None
                    for k in ("scale", "zero_point", "axis", "scales", "zero_points"))
    if want in (np.float32, np.float64):
        if datatype in ("UINT8", "INT8"):  # codes: dequantize() names missing parameters
            return dequantize(arr, datatype == "INT8", params, name).astype(want, copy=False)
        if datatype in ("FP32", "FP16", "BF16", "FP64") and not quantized:
            return arr.astype(want, copy=False)
    elif _DATATYPES.get(np.dtype(want)) == datatype and not quantized:
        return arr
    raise BadInput(f"input {name!r}: datatype {datatype}"
                   f"{' with quantization parameters' if quantized else ''} does not fit; the "
                   f"model expects {_DATATYPES.get(np.dtype(want), want)}")


def load_tails(bundle: Path) -> list[tuple[str, Path, int]]:
    """(OIP model name, ONNX file, cut id) of every tail the bundle's ONNX index lists."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    index_path = bundle / "onnx" / "index.json"
    if not index_path.is_file():
        raise SystemExit(f"{index_path} is missing: write ONNX tails first with `splitinfer "
                         f"export --from-bundle {bundle} --onnx --cut ID`")
    index = json.loads(index_path.read_text())
    name = manifest["name"]
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
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = ap.parse_args(argv)

    import kserve
    import onnxruntime as ort
    from kserve import InferOutput, InferRequest, InferResponse
    from kserve.errors import InvalidInput

    manifest = json.loads((args.bundle / "manifest.json").read_text())

    class Tail(kserve.Model):  # type: ignore[misc]
        """One ONNX tail: splitinfer's input forms in, raw outputs out."""

        def __init__(self, name: str, path: Path) -> None:
            super().__init__(name)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
            self.inputs = {i.name: _ORT_TYPES.get(i.type, np.float32)
                           for i in self.session.get_inputs()}
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
                try:
                    feed[inp.name] = as_tail_input(inp.as_numpy(), inp.datatype,
                                                   inp.parameters, inp.name,
                                                   self.inputs[inp.name])
                except BadInput as exc:
                    raise InvalidInput(str(exc)) from None
            missing = [n for n in self.inputs if n not in feed]
            if missing:
                raise InvalidInput(f"model {self.name!r} takes the inputs {list(self.inputs)}; "
                                   f"missing {missing}")
            results = self.session.run(self.outputs, feed)
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

    models = [Tail(name, path) for name, path, _ in load_tails(args.bundle)]
    print(f"serving {[m.name for m in models]} on gRPC {args.grpc_port}, HTTP "
          f"{args.http_port}", flush=True)
    kserve.ModelServer(grpc_port=args.grpc_port, http_port=args.http_port, workers=1,
                       enable_grpc=True, enable_latency_logging=False).start(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
