"""``splitinfer demo``: the product's main job, live, on this machine, in about a minute.

1. A bundle of torchvision's MobileNetV3-Small (random weights; see ``splitinfer.tools.demo_report`` for why
   this model) under ``.demo/repo/``, built on the first run and reused after. Its input is the
   camera frame (uint8 224x224x3, ImageNet normalization inside the graph); the requests are
   real photos, the 18 crops of ``splitinfer.tools.frames`` in turn.
2. A real edge node subprocess (``python -m edge_node``, 1 torch thread) and, in this process,
   the link emulator between device and edge (default 20 Mbit/s each way, 40 ms RTT).
3. The device is this process, made slower than the edge: one torch thread, emulated
   ``--device-slowdown`` (default 15) times slower by time dilation (``SplitClient(...,
   device_slowdown=K)``: each piece of device work idles K-1 times its CPU time, and the
   device profile is that device's). ``--device-cpu-quota C`` instead puts every thread started
   from here on in a cgroup-v1 CPU quota where writable (the client's device thread inherits
   it; the edge and the emulator were started before); noisier: the kernel cuts the work into
   1 ms slices, so the same head takes a different time wherever it falls in the period.
4. ``device_client.SplitClient`` measures the link, plans (cut and codec) and runs N requests;
   then the same N device-only and edge-only (the frame as a JPEG q90, what a phone app
   sends), each timed per request.
5. A table (link, plan, p50/p95, bytes per request, speedup), where a split is predicted to win
   (bandwidth and device speed, from the same profiles), ``demo.json`` and ``demo.png``.

Every process, thread and cgroup it starts is ended on success, error and Ctrl-C (exit 130).
``splitinfer demo --offline`` is the older codec demo without a network (``splitinfer.tools.codec_demo``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from splitinfer.core.errors import SplitInferError

from . import demo_report
from .console import Output
from .cpuquota import DeviceQuota
from .edgeproc import start_edge
from .netem import LinkEmulator, LinkShape

if TYPE_CHECKING:
    from device_client import SplitClient
    from splitinfer.core.planner import Plan
    from splitinfer.core.profiles import DeviceProfile

__all__ = ["run_live"]

# one torch thread: on a 2-core machine two OpenMP threads in the edge's worker thread ran
# MobileNetV3-Small ~2x slower than one (the demo's device and emulator use the other core)
EDGE_FLAGS = ("--torch-threads", "1", "--max-batch-size", "1", "--log-level", "WARNING")
WARMUP = 2


def _ui(args: argparse.Namespace) -> Output:
    """The CLI's output (``main`` sets ``args.ui``); plain auto-detection when called bare."""
    ui = getattr(args, "ui", None)
    return ui if isinstance(ui, Output) else Output()


def _say(args: argparse.Namespace, text: str) -> None:
    """A step of the demo, one line as it happens (stderr with ``--json``)."""
    _ui(args).line(text)


def _run_mode(client: SplitClient, inputs: list[Any], keep: int
              ) -> tuple[list[float], int, dict[str, int], list[np.ndarray]]:
    """Latencies of ``len(inputs)`` requests (after warm-up), bytes sent, who answered, and the
    first ``keep`` outputs as numpy."""
    for x in inputs[:WARMUP]:
        client.infer_result(x)
    before = client.stats.bytes_sent
    latencies: list[float] = []
    answered: dict[str, int] = {}
    outs: list[np.ndarray] = []
    for i, x in enumerate(inputs):
        r = client.infer_result(x)
        latencies.append(r.latency_s)
        by = "edge" if r.answered_by.startswith("edge") else r.answered_by
        answered[by] = answered.get(by, 0) + 1
        if i < keep:
            outs.append(np.asarray(r.outputs.detach().cpu().numpy() if hasattr(r.outputs, "detach")
                                   else r.outputs))
    return latencies, client.stats.bytes_sent - before, answered, outs


def _predicted(plan: Plan | None, cut_id: int, codec: str | None) -> float | None:
    if plan is None:
        return None
    if codec is None:
        return plan.device_only_s
    return next((a.breakdown.total_s for a in plan.alternatives
                 if a.cut_id == cut_id and a.codec == codec), None)


def _measure(stack: contextlib.ExitStack, bundle: Path, proxy_addr: str,
             device: DeviceProfile, args: argparse.Namespace) -> dict[str, Any]:
    """The three modes, one client each, the same inputs in the same order."""
    from device_client import SplitClient

    inputs = _frames(args.input_size, args.requests)
    last = device.cuts[-1].cut_id

    def client(cut: int | str, codec: str) -> SplitClient:
        return stack.enter_context(SplitClient(
            bundle, [proxy_addr], cut=cut, codec=codec, deadline_s=args.deadline,
            fallback="local", device_profile=device, connect_timeout_s=60.0,
            device_slowdown=args.device_slowdown))

    split = client(cut="auto", codec="auto")
    chosen, plan = split.plan, split.plan.plan
    _say(args, f"plan: {chosen.describe()}")
    modes: dict[str, dict[str, Any]] = {}
    outs: dict[str, list[np.ndarray]] = {}
    makers: tuple[tuple[str, Callable[[], SplitClient]], ...] = (
        ("split", lambda: split),
        ("device-only", lambda: client(cut=last, codec="auto")),
        ("edge-only", lambda: client(cut=0, codec=demo_report.EDGE_ONLY_CODEC)))
    for mode, make in makers:
        c = make()
        _say(args, f"{mode}: {args.requests} requests ({c.plan.describe()})...")
        lat, sent, answered, outs[mode] = _run_mode(c, inputs, keep=args.requests)
        p = c.plan
        modes[mode] = demo_report.summarize_mode(lat, sent, answered, p.cut_id, p.cut_name,
                                               p.codec, _predicted(plan, p.cut_id, p.codec))
        _say(args, f"{mode}: p50 {modes[mode]['p50_ms']:.1f} ms, "
                   f"p95 {modes[mode]['p95_ms']:.1f} ms")
    stats = split.stats
    window = (demo_report.split_window(split.device_profile, split.edge_profile, args.rtt)
              if split.device_profile is not None and split.edge_profile is not None else [])
    return {"chosen": chosen, "plan": plan, "modes": modes, "switches": stats.plan_switches,
            "measured_link": chosen.link, "estimated_link": stats.link, "window": window,
            "smallest_split": (demo_report.smallest_split(split.device_profile)
                    if split.device_profile is not None else None),
            "agreement": {mode: demo_report.agreement(outs[mode], outs["device-only"])
                          for mode in ("split", "edge-only")}}


def _frames(size: int, n: int) -> list[Any]:
    """``n`` requests: the real frames of ``splitinfer.tools.frames`` in turn, uint8 1xHxWx3."""
    import torch

    from .frames import batch

    return [torch.from_numpy(batch(1, size, start=i)) for i in range(n)]


def _profile_device(bundle: Path, slowdown: float, ui: Output | None = None) -> DeviceProfile:
    from device_client.planning import DEFAULT_CLIENT_CODECS, profile_cut_ids
    from splitinfer.measure.profiler import profile_device
    from splitinfer.model.bundle import load_bundle

    sm = load_bundle(bundle)
    ids = profile_cut_ids(len(sm.cuts), None, 24)
    frame = _frames(sm.cuts[0].tensors[0].shape[1], 1)[0]  # bytes and errors on a real photo
    with (ui or Output()).progress(f"profiling {sm.name} (device)") as step:
        return profile_device(sm, (frame,), codecs=DEFAULT_CLIENT_CODECS, repeats=5,
                              cut_ids=ids, slowdown=slowdown, progress=step)


def _result(args: argparse.Namespace, m: dict[str, Any], quota: DeviceQuota, node: Any,
            cuts: str) -> dict[str, Any]:
    plan, modes = m["plan"], m["modes"]
    link = m["measured_link"]
    dev_ms = plan.device_only_s * 1e3 if plan else modes["device-only"]["p50_ms"]
    edge_alt = next((a for a in plan.alternatives if a.cut_id == 0), None) if plan else None
    edge_ms = edge_alt.breakdown.tail_s * 1e3 if edge_alt else float("nan")
    base = min(("device-only", "edge-only"), key=lambda k: modes[k]["p50_ms"])
    return {
        "model": args.model, "input_size": args.input_size, "cuts": cuts,
        "inputs": f"{args.requests} real photo frames, the 18 crops of scikit-learn's two sample "
                  "photos in turn (splitinfer.tools.frames)",
        "why": demo_report.WHY_DEFAULT if args.model == demo_report.DEFAULT_MODEL else "",
        "requests": args.requests, "edge_pid": node.pid,
        "link": {"asked": {"bandwidth_bps": args.rate, "rtt_s": args.rtt},
                 "measured": link.to_json() if link else None,
                 "estimated_at_end": m["estimated_link"].to_json() if m["estimated_link"]
                 else None},
        "device": {"slowdown": args.device_slowdown,
                   "cpu_quota": args.device_cpu_quota, "quota_applied": quota.group is not None,
                   "quota_error": quota.error, "device_full_ms": dev_ms,
                   "edge_full_ms": edge_ms, "device_edge_ratio": dev_ms / edge_ms},
        "plan": {"cut_id": m["chosen"].cut_id, "cut_name": m["chosen"].cut_name,
                 "codec": m["chosen"].codec, "reason": m["chosen"].reason,
                 "predicted_ms": None if m["chosen"].predicted_s is None
                 else m["chosen"].predicted_s * 1e3,
                 "describe": m["chosen"].describe(), "plan_switches": m["switches"]},
        "modes": modes,
        "speedup": {"baseline": base,
                    "p50": modes[base]["p50_ms"] / modes["split"]["p50_ms"],
                    "p95": modes[base]["p95_ms"] / modes["split"]["p95_ms"]},
        "agreement": m["agreement"], "window": m["window"],
        "smallest_split": m["smallest_split"],
    }


def _run_stack(stack: contextlib.ExitStack, args: argparse.Namespace, repo: Path,
               bundle: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Edge, emulator, quota and clients, each closed by ``stack``; the measurements."""
    try:
        node = start_edge(repo, *EDGE_FLAGS, metrics_port=0, kill_after_s=15.0)
    except RuntimeError as exc:  # it says why (the node's stderr); no traceback of ours
        raise SplitInferError(f"could not start the edge node: {exc}") from exc
    stack.callback(node.stop)
    _say(args, f"edge node: pid {node.pid} listening on {node.address}")
    shape = LinkShape(rate_bps=args.rate, delay_s=args.rtt / 2)
    proxy = stack.enter_context(LinkEmulator(("127.0.0.1", node.port), shape=shape))
    _say(args, f"link emulator: 127.0.0.1:{proxy.port} -> edge, {args.rate / 1e6:g} Mbit/s "
               f"each way, RTT {args.rtt * 1e3:g} ms")
    # after the edge and the emulator: only threads started from here on are the device's
    quota = stack.enter_context(DeviceQuota(args.device_cpu_quota))
    if args.device_cpu_quota > 0 and quota.group is None:
        _say(args, f"device: no CPU quota ({quota.error}); it runs at full speed")
    if args.device_slowdown > 1:
        _say(args, f"device: emulated {args.device_slowdown:g}x slower than this machine "
                   "(time dilation)")
    _say(args, "device: profiling the head at every cut (1 thread)...")
    device = _profile_device(bundle, args.device_slowdown, _ui(args))
    m = _measure(stack, bundle, f"127.0.0.1:{proxy.port}", device, args)
    return m, _result(args, m, quota, node, f"{len(load_manifest_cuts(bundle))} cuts, "
                                           f"{len(device.cuts)} profiled")


def load_manifest_cuts(bundle: Any) -> tuple[Any, ...]:
    from splitinfer.model.manifest import read_manifest

    return read_manifest(bundle).cuts


def run_live(args: argparse.Namespace) -> int:
    """Run the live demo (see the module docstring); the exit code."""
    import torch

    start = time.monotonic()
    torch.set_num_threads(1)  # the device: one thread (the edge runs its own two)
    args.model = demo_report.resolve_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.model == demo_report.DEFAULT_MODEL:
        _say(args, f"model: {demo_report.WHY_DEFAULT}")
    _say(args, f"bundle: {args.model}, a uint8 {args.input_size}x{args.input_size}x3 frame in "
               "(random weights)...")
    with _ui(args).status("bundle: checking it, or capturing the model and writing it"):
        repo, bundle, built = demo_report.ensure_bundle(out, args.model, args.input_size)
    _say(args, f"bundle: {'built' if built else 'reused'} {bundle}")
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGINT, signal.getsignal(signal.SIGINT))
        try:
            m, res = _run_stack(stack, args, repo, bundle)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C must not cut clean-up
    res["wall_s"] = time.monotonic() - start
    demo_report.print_report(res, _ui(args))
    demo_report.write_json(res, out / "demo.json")
    plotted = demo_report.write_plot(res, m["plan"].alternatives if m["plan"] else (),
                                   out / "demo.png")
    _say(args, f"\nwall time {res['wall_s']:.0f} s; wrote {out / 'demo.json'}"
               + (f" and {out / 'demo.png'}" if plotted else ""))
    if getattr(args, "json", False):
        _ui(args).json(res)
    return 0
