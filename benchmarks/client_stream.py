"""Client streaming: frames/s of ``SplitClient.stream()`` vs sequential ``infer()`` at 30 ms RTT.

    python -m benchmarks.client_stream [--frames N] [--out PATH]

One run, side by side, on this machine:

- Model: torchvision ResNet-18 (random weights, seed 0), 1x3x64x64 frames (real photos:
  ``splitinfer.tools.frames.batch(1, 64, start=i)``, the 18 crops of scikit-learn's sample
  photos in turn, ImageNet-normalized), cut after
  ``layer2`` with int8+zstd (a ~3-6 KB request): head and tail each take a few milliseconds
  here, shorter than the round trip, which is the case pipelining is for.
- Edge: a real ``splitinfer-edge`` process (``--max-batch-size 8 --max-queue-delay-ms 2``).
- Link: the project's link emulator between them, 100 Mbit/s each way and 15 ms one-way delay
  (30 ms RTT).
- Measured: N frames through ``infer()`` one after another, then the same N frames through
  ``stream()`` with windows 1, 4, 8 and 16; frames/s for each, and the ratio of each stream to
  sequential. The answers of every run are compared with sequential's (same model, codec and
  cut, so they must agree to float rounding).

Target: stream (window 8) >= 3x sequential frames/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

from benchmarks.progress import Steps
from device_client import SplitClient
from splitinfer.model.bundle import save_bundle
from splitinfer.model.split_model import partition
from splitinfer.tools.edgeproc import start_edge
from splitinfer.tools.frames import batch, normalized
from splitinfer.tools.netem import LinkEmulator, LinkShape

RESULTS = Path(__file__).parent / "results"
WINDOWS = (1, 4, 8, 16)
TARGET = 3.0
LINK = LinkShape(rate_bps=100e6, delay_s=0.015)
EDGE_FLAGS = ("--max-batch-size", "8", "--max-queue-delay-ms", "2", "--log-level", "WARNING")


def export(repo: Path) -> tuple[Path, Any, int]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    sm = partition(model, (torch.zeros(1, 3, 64, 64),), name="resnet18")
    path = repo / "resnet18" / "1"
    save_bundle(sm, path)
    cut = max(c.id for c in sm.cuts if c.name.startswith("layer2"))
    return path, sm, cut


def run(args: argparse.Namespace, repo: Path) -> dict[str, Any]:
    # steps: the bundle, the node, sequential infer(), one per stream() window
    with Steps("client streaming", 3 + len(WINDOWS)) as steps:
        bundle, sm, cut = export(repo)
        steps.advance(note="bundle written")
        node = start_edge(repo, *EDGE_FLAGS)
        steps.advance(note="edge node SERVING")
        try:
            rows, stats = measure_all(args, node.port, bundle, cut, steps)
        finally:
            node.stop()
    return {"rows": rows, "cut": cut, "cut_name": sm.cuts[cut].name,
            "request_bytes": stats.bytes_sent // max(stats.requests, 1)}


def measure_all(args: argparse.Namespace, edge_port: int, bundle: Path, cut: int,
                steps: Steps) -> tuple[list[dict[str, Any]], Any]:
    """Sequential infer(), then stream() at each window, through the link emulator; (rows,
    the sequential client's stats)."""
    frames = [torch.from_numpy(normalized(batch(1, 64, start=i))) for i in range(args.frames)]
    rows = []
    with LinkEmulator(("127.0.0.1", edge_port), shape=LINK) as proxy:
        address = f"127.0.0.1:{proxy.port}"
        opts = dict(cut=cut, codec="int8+zstd", deadline_s=10.0, fallback="error",
                    probe_interval_s=3600.0)
        with SplitClient(bundle, [address], **opts) as client:
            for x in frames[:5]:
                client.infer(x)  # warm-up: connection, tail cache, allocator
            start = time.perf_counter()
            want = [client.infer(x) for x in frames]
            seq_s = time.perf_counter() - start
            rows.append({"mode": "infer (sequential)", "window": 1, "seconds": seq_s,
                         "fps": len(frames) / seq_s, "ratio": 1.0, "max_diff": 0.0})
            print(f"sequential infer: {len(frames) / seq_s:7.1f} frames/s", flush=True)
            steps.advance(note="sequential infer()")
            for window in WINDOWS:
                rows.append(measure_stream(bundle, address, opts, window, frames, want,
                                           len(frames) / seq_s))
                steps.advance(note=f"stream() window {window}")
            stats = client.stats
    return rows, stats


def measure_stream(bundle: Path, address: str, opts: dict[str, Any], window: int,
                   frames: list[torch.Tensor], want: list[torch.Tensor],
                   seq_fps: float) -> dict[str, Any]:
    with SplitClient(bundle, [address], window=window, **opts) as client:
        list(client.stream(frames[:window + 2]))  # warm-up
        start = time.perf_counter()
        got = list(client.stream(frames))
        took = time.perf_counter() - start
    diff = max(float((a - b).abs().max()) for a, b in zip(got, want))
    fps = len(frames) / took
    print(f"stream window {window:2d}:   {fps:7.1f} frames/s  ({fps / seq_fps:.2f}x sequential, "
          f"max |diff| {diff:.2g})", flush=True)
    return {"mode": "stream", "window": window, "seconds": took, "fps": fps,
            "ratio": fps / seq_fps, "max_diff": diff}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["infer()"] + [f"stream()\nwindow {r['window']}" for r in rows[1:]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(rows)), [r["fps"] for r in rows], color=["grey"] + ["C0"] * (len(rows) - 1))
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("frames/s")
    ax.set_title("ResNet-18 split, 30 ms RTT, 100 Mbit/s: streaming vs sequential", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.client_stream", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200, help="frames per run (default 200)")
    ap.add_argument("--out", type=Path, default=RESULTS / "client_stream.json")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target fails")
    args = ap.parse_args(argv)
    if args.frames < 20:
        ap.error(f"--frames {args.frames}: use at least 20 for a stable rate")
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="client-stream-") as tmp:
        res = run(args, Path(tmp))
    rows = res["rows"]
    best8 = next(r for r in rows if r["mode"] == "stream" and r["window"] == 8)
    ok = best8["ratio"] >= TARGET
    print(f"{'PASS' if ok else 'FAIL'}: stream (window 8) / sequential = {best8['ratio']:.2f} "
          f"(target >= {TARGET})")
    out = {"meta": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "frames": args.frames,
                    "link": {"rate_mbps": LINK.rate_bps / 1e6, "rtt_ms": 2 * LINK.delay_s * 1e3},
                    "edge_flags": EDGE_FLAGS, "wall_s": round(time.perf_counter() - started, 1)},
           **res, "target": {"ratio_window_8": TARGET, "value": best8["ratio"], "pass": ok}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
