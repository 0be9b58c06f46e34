"""Edge node benchmark: throughput and latency with batching on and off, and the node's overhead.

    python -m benchmarks.edge [--quick] [--seconds S] [--workers N] [--out PATH] [--strict]

One run, side by side, against real ``splitinfer-edge`` processes on loopback:

1. Closed-loop load at 1, 4, 16 and 64 concurrent clients (each sends its next request when the
   last one is answered) against a node with batching on (``--max-batch-size 16``, no batching
   delay: batches form from what queues while the workers are busy) and one with batching off
   (``--max-batch-size 1``); requests/s and
   p50/p99 latency. Both nodes run at once and the modes alternate in short slices, so a
   neighbour's load on a shared machine hits both sides alike; a point counts the answers that
   arrive in its window. The model is torchvision's VGG-16 (random weights) cut after its
   feature extractor (``avgpool``): one request sends a 512x7x7 activation (100 KB) and the
   edge runs the classifier, three fully connected layers over 124M fp32 weights (~480 MB).
   Unbatched, each request streams every weight from memory for one row; a batch streams them
   once for all its rows — the classic split-inference tail (the fc layers are most of VGG's
   weights and little of its compute) and the case dynamic batching exists for. A table of the
   tail's own compute by batch rows shows how much batching can buy on this CPU.
2. The node's own overhead for a ~100 KB activation, one request at a time: its Infer round trip
   minus a bare gRPC echo of the same bytes (``Probe`` with ``payload`` and ``response_bytes``
   set to the Infer request and answer sizes) minus the bare tail compute, measured in this
   process with the node's thread setting. The tail there is tiny (mean + Linear(256, 10)) so
   compute noise does not swamp what is measured.

Weights are random (timing only); inputs are real: scikit-learn's sample photos (china.jpg
through VGG's features, flower.jpg's normalized pixels for the overhead's activation).

Clients are grpc.aio coroutines in this process sending pre-serialized bytes (no protobuf work
per call); the node runs in its own process. Both share this machine's cores; the tables show
each side's CPU use so a saturated client is visible. Ends with PASS/FAIL against the targets.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # this process only measures one-thread compute

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import load  # noqa: E402
from benchmarks.load import pct  # noqa: E402
from benchmarks.progress import Steps  # noqa: E402
from benchmarks.tailtime import time_ms  # noqa: E402
from splitinfer.codec import get_codec  # noqa: E402
from splitinfer.model.bundle import load_bundle, save_bundle  # noqa: E402
from splitinfer.model.split_model import partition  # noqa: E402
from splitinfer.model.tensors import decode_torch  # noqa: E402
from splitinfer.tools.edgeproc import EdgeProcess, start_edge  # noqa: E402
from splitinfer.tools.frames import normalized, sample_frames  # noqa: E402
from splitinfer.wire import convert  # noqa: E402
from splitinfer.wire.v1 import inference_pb2, probe_pb2  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "edge.json"
INFER = "/splitinfer.v1.EdgeInference/Infer"
PROBE = "/splitinfer.v1.EdgeInference/Probe"
CONCURRENCY = (1, 4, 16, 64)
NODE_FLAGS = ("--torch-threads", "1", "--profile-tails", "false", "--log-level", "WARNING")
BATCH = "splitinfer_edge_batch_size"
MODES = {"batching on": ("--max-batch-size", "16"),  # no batching delay: the node's default
         "batching off": ("--max-batch-size", "1")}
TARGET_SPEEDUP = 2.0      # batching on / off, requests/s at 16 clients
TARGET_OVERHEAD_S = 1e-3  # node's own p50 overhead per request, ~100 KB activation
BATCH_ROWS = (1, 2, 4, 8, 12, 16, 32)


class Wide(nn.Module):
    """A 100x256 fp32 activation (100 KB) into a tail that costs microseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=1))


@dataclass
class Workload:
    """One model's bundle, the cut served, and one ready-to-send request."""

    name: str
    sm: Any  # SplitModel, loaded back from the bundle as the node loads it
    cut_id: int
    x: torch.Tensor
    payload: bytes  # a serialized InferRequest

    def crossing(self) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return tuple(self.sm.head(self.cut_id)(self.x))

    def expected(self) -> torch.Tensor:
        with torch.no_grad():
            return self.sm.tail(self.cut_id)(*self.crossing())


def build_workload(model: nn.Module, x: torch.Tensor, name: str, cut_name: str,
                   repo: Path) -> Workload:
    sm = partition(model.eval(), (x,), name=name)
    save_bundle(sm, repo / name / "1")
    sm = load_bundle(repo / name / "1")
    cut = sm.cut(cut_name)
    work = Workload(name, sm, cut.id, x, b"")
    fp32 = get_codec("fp32")
    tensors = [fp32.encode(t, name=s.name) for t, s in zip(work.crossing(), cut.tensors)]
    work.payload = convert.build_infer_request(
        model=name, version="1", fingerprint=sm.fingerprint, cut_id=cut.id, tensors=tensors,
        request_id="bench").SerializeToString()
    return work


def check_answer(reply: bytes, work: Workload) -> None:
    result = convert.parse_infer_response(inference_pb2.InferResponse.FromString(reply))
    got = decode_torch(result.outputs[0])
    if not torch.allclose(got, work.expected(), rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{work.name}: the node's answer differs from the local tail")


# ---- 1. throughput and latency against concurrency --------------------------------------------

async def closed_loop(node: EdgeProcess, payload: bytes, clients: int, warmup_s: float,
                      measure_s: float) -> dict[str, Any]:
    """``clients`` coroutines, each one request at a time; keeps the answers inside the window.

    Returns the window's latencies and counter deltas (CPU seconds, batch rows): slices of
    several runs add up (:func:`summarize_slices`).
    """
    def sample() -> dict[str, float]:
        return {"server": node.cpu_seconds(), "rows": node.metric_sum(BATCH + "_sum"),
                "batches": node.metric_sum(BATCH + "_count")}

    got = await load.closed_loop(node.address, INFER, payload, clients, warmup_s, measure_s,
                                 sample)
    got["client"], got["machine"] = got.pop("client_cpu"), got.pop("machine_cpu")
    return got


def summarize_slices(clients: int, slices: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [t for s in slices for t in s["latencies"]]
    secs = sum(s["seconds"] for s in slices)
    total = {k: sum(s[k] for s in slices) for k in ("client", "server", "machine", "rows",
                                                     "batches")}
    return {"clients": clients, "requests": len(latencies), "seconds": secs,
            "rps": len(latencies) / secs,
            "p50_ms": pct(latencies, 0.50) * 1e3, "p99_ms": pct(latencies, 0.99) * 1e3,
            "rows_per_batch": total["rows"] / max(1.0, total["batches"]),
            "client_cpu": total["client"] / secs, "server_cpu": total["server"] / secs,
            "other_cpu": max(0.0, total["machine"] - total["client"] - total["server"]) / secs}


def load_table(nodes: dict[str, EdgeProcess], payload: bytes, args: argparse.Namespace,
               steps: Steps | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every concurrency on every node; the modes alternate in short slices, so a neighbour's
    load on this shared machine hits both sides of the comparison alike. ``steps`` advances
    once a slice."""
    load: dict[str, list[dict[str, Any]]] = {mode: [] for mode in nodes}
    for clients in CONCURRENCY:
        slices: dict[str, list[dict[str, Any]]] = {mode: [] for mode in nodes}
        for _ in range(args.rounds):
            for mode, node in nodes.items():
                slices[mode].append(asyncio.run(closed_loop(
                    node, payload, clients, args.warmup, args.seconds / args.rounds)))
                if steps is not None:
                    steps.advance(note=f"{mode}, {clients} clients")
        for mode in nodes:
            row = summarize_slices(clients, slices[mode])
            load[mode].append(row)
            print(f"  {mode:13} {clients:3} clients: {row['rps']:7.0f} req/s  p50 "
                  f"{row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms", flush=True)
    return load


def print_load_table(rows: dict[str, list[dict[str, Any]]]) -> None:
    print(f"\n{'clients':>7} | {'batching on':^46} | {'batching off':^46} | {'speedup':>7}")
    head = f"{'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'rows':>5} {'cpu c/s/o %':>13}"
    print(f"{'':>7} | {head:^46} | {head:^46} |")
    for on, off in zip(rows["batching on"], rows["batching off"]):
        cells = [f"{r['rps']:7.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
                 f"{r['rows_per_batch']:5.1f} "
                 f"{r['client_cpu'] * 100:4.0f}/{r['server_cpu'] * 100:.0f}/"
                 f"{r['other_cpu'] * 100:<4.0f}" for r in (on, off)]
        print(f"{on['clients']:>7} | {cells[0]:^46} | {cells[1]:^46} | "
              f"{on['rps'] / off['rps']:6.2f}x")


# ---- 2. the node's own overhead ---------------------------------------------------------------

def bare_compute_ms(work: Workload, repeats: int) -> float:
    """p50 ms per tail call in this process, one thread like the node's workers."""
    return time_ms(work.sm.tail(work.cut_id), *work.crossing(), repeats=repeats)


def echo_request(payload_len: int, reply_len: int) -> bytes:
    """A ProbeRequest as long as the Infer request, asking for as many bytes as Infer answers."""
    msg = probe_pb2.ProbeRequest(probe_id="bench", response_bytes=reply_len)
    msg.payload = bytes(max(0, payload_len - msg.ByteSize() - 4))
    return msg.SerializeToString()


def overhead(node: EdgeProcess, work: Workload, repeats: int) -> dict[str, Any]:
    """Infer and Probe round trips, alternated so drift hits both alike."""
    with grpc.insecure_channel(node.address) as channel:
        infer, probe = channel.unary_unary(INFER), channel.unary_unary(PROBE)
        reply = infer(work.payload, timeout=60)
        check_answer(reply, work)
        echo = echo_request(len(work.payload), len(reply))
        for _ in range(max(50, repeats // 10)):
            infer(work.payload, timeout=60)
            probe(echo, timeout=60)
        rtt_infer, rtt_probe, replies = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            replies.append(infer(work.payload, timeout=60))
            t1 = time.perf_counter()
            probe(echo, timeout=60)
            rtt_infer.append(t1 - t0)
            rtt_probe.append(time.perf_counter() - t1)
    compute_ms = bare_compute_ms(work, repeats)
    stages = [convert.parse_infer_response(inference_pb2.InferResponse.FromString(r)).timing
              for r in replies]
    p50 = statistics.median
    out = {"request_bytes": len(work.payload), "reply_bytes": len(reply),
           "echo_request_bytes": len(echo), "repeats": repeats,
           "infer_p50_ms": p50(rtt_infer) * 1e3, "infer_p99_ms": pct(rtt_infer, 0.99) * 1e3,
           "echo_p50_ms": p50(rtt_probe) * 1e3, "compute_p50_ms": compute_ms}
    out["overhead_p50_ms"] = out["infer_p50_ms"] - out["echo_p50_ms"] - out["compute_p50_ms"]
    for stage in ("decode", "queue", "compute", "encode"):
        out[f"server_{stage}_p50_ms"] = p50(getattr(t, f"{stage}_s") for t in stages) * 1e3
    return out


def print_overhead(mode: str, o: dict[str, Any]) -> None:
    print(f"{mode:13} infer p50 {o['infer_p50_ms']:6.3f} ms (p99 {o['infer_p99_ms']:6.3f}) "
          f"- echo p50 {o['echo_p50_ms']:6.3f} - compute p50 {o['compute_p50_ms']:6.3f} "
          f"= overhead {o['overhead_p50_ms']:6.3f} ms   | node's own stage p50s: decode "
          f"{o['server_decode_p50_ms']:.3f}, queue {o['server_queue_p50_ms']:.3f}, compute "
          f"{o['server_compute_p50_ms']:.3f}, encode {o['server_encode_p50_ms']:.3f} ms")


# ---- the tail alone, by batch rows -----------------------------------------------------------

def rows_table(work: Workload, repeats: int) -> list[dict[str, float]]:
    """The tail's compute by batch rows, in this process on one thread: what batching can buy."""
    tail, (one,) = work.sm.tail(work.cut_id), work.crossing()
    out = []
    with torch.no_grad():
        for rows in BATCH_ROWS:
            x = one.expand(rows, *one.shape[1:]).contiguous()
            for _ in range(3):
                tail(x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                tail(x)
                times.append(time.perf_counter() - t0)
            out.append({"rows": rows, "ms": statistics.median(times) * 1e3})
    base = out[0]["ms"]
    for r in out:
        r["per_row_gain"] = base * r["rows"] / r["ms"]
    return out


def print_rows_table(table: list[dict[str, float]]) -> None:
    print("\nthe VGG-16 classifier tail alone, this process, 1 thread (what batching can buy on "
          "this CPU):")
    print(f"  {'rows':16}" + "".join(f"{r['rows']:>8}" for r in table))
    print(f"  {'ms':16}" + "".join(f"{r['ms']:8.2f}" for r in table))
    print(f"  {'rows/s vs 1 row':16}" + "".join(f"{r['per_row_gain']:7.1f}x" for r in table))


# ---- main -------------------------------------------------------------------------------------

def node_flags(args: argparse.Namespace) -> list[str]:
    return ["--workers", str(args.workers), *NODE_FLAGS]


def run(args: argparse.Namespace, repo: Path) -> dict[str, Any]:
    # steps: the workloads, the rows table, each node's start, each load slice, each overhead
    total = 2 + len(MODES) * (2 + len(CONCURRENCY) * args.rounds)
    with Steps("edge benchmark", total) as steps:
        torch.manual_seed(0)
        # real inputs (scikit-learn's sample photos), random weights: timing only
        frame = torch.from_numpy(normalized(sample_frames(64)[0]))
        vgg = build_workload(torchvision.models.vgg16(), frame, "vgg16",
                             "avgpool", repo)
        pixels = torch.from_numpy(normalized(sample_frames(224)[9])).reshape(-1)
        wide = build_workload(Wide(), pixels[:100 * 256].reshape(1, 100, 256).clone(), "wide",
                              "input", repo)
        steps.advance(note="bundles written")
        rows = rows_table(vgg, 10 if args.quick else 30)
        steps.advance(note="the tail by batch rows")
        nodes: dict[str, EdgeProcess] = {}
        try:
            for mode, flags in MODES.items():
                nodes[mode] = start_edge(repo, *node_flags(args), *flags)
                with grpc.insecure_channel(nodes[mode].address) as channel:
                    check_answer(channel.unary_unary(INFER)(vgg.payload, timeout=60), vgg)
                steps.advance(note=f"{mode}: node SERVING")
            load = load_table(nodes, vgg.payload, args, steps)
            over = {}
            for mode, node in nodes.items():
                over[mode] = overhead(node, wide, args.repeats)
                steps.advance(note=f"{mode}: overhead")
        finally:
            for node in nodes.values():
                node.stop()
    return {"load": load, "overhead": over, "tail_by_rows": rows,
            "activation_bytes": wide.x.numel() * 4}


def check_targets(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    on16, off16 = (next(r for r in res["load"][mode] if r["clients"] == 16)
                   for mode in ("batching on", "batching off"))
    speedup = on16["rps"] / off16["rps"]
    own_ms = res["overhead"]["batching off"]["overhead_p50_ms"]
    return {
        "batching speedup at 16 clients": {"value": speedup, "target": f">= {TARGET_SPEEDUP}",
                                           "pass": speedup >= TARGET_SPEEDUP},
        "own overhead p50 ms (100 KB)": {"value": own_ms,
                                         "target": f"<= {TARGET_OVERHEAD_S * 1e3:g}",
                                         "pass": own_ms <= TARGET_OVERHEAD_S * 1e3},
    }


def print_intro(args: argparse.Namespace) -> None:
    print(f"edge node benchmark: real splitinfer-edge processes on loopback. Clients (grpc.aio, "
          f"this process) and the node share this machine's {os.cpu_count()} CPU core(s), so "
          f"under load they compete; 'cpu c/s/o' is the % of one core used by client, server "
          f"and other processes (other > ~10%: something else ran and disturbed the point); "
          f"'rows' is the mean rows per executed batch.\n"
          f"model: VGG-16 cut after avgpool (512x7x7 = 100 KB per request), the edge runs the "
          f"classifier: unbatched, each request streams ~480 MB of fc weights for one row; "
          f"batched, the weights are read once per batch.\n"
          f"node: {' '.join(node_flags(args))}; {args.seconds:g} s per point in {args.rounds} "
          f"slices alternating between the modes, each after {args.warmup:g} s warmup")


def report(args: argparse.Namespace, res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    print_load_table(res["load"])
    print_rows_table(res["tail_by_rows"])
    over = res["overhead"]
    print(f"\nnode's own overhead, one request at a time, "
          f"{over['batching off']['request_bytes']}-byte Infer request (activation "
          f"{res['activation_bytes']} bytes fp32), {args.repeats} round trips each:")
    for mode, o in over.items():
        print_overhead(mode, o)
    print("(the target reads batching off)\n")
    targets = check_targets(res)
    for name, t in targets.items():
        print(f"{'PASS' if t['pass'] else 'FAIL'}: {name} {t['value']:.3f} (target "
              f"{t['target']})")
    return targets


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.edge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short windows, fewer repeats")
    ap.add_argument("--seconds", type=float, default=None, help="measured seconds per point")
    ap.add_argument("--workers", type=int, default=2,
                    help="the node's --workers, both modes (default 2)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    args = ap.parse_args(argv)
    args.seconds = args.seconds or (1.5 if args.quick else 6.0)
    args.rounds = 2 if args.quick else 3
    args.warmup = 0.3 if args.quick else 0.5
    args.repeats = 300 if args.quick else 2000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    print_intro(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edge-bench-repo-") as tmp:
        res = run(args, Path(tmp))
    targets = report(args, res)
    ok = all(t["pass"] for t in targets.values())
    meta = {"cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "grpc": grpc.__version__,
            "processor": platform.processor() or platform.platform(),
            "node_flags": node_flags(args), "modes": {k: list(v) for k, v in MODES.items()},
            "seconds_per_point": args.seconds, "slices": args.rounds, "warmup_s": args.warmup,
            "quick": args.quick,
            "load_model": "torchvision vgg16 (random weights) cut after avgpool, on a 64x64 crop "
                          "of scikit-learn's china.jpg",
            "overhead_model": "mean(1) + Linear(256, 10) on a 1x100x256 fp32 input (the first "
                              "25,600 normalized pixel values of flower.jpg)",
            "wall_s": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, **res, "targets": targets, "pass": ok},
                                   indent=1) + "\n")
    print(f"wrote {args.out} ({meta['wall_s']} s)")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
