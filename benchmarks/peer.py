"""The edge node against KServe's ModelServer, side by side in one run, over grpcio's own floor.

    python -m benchmarks.peer [--quick] [--seconds S] [--peer-venv DIR] [--out PATH] [--strict]

What a user would run instead of our edge node is a model server: here KServe 0.21's Python
ModelServer (Open Inference Protocol over gRPC) serving the same tail, installed by this
benchmark into its own venv (``.bench/kserve-venv``: torch 2.14.1, the same torch as ours, and
kserve 0.21.0; ~1.5 min and ~5.5 GB the first time, reused after). kserve and our generated
code cannot share a process, so its server runs there (``benchmarks/peer_kserve.py``) and the
clients here send pre-serialized bytes to all three servers (no protobuf work per call: the same
client on every side).

Two workloads, random weights (timing only), real inputs (a photo that ships with
scikit-learn, through the head):
- ResNet-18 cut after layer2: a 128x28x28 fp32 activation (401 KB), the tail is layer3,
  layer4 and the classifier;
- MobileNetV3-Small cut after features.6: 40x14x14 fp32 (31 KB), the tail is features.7-12
  and the classifier;
- each of those activations into a light tail (mean over space + Linear to 1000 classes,
  ~0.1 ms): the serving path alone. The overhead targets read these: a conv tail's compute
  varies by tens of % between runs and processes here, more than the overhead measured.

Three servers, each its own process on loopback, started once and measured in alternating
slices (a neighbour's load hits all alike):
- ``splitinfer`` — ``splitinfer-edge`` in its default configuration (2 workers, torch threads
  per worker = cores / workers, no batching delay), fp32 in and out;
- ``kserve`` — KServe's ModelServer, one torch thread (as each of our workers on this
  machine), ``predict`` as its docs write a custom model, raw_input_contents in and out;
- ``grpc floor`` — a bare grpc.aio server answering each request (as many bytes as our Infer
  request) with as many bytes as our Infer answer: what grpcio itself costs for those bytes.

Then the same client on both sides, as a user would write it: ``tritonclient.grpc.aio``'s
``InferenceServerClient.infer`` (from our venv; a request built and an answer parsed per call)
against the node's Open Inference Protocol service (model ``<bundle>.cut<ID>``, or the bundle's
name for cut 0: the light tails) and against KServe (its model names as ``peer_kserve.py``
registers them), the same FP32 activation as raw_input_contents, each side's answer checked
once against the local tail first, measured in the same alternating slices as the byte clients
(``--skip-tritonclient`` leaves this out).

Per workload: p50/p95 latency and req/s at 1/4/16/64 closed-loop clients; at 1 client the
overhead over bare compute (p50 latency minus the tail's p50 alone, each side's measured in its
own process, one thread), the tail's mean time inside each server (each server's own metrics)
and the node's own stage times. Ends with PASS/FAIL against the targets (overhead <= 0.5x
KServe's at 1 client, light tails; req/s >= 1.2x at 1 client and >= 2x at 16, conv tails) and,
where a target sits below the floor, how close the node comes to the floor.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # this process only measures one-thread compute

import argparse  # noqa: E402
import asyncio  # noqa: E402
import functools  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from benchmarks.load import closed_loop, closed_loop_calls, pct  # noqa: E402
from benchmarks.progress import Steps  # noqa: E402
from benchmarks.tailtime import time_ms  # noqa: E402
from splitinfer.codec import get_codec  # noqa: E402
from splitinfer.model.bundle import load_bundle, save_bundle  # noqa: E402
from splitinfer.model.split_model import partition  # noqa: E402
from splitinfer.model.tensors import decode_torch  # noqa: E402
from splitinfer.tools.edgeproc import (  # noqa: E402
    EdgeProcess,
    free_port,
    parse_metrics,
    start_edge,
    wait_for,
)
from splitinfer.tools.frames import normalized, sample_frames  # noqa: E402
from splitinfer.wire import convert, oip_convert  # noqa: E402
from splitinfer.wire.v1 import inference_pb2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "peer.json"
DEFAULT_PEER_VENV = ROOT / ".bench" / "kserve-venv"
PEER_PACKAGES = ("torch==2.14.1", "kserve==0.21.0", "onnxruntime==1.32.0")
INFER = "/splitinfer.v1.EdgeInference/Infer"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
ECHO = "/bench.Echo/Reply"  # + the reply's length in bytes
CONCURRENCY = (1, 4, 16, 64)
SIDES = ("splitinfer", "kserve", "grpc floor")
#: the tritonclient mode's servers: the node's OIP service and KServe's, the same client on both
TRITON_SIDES = ("splitinfer", "kserve")
NODE_FLAGS = ("--profile-tails", "false", "--log-level", "WARNING")
TARGET_OVERHEAD = 0.5   # our overhead / KServe's, 1 client, both workloads
TARGET_RPS_1 = 1.2      # our req/s / KServe's at 1 client
TARGET_RPS_16 = 2.0     # ... at 16 clients


@dataclass
class Workload:
    """One tail, the activation that crosses its cut, and each side's request bytes."""

    name: str
    label: str
    sm: Any
    cut_id: int
    x: torch.Tensor
    expected: torch.Tensor
    kind: str  # "conv": a real tail (req/s); "light": the same activation, ~no compute (overhead)
    requests: dict[str, bytes] = field(default_factory=dict)
    reply_bytes: int = 0
    compute_ms: dict[str, float] = field(default_factory=dict)


# ---- the peer's venv and servers --------------------------------------------------------------

def ensure_peer_venv(venv: Path, steps: Steps | None = None) -> Path:
    """The peer's python, installing its venv first when it is missing or half-made."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = " ".join(PEER_PACKAGES)
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"creating the KServe peer's venv {venv} ({wanted}; ~1.5 min and ~5.5 GB the first "
          "time)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES],
                   check=True)
    stamp.write_text(wanted)
    return python


class Proc:
    """A server process of ours or the peer's, stopped on exit."""

    def __init__(self, name: str, argv: list[str], address: str, log: Path,
                 ready: Any) -> None:
        self.name, self.address, self.log = name, address, log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=ROOT)
        try:
            wait_for(f"{name} to answer", lambda: self._up(ready), timeout=180)
        except Exception:
            self.stop()
            raise

    def _up(self, ready: Any) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); its log "
                               f"{self.log}:\n{self.log.read_text()[-3000:]}")
        return bool(ready())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _call(address: str, method: str, payload: bytes) -> bytes:
    with grpc.insecure_channel(address) as channel:
        reply: bytes = channel.unary_unary(method)(payload, timeout=60)
    return reply


def _answers(address: str, method: str, payload: bytes) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            channel.unary_unary(method)(payload, timeout=5)
        return True
    except grpc.RpcError:
        return False


async def _echo_server(port: int) -> None:
    """A bare grpc.aio server: ``/bench.Echo/Reply<N>`` answers any bytes with N zero bytes."""
    replies: dict[str, bytes] = {}

    class Echo(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> Any:
            method = details.method
            if not method.startswith(ECHO):
                return None
            reply = replies.setdefault(method, bytes(int(method[len(ECHO):])))

            async def echo(request: bytes, context: Any) -> bytes:
                return reply

            return grpc.unary_unary_rpc_method_handler(echo)

    big = 64 << 20
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", big),
                                      ("grpc.max_send_message_length", big)])
    server.add_generic_rpc_handlers([Echo()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# ---- workloads --------------------------------------------------------------------------------

class Light(torch.nn.Module):
    """A tail that costs almost nothing (mean over space, one Linear to 1000 classes) on the
    same activation as a conv tail: its latency is the serving path alone, so the overhead
    per activation size is measured without a conv tail's compute noise (tens of % between
    runs on a shared machine, far more than the overhead itself)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(channels, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def build_workload(name: str, label: str, model: torch.nn.Module, cut_name: str,
                   repo: Path, peer_dir: Path, inputs: torch.Tensor | None = None,
                   kind: str = "conv") -> Workload:
    """``inputs``: the model's input (default: a real photo, scikit-learn's china.jpg)."""
    x0 = torch.from_numpy(normalized(sample_frames(224)[0])) if inputs is None else inputs
    sm = partition(model.eval(), (x0,), name=name)
    save_bundle(sm, repo / name / "1")
    sm = load_bundle(repo / name / "1")
    cut = sm.cut(cut_name)
    with torch.inference_mode():
        (x,) = sm.head(cut.id)(x0)
        x = x.contiguous()
        tail = sm.tail(cut.id)
        expected = tail(x)
    work = Workload(name, label, sm, cut.id, x, expected, kind)
    fp32 = get_codec("fp32")
    work.requests["splitinfer"] = convert.build_infer_request(
        model=name, version="1", fingerprint=sm.fingerprint, cut_id=cut.id,
        tensors=[fp32.encode(x, name=cut.tensors[0].name)], request_id="bench"
    ).SerializeToString()
    # the same graph for the peer: exported from our tail, run there by torch.export.load
    program = torch.export.export(tail, (x,))
    torch.export.save(program, str(peer_dir / f"{name}.pt2"))
    np.save(peer_dir / f"{name}.npy", x.numpy())
    return work


def bare_compute_ms(work: Workload, repeats: int) -> float:
    return time_ms(work.sm.tail(work.cut_id), work.x, repeats=repeats)


def check_ours(reply: bytes, work: Workload) -> None:
    result = convert.parse_infer_response(inference_pb2.InferResponse.FromString(reply))
    if not torch.allclose(decode_torch(result.outputs[0]), work.expected, rtol=1e-4,
                          atol=1e-5):
        raise RuntimeError(f"{work.name}: the edge node's answer differs from the local tail")


def check_peer(reply: bytes, work: Workload, python: Path, tmp: Path) -> None:
    (tmp / "reply.bin").write_bytes(reply)
    subprocess.run([str(python), str(ROOT / "benchmarks" / "peer_kserve.py"), "answer",
                    str(tmp / "reply.bin"), str(tmp / "reply.npy")], check=True)
    got = torch.from_numpy(np.load(tmp / "reply.npy"))
    if not torch.allclose(got, work.expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{work.name}: KServe's answer differs from the local tail")


# ---- the same client on both sides: tritonclient ---------------------------------------------

def triton_targets(work: Workload) -> dict[str, tuple[str, str]]:
    """(model name, input name) of ``work``'s tail on each server: the node's OIP name of the
    cut and the cut's tensor, KServe's model as ``peer_kserve.py`` registers it (the tail's name)
    with the input name its own replayed request uses (its predict reads the first input)."""
    return {"splitinfer": (oip_convert.model_name(work.name, work.cut_id),
                           work.sm.cuts[work.cut_id].tensors[0].name),
            "kserve": (work.name, "input-0")}


def _triton_input(name: str, x: np.ndarray) -> Any:
    import tritonclient.grpc as tc

    inp = tc.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # raw_input_contents
    return inp


def check_triton(address: str, model: str, input_name: str, work: Workload) -> float:
    """One tritonclient call; raises unless the answer is the local tail's (rtol 1e-4, atol
    1e-5, as the byte checks); returns the largest |difference|."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(address)
    try:
        result = client.infer(model, [_triton_input(input_name, work.x.numpy())],
                              client_timeout=60)
    finally:
        client.close()
    out = result.get_response().outputs[0].name
    got = torch.from_numpy(result.as_numpy(out).copy())
    if got.shape != work.expected.shape or not torch.allclose(got, work.expected, rtol=1e-4,
                                                              atol=1e-5):
        raise RuntimeError(f"{work.name}: tritonclient's answer from {model!r} at {address} "
                           "differs from the local tail")
    return float((got - work.expected).abs().max())


async def triton_loop(address: str, model: str, input_name: str, x: np.ndarray, clients: int,
                      warmup_s: float, measure_s: float) -> dict[str, Any]:
    """:func:`closed_loop_calls` with tritonclient.grpc.aio's ``infer`` (one client, one
    channel, as ``closed_loop`` has one): what a user's code pays per call on either server."""
    import tritonclient.grpc.aio as tca

    client = tca.InferenceServerClient(address)
    try:
        call = functools.partial(client.infer, model, [_triton_input(input_name, x)],
                                 client_timeout=60)
        await call()
        return await closed_loop_calls(call, clients, warmup_s, measure_s)
    finally:
        await client.close()


def check_triton_all(work: Workload, address: dict[str, str]) -> dict[str, float]:
    """Each side's tritonclient answer for ``work`` checked once (largest |diff| per side)."""
    targets = triton_targets(work)
    return {side: check_triton(address[side], *targets[side], work) for side in TRITON_SIDES}


def triton_slice(work: Workload, side: str, address: dict[str, str], clients: int,
                 args: argparse.Namespace) -> dict[str, Any]:
    """One measured slice of the tritonclient mode: ``clients`` tritonclient callers on
    ``side``'s server, in the same rounds as the byte clients' slices (alternating, so the
    machine's drift hits every side alike)."""
    model, input_name = triton_targets(work)[side]
    return asyncio.run(triton_loop(address[side], model, input_name, work.x.numpy(), clients,
                                   args.warmup, args.seconds / args.rounds))


def triton_result(work: Workload, checked: dict[str, float],
                  load: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The tritonclient mode's part of a workload's results (ratios: :func:`derive`)."""
    targets = triton_targets(work)
    return {"models": {side: targets[side][0] for side in TRITON_SIDES},
            "inputs": {side: targets[side][1] for side in TRITON_SIDES},
            "max_abs_diff": checked, "load": load}


# ---- load ------------------------------------------------------------------------------------

def compute_counters(side: str, url: str, model: str) -> tuple[float, float]:
    """(sum of seconds, count) of the in-server compute of ``model`` so far, from /metrics:
    the node's compute stage, KServe's ``request_predict_seconds`` (its predict call)."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        samples = parse_metrics(reply.read().decode())
    if side == "splitinfer":
        name, want = "splitinfer_edge_stage_seconds", {("model", model), ("stage", "compute")}
    else:
        name, want = "request_predict_seconds", {("model_name", model)}
    got = [sum(v for (n, labels), v in samples.items() if n == f"{name}_{part}"
               and want <= labels) for part in ("sum", "count")]
    return got[0], got[1]


def summarize(clients: int, slices: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [t for s in slices for t in s["latencies"]]
    secs = sum(s["seconds"] for s in slices)
    return {"clients": clients, "requests": len(lat), "rps": len(lat) / secs,
            "p50_ms": pct(lat, 0.5) * 1e3, "p95_ms": pct(lat, 0.95) * 1e3,
            "client_cpu": sum(s["client_cpu"] for s in slices) / secs,
            "machine_cpu": sum(s["machine_cpu"] for s in slices) / secs}


def node_stages(node: EdgeProcess, work: Workload, n: int) -> dict[str, float]:
    """The node's own stage p50s (ms) over ``n`` lone requests: where its time goes."""
    with grpc.insecure_channel(node.address) as channel:
        infer = channel.unary_unary(INFER)
        timings = []
        for _ in range(n):
            reply = infer(work.requests["splitinfer"], timeout=60)
            timings.append(convert.parse_infer_response(
                inference_pb2.InferResponse.FromString(reply)).timing)
    return {stage: statistics.median(getattr(t, f"{stage}_s") for t in timings) * 1e3
            for stage in ("decode", "queue", "compute", "encode")}


def hop_roundtrip_ms(n: int) -> dict[str, float]:
    """The node's two thread hops alone: event loop -> worker -> event loop through its own
    Batcher, with a tail that does nothing, against an asyncio future resolved on the loop."""
    from edge_node.batcher import Batcher

    batcher = Batcher(lambda key, tensors: tensors, workers=2, max_batch_size=8)
    x = [torch.zeros(1)]

    async def measure() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        hops, local = [], []
        for i in range(n + n // 10):
            t0 = time.perf_counter()
            await asyncio.wrap_future(batcher.submit("k", x, 1))
            t1 = time.perf_counter()
            fut = loop.create_future()
            loop.call_soon(fut.set_result, None)
            await fut
            t2 = time.perf_counter()
            if i >= n // 10:
                hops.append(t1 - t0)
                local.append(t2 - t1)
        return {"two_hops_p50_ms": statistics.median(hops) * 1e3,
                "same_thread_p50_ms": statistics.median(local) * 1e3}

    try:
        return asyncio.run(measure())
    finally:
        batcher.close()


def layout_table(works: list[Workload], repeats: int) -> dict[str, dict[str, float]]:
    """Each tail alone, one thread: as the node runs it, and with weights and input in
    channels_last (the node would use it only where it wins, everywhere: it stays off)."""
    out = {}
    for work in works:
        tail = work.sm.tail(work.cut_id, cache=False).to(memory_format=torch.channels_last)
        out[work.name] = {"default_ms": bare_compute_ms(work, repeats),
                          "channels_last_ms": time_ms(
                              tail, work.x.to(memory_format=torch.channels_last),
                              repeats=repeats)}
    return out


# ---- main -------------------------------------------------------------------------------------

def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    repo, peer_dir = tmp / "repo", tmp / "peer"
    repo.mkdir()
    peer_dir.mkdir()
    per_workload = len(args.clients) * args.rounds * (
        len(SIDES) + (0 if args.skip_tritonclient else len(TRITON_SIDES)))
    total = 3 + 4 * per_workload  # four workloads
    with Steps("peer benchmark", total) as steps:
        python = ensure_peer_venv(args.peer_venv)
        steps.advance(note="peer venv ready")
        torch.manual_seed(0)
        works = [
            build_workload("resnet18", "ResNet-18 after layer2, 128x28x28 fp32",
                           torchvision.models.resnet18(), "layer2.1.relu#2", repo, peer_dir),
            build_workload("mobilenet_v3_small", "MobileNetV3-Small after features.6, "
                           "40x14x14 fp32", torchvision.models.mobilenet_v3_small(),
                           "features.6.add", repo, peer_dir),
        ]
        works += [build_workload(f"{w.name}_light", f"the same {w.x.shape[1]}x{w.x.shape[2]}x"
                                 f"{w.x.shape[3]} activation into a light tail (mean + Linear)",
                                 Light(w.x.shape[1]), "input", repo, peer_dir,
                                 inputs=w.x, kind="light") for w in list(works)]
        for work in works:
            work.compute_ms["splitinfer"] = bare_compute_ms(work, args.repeats)
        extra = {"hops": hop_roundtrip_ms(args.repeats * 5),
                 "layouts": layout_table([w for w in works if w.kind == "conv"],
                                         args.repeats)}
        steps.advance(note="bundles, tails, bare compute, hops, layouts")
        procs: dict[str, Any] = {}
        try:
            node = start_edge(repo, *NODE_FLAGS, *args.node_flags)
            procs["splitinfer"] = node
            for work in works:
                reply = _call(node.address, INFER, work.requests["splitinfer"])
                check_ours(reply, work)
                work.reply_bytes = len(reply)
                work.requests["grpc floor"] = bytes(len(work.requests["splitinfer"]))
            kport, hport = free_port(), free_port()
            kaddr = f"127.0.0.1:{kport}"
            procs["kserve"] = Proc(
                "kserve", [str(python), str(ROOT / "benchmarks" / "peer_kserve.py"), "serve",
                           str(peer_dir), "--grpc-port", str(kport), "--http-port",
                           str(hport), "--repeats", str(args.repeats),
                           "--torch-threads", str(args.kserve_threads)],
                kaddr, tmp / "kserve.log",
                lambda: all((peer_dir / f"{w.name}.request.bin").exists() for w in works)
                and _answers(kaddr, MODEL_INFER,
                             (peer_dir / f"{works[0].name}.request.bin").read_bytes()))
            for work in works:
                work.requests["kserve"] = (peer_dir / f"{work.name}.request.bin").read_bytes()
                work.compute_ms["kserve"] = json.loads(
                    (peer_dir / f"{work.name}.compute.json").read_text())["p50_ms"]
                check_peer(_call(kaddr, MODEL_INFER, work.requests["kserve"]), work, python,
                           tmp)
            eport = free_port()
            eaddr = f"127.0.0.1:{eport}"
            procs["grpc floor"] = Proc(
                "grpc floor", [sys.executable, "-m", "benchmarks.peer", "--echo-server",
                               str(eport)], eaddr, tmp / "echo.log",
                lambda: _answers(eaddr, ECHO + "1", b"x"))
            address = {"splitinfer": node.address, "kserve": kaddr, "grpc floor": eaddr}
            triton_checked = {} if args.skip_tritonclient else {
                work.name: check_triton_all(work, address) for work in works}
            steps.advance(note="servers up, answers checked")
            metrics = {"splitinfer": f"http://127.0.0.1:{node.metrics_port}/metrics",
                       "kserve": f"http://127.0.0.1:{hport}/metrics"}
            results: dict[str, Any] = {}
            for work in works:
                method = {"splitinfer": INFER, "kserve": MODEL_INFER,
                          "grpc floor": f"{ECHO}{work.reply_bytes}"}
                table: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
                triton: dict[str, list[dict[str, Any]]] = {side: [] for side in TRITON_SIDES}
                for clients in args.clients:
                    slices: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
                    inside: dict[str, list[float]] = {side: [0.0, 0.0] for side in metrics}
                    tslices: dict[str, list[dict[str, Any]]] = {s: [] for s in TRITON_SIDES}
                    for _ in range(args.rounds):
                        for side in SIDES:
                            before = compute_counters(side, metrics[side], work.name) \
                                if side in metrics and clients == 1 else None
                            slices[side].append(asyncio.run(closed_loop(
                                address[side], method[side], work.requests[side], clients,
                                args.warmup, args.seconds / args.rounds)))
                            if before is not None:
                                after = compute_counters(side, metrics[side], work.name)
                                inside[side][0] += after[0] - before[0]
                                inside[side][1] += after[1] - before[1]
                            steps.advance(note=f"{work.name}, {side}, {clients} clients")
                        for side in () if args.skip_tritonclient else TRITON_SIDES:
                            tslices[side].append(triton_slice(work, side, address, clients,
                                                              args))
                            steps.advance(note=f"{work.name}, tritonclient -> {side}, "
                                               f"{clients} clients")
                    for side in SIDES:
                        table[side].append(summarize(clients, slices[side]))
                    if clients == 1:
                        work.compute_ms.update({f"{side} in server": 1e3 * t / max(1.0, n)
                                                for side, (t, n) in inside.items()})
                    print_point(work, clients, {s: table[s][-1] for s in SIDES})
                    if not args.skip_tritonclient:
                        for side in TRITON_SIDES:
                            triton[side].append(summarize(clients, tslices[side]))
                        print_point(work, clients, {f"tritonclient -> {s}": triton[s][-1]
                                                    for s in TRITON_SIDES})
                results[work.name] = {
                    "label": work.label, "kind": work.kind,
                    "activation_bytes": work.x.numel() * 4,
                    "request_bytes": {s: len(work.requests[s]) for s in SIDES},
                    "reply_bytes": work.reply_bytes, "compute_p50_ms": work.compute_ms,
                    "load": table, "stages_ms": node_stages(node, work, 200)}
                if not args.skip_tritonclient:
                    results[work.name]["tritonclient"] = triton_result(
                        work, triton_checked[work.name], triton)
        finally:
            for proc in procs.values():
                proc.stop()
    return {"workloads": results, **extra}


def print_point(work: Workload, clients: int, rows: dict[str, dict[str, Any]]) -> None:
    cells = "  ".join(f"{side} {r['rps']:6.0f} req/s p50 {r['p50_ms']:6.2f} ms"
                      for side, r in rows.items())
    print(f"  {work.name:18} {clients:3} clients: {cells}", flush=True)


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Overheads at 1 client and the ratios the targets read."""
    for res in results.values():
        one = {side: res["load"][side][0] for side in SIDES}
        floor = one["grpc floor"]["p50_ms"]
        res["overhead_ms"] = {side: one[side]["p50_ms"] - res["compute_p50_ms"][side]
                              for side in ("splitinfer", "kserve")}
        res["overhead_ms"]["grpc floor"] = floor
        res["overhead_ratio"] = res["overhead_ms"]["splitinfer"] / res["overhead_ms"]["kserve"]
        # what the serving layer adds around the tail as it ran inside each server (cold
        # caches between requests make it slower there than alone, on both sides)
        res["serving_ms"] = {side: one[side]["p50_ms"] - res["compute_p50_ms"][f"{side} in server"]
                             for side in ("splitinfer", "kserve")
                             if f"{side} in server" in res["compute_p50_ms"]}
        res["rps_ratio"] = {r["clients"]: r["rps"] / k["rps"] for r, k in
                            zip(res["load"]["splitinfer"], res["load"]["kserve"])}
        res["above_floor_ms"] = res["overhead_ms"]["splitinfer"] - floor
        res["target_overhead_ms"] = TARGET_OVERHEAD * res["overhead_ms"]["kserve"]
        res["target_below_floor"] = res["target_overhead_ms"] < floor
        tc = res.get("tritonclient")
        if tc:  # the same client on both sides
            load = tc["load"]
            tc["rps_ratio"] = {r["clients"]: r["rps"] / k["rps"]
                               for r, k in zip(load["splitinfer"], load["kserve"])}
            tc["p50_ratio"] = {r["clients"]: r["p50_ms"] / k["p50_ms"]
                               for r, k in zip(load["splitinfer"], load["kserve"])}
            # at 1 client: what tritonclient's infer adds over replaying bytes to the same
            # server (ours: OIP through tritonclient against our own protocol's bytes)
            tc["over_bytes_p50_ms"] = {side: load[side][0]["p50_ms"]
                                       - res["load"][side][0]["p50_ms"]
                                       for side in TRITON_SIDES}
    return results


def check_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, res in results.items():
        kb = res["activation_bytes"] // 1000
        if res["kind"] == "light":  # the serving path alone: the overhead targets
            o = res["overhead_ratio"]
            out[f"{kb} KB activation: overhead vs KServe, 1 client"] = {
                "value": o, "target": f"<= {TARGET_OVERHEAD}", "pass": o <= TARGET_OVERHEAD,
                "below_floor": res["target_below_floor"]}
            continue
        for clients, target in ((1, TARGET_RPS_1), (16, TARGET_RPS_16)):
            if clients not in res["rps_ratio"]:
                continue  # not measured this run (--clients)
            r = res["rps_ratio"][clients]
            out[f"{name} ({kb} KB): req/s vs KServe, {clients} client(s)"] = {
                "value": r, "target": f">= {target}", "pass": r >= target}
    return out


def report(results: dict[str, Any], targets: dict[str, dict[str, Any]],
           extra: dict[str, Any]) -> None:
    for name, res in results.items():
        print(f"\n{res['label']} ({res['activation_bytes']} bytes; request bytes "
              + ", ".join(f"{s} {n}" for s, n in res["request_bytes"].items())
              + f"; our reply {res['reply_bytes']} bytes)")
        print(f"  {'clients':>7} | " + " | ".join(f"{s:^27}" for s in SIDES)
              + " | ours/KServe req/s")
        for i, clients in enumerate(r["clients"] for r in res["load"]["splitinfer"]):
            cells = " | ".join(f"{res['load'][s][i]['rps']:6.0f}/s p50 "
                               f"{res['load'][s][i]['p50_ms']:6.2f} p95 "
                               f"{res['load'][s][i]['p95_ms']:6.2f}" for s in SIDES)
            print(f"  {clients:>7} | {cells} | {res['rps_ratio'][clients]:.2f}x")
        c, o = res["compute_p50_ms"], res["overhead_ms"]
        st = res["stages_ms"]
        print(f"  bare compute p50: ours {c['splitinfer']:.2f} ms, KServe's {c['kserve']:.2f} ms "
              f"(each in its own process, 1 thread)")
        print(f"  overhead at 1 client (p50 - bare compute): ours {o['splitinfer']:.2f} ms, "
              f"KServe {o['kserve']:.2f} ms ({res['overhead_ratio']:.2f}x); the grpc floor for "
              f"these bytes {o['grpc floor']:.2f} ms: ours is {res['above_floor_ms']:.2f} ms "
              "above it")
        if len(res.get("serving_ms", {})) == 2:
            sv = res["serving_ms"]
            print(f"  the tail inside each server at 1 client (mean): ours "
                  f"{c['splitinfer in server']:.2f} ms, KServe's {c['kserve in server']:.2f} ms; "
                  f"p50 minus that: ours {sv['splitinfer']:.2f} ms, KServe {sv['kserve']:.2f} ms "
                  f"({sv['splitinfer'] / sv['kserve']:.2f}x)")
        print(f"  the node's own stages p50 (lone requests): decode+checks {st['decode']:.3f}, "
              f"queue (loop -> worker) {st['queue']:.3f}, compute {st['compute']:.3f}, "
              f"encode {st['encode']:.3f} ms")
        if res.get("tritonclient"):
            report_triton(res["tritonclient"])
    h = extra["hops"]
    print(f"\nthe node's two thread hops alone (its Batcher, a tail that does nothing, in this "
          f"process): {h['two_hops_p50_ms']:.3f} ms p50; an asyncio future resolved on the loop "
          f"itself: {h['same_thread_p50_ms']:.3f} ms")
    print("each tail alone, 1 thread, as the node runs it vs channels_last weights and input:")
    for name, lay in extra["layouts"].items():
        print(f"  {name:18} {lay['default_ms']:7.2f} ms vs {lay['channels_last_ms']:7.2f} ms "
              f"({lay['default_ms'] / lay['channels_last_ms']:.2f}x)")
    print()
    for name, t in targets.items():
        extra = " (target below grpcio's floor for these bytes)" if t.get("below_floor") else ""
        print(f"{'PASS' if t['pass'] else 'FAIL'}: {name} {t['value']:.2f} "
              f"(target {t['target']}){extra}")


def report_triton(tc: dict[str, Any]) -> None:
    m, d = tc["models"], tc["max_abs_diff"]
    print(f"  tritonclient.grpc.aio infer, the same client on both sides: our node's OIP model "
          f"{m['splitinfer']!r} | KServe's {m['kserve']!r} (answers checked: max |diff| vs "
          f"the local tail {d['splitinfer']:.1e} | {d['kserve']:.1e})")
    print(f"  {'clients':>7} | " + " | ".join(f"{'tritonclient -> ' + s:^34}"
                                               for s in TRITON_SIDES)
          + " | ours/KServe req/s | p50")
    for i, ours in enumerate(tc["load"]["splitinfer"]):
        clients = ours["clients"]
        cells = " | ".join(f"{tc['load'][s][i]['rps']:9.0f}/s p50 {tc['load'][s][i]['p50_ms']:6.2f}"
                           f" p95 {tc['load'][s][i]['p95_ms']:6.2f}" for s in TRITON_SIDES)
        print(f"  {clients:>7} | {cells} | {tc['rps_ratio'][clients]:17.2f}x | "
              f"{tc['p50_ratio'][clients]:.2f}x")
    ob = tc["over_bytes_p50_ms"]
    print(f"  at 1 client tritonclient adds over the byte replay to the same server: ours "
          f"{ob['splitinfer']:+.2f} ms (OIP via tritonclient vs our protocol's bytes), KServe "
          f"{ob['kserve']:+.2f} ms")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short windows, fewer repeats")
    ap.add_argument("--seconds", type=float, default=None, help="measured seconds per point")
    ap.add_argument("--peer-venv", type=Path, default=DEFAULT_PEER_VENV,
                    help=f"the KServe venv (made when missing; default {DEFAULT_PEER_VENV})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    ap.add_argument("--node-flags", type=shlex.split, default=[], metavar="'FLAGS'",
                    help="more splitinfer-edge flags, one quoted string (default: none)")
    ap.add_argument("--kserve-threads", type=int, default=1,
                    help="torch threads in the KServe process (default 1)")
    ap.add_argument("--clients", type=int, nargs="+", default=list(CONCURRENCY),
                    help=f"concurrencies to measure (default {' '.join(map(str, CONCURRENCY))}; "
                         "the targets read 1 and 16)")
    ap.add_argument("--skip-tritonclient", action="store_true",
                    help="leave out the tritonclient -> node / tritonclient -> KServe mode")
    ap.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.seconds = args.seconds or (1.5 if args.quick else 4.5)
    args.rounds = 2 if args.quick else 3
    args.warmup = 0.3 if args.quick else 0.5
    args.repeats = 100 if args.quick else 300
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.echo_server:
        asyncio.run(_echo_server(args.echo_server))
        return 0
    if not args.skip_tritonclient and _version("tritonclient") == "not installed":
        raise SystemExit("the tritonclient mode needs tritonclient[grpc] in this venv (pip "
                         "install -e '.[test]'); or run with --skip-tritonclient")
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peer-bench-") as tmp:
        everything = run(args, Path(tmp))
    results = derive(everything.pop("workloads"))
    targets = check_targets(results)
    report(results, targets, everything)
    ok = all(t["pass"] for t in targets.values())
    meta = {"cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "grpc": grpc.__version__,
            "processor": platform.processor() or platform.platform(),
            "peer": list(PEER_PACKAGES), "node_flags": list(NODE_FLAGS),
            "tritonclient": None if args.skip_tritonclient else _version("tritonclient"),
            "seconds_per_point": args.seconds, "slices": args.rounds, "quick": args.quick,
            "weights": "random (timing only); inputs: scikit-learn's china.jpg through the head",
            "wall_s": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "workloads": results, **everything,
                                    "targets": targets, "pass": ok}, indent=1,
                                   default=str) + "\n")
    print(f"wrote {args.out} ({meta['wall_s']} s)")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
