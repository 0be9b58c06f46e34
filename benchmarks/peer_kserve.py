"""The KServe side of ``benchmarks.peer``: runs in the peer's own venv, never in ours.

    <peer venv>/bin/python benchmarks/peer_kserve.py serve DIR --grpc-port P --http-port H
    <peer venv>/bin/python benchmarks/peer_kserve.py answer REPLY.bin OUT.npy

It imports only the standard library, numpy, torch and kserve (kserve and our generated code
register the same protobuf names in different packages' pools, and kserve pins an older
protobuf: they cannot share a process or a venv).

``serve`` loads every ``DIR/<name>.pt2`` (a tail saved with ``torch.export.save`` by the
benchmark, the very graph the edge node runs) as a ``kserve.Model`` whose ``predict`` is what
KServe's documentation shows for a custom Python model: numpy in, torch under
``inference_mode``, numpy out as raw bytes. Before serving it times each tail alone (the bare
compute KServe's overhead is measured against, ``DIR/<name>.compute.json``) and writes the
serialized ModelInferRequest the client replays (``DIR/<name>.request.bin``, the input tensor
``DIR/<name>.npy`` as ``raw_input_contents``, as tritonclient sends it). ``answer`` decodes a
ModelInferResponse to an .npy file so the benchmark can check KServe's answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tailtime import time_ms  # this script's folder: benchmarks/tailtime.py


def _request_bytes(name: str, x: np.ndarray) -> bytes:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP32",
                                                   shape=list(x.shape))
    msg = pb.ModelInferRequest(model_name=name, id="bench", inputs=[tensor],
                               raw_input_contents=[np.ascontiguousarray(x).tobytes()])
    return bytes(msg.SerializeToString())


def serve(args: argparse.Namespace) -> int:
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse

    torch.set_num_threads(args.torch_threads)

    class Tail(kserve.Model):  # type: ignore[misc]
        """One exported tail; predict as KServe's custom-model docs write it."""

        def __init__(self, name: str, path: Path) -> None:
            super().__init__(name)
            self.path = path
            self.module: Any = None
            self.load()

        def load(self) -> bool:
            self.module = torch.export.load(str(self.path)).module()
            self.ready = True
            return self.ready

        def predict(self, payload: InferRequest, headers: dict[str, str] | None = None
                    ) -> InferResponse:
            x = torch.from_numpy(payload.inputs[0].as_numpy())
            with torch.inference_mode():
                y = self.module(x)
            out = InferOutput(name="output-0", shape=list(y.shape), datatype="FP32")
            out.set_data_from_numpy(y.numpy(), binary_data=True)
            return InferResponse(response_id=payload.id, model_name=self.name,
                                 infer_outputs=[out])

    models = []
    for path in sorted(args.dir.glob("*.pt2")):
        name = path.stem
        x = np.load(args.dir / f"{name}.npy")
        model = Tail(name, path)
        p50_ms = time_ms(model.module, torch.from_numpy(x), repeats=args.repeats)
        (args.dir / f"{name}.compute.json").write_text(json.dumps(
            {"p50_ms": p50_ms, "repeats": args.repeats,
             "torch": torch.__version__, "kserve": kserve.__version__ if hasattr(
                 kserve, "__version__") else "", "torch_threads": torch.get_num_threads()}))
        (args.dir / f"{name}.request.bin").write_bytes(_request_bytes(name, x))
        models.append(model)
    if not models:
        print(f"peer_kserve: no *.pt2 tails in {args.dir}", file=sys.stderr)
        return 2
    # latency logging off: a log line per request is KServe's default, but not a cost a tuned
    # deployment pays; we measure KServe at its leanest
    kserve.ModelServer(grpc_port=args.grpc_port, http_port=args.http_port, workers=1,
                       enable_grpc=True, enable_latency_logging=False).start(models)
    return 0


def answer(args: argparse.Namespace) -> int:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    msg = pb.ModelInferResponse.FromString(args.reply.read_bytes())
    out = msg.outputs[0]
    y = np.frombuffer(msg.raw_output_contents[0], dtype=np.float32).reshape(list(out.shape))
    np.save(args.out, y)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="peer_kserve.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="load DIR/*.pt2 and serve them with KServe's ModelServer")
    s.add_argument("dir", type=Path)
    s.add_argument("--grpc-port", type=int, required=True)
    s.add_argument("--http-port", type=int, required=True)
    s.add_argument("--torch-threads", type=int, default=1)
    s.add_argument("--repeats", type=int, default=200)
    a = sub.add_parser("answer", help="a ModelInferResponse's first output as .npy")
    a.add_argument("reply", type=Path)
    a.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    return serve(args) if args.cmd == "serve" else answer(args)


if __name__ == "__main__":
    sys.exit(main())
