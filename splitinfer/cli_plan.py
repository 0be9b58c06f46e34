"""``splitinfer plan BUNDLE``: where to cut and with which codec, for a link, and why.

Two ways to get the numbers:

* what-if: ``--bandwidth 20mbit --rtt 30ms``; the device profile is measured here (or read from
  ``--device-profile``), the edge profile read from ``--edge-profile`` or measured here and divided
  by ``--edge-speedup``;
* live: ``--edge HOST:PORT``; the edge node's own tail latencies and queue delay come from
  ``GetModelInfo`` and the link is measured with ``Probe`` (several payload sizes, robust fit).

Prints the best candidates with their breakdown, the chosen plan and its speedup over
device-only and edge-only; writes ``plan.json``, ``plan.png`` (predicted latency against cut)
and, with ``--sweep``, ``sweep.png`` (the chosen cut against bandwidth). Part of the CLI: it
may import every layer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import SplitInferError
from .link import Link, parse_duration, parse_rate
from .planner import Constraints, Plan, choose
from .profiles import DeviceProfile, EdgeProfile


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SplitInferError(f"cannot read {what} {path}: {exc}") from exc


def _live(args: argparse.Namespace, sm: Any) -> tuple[EdgeProfile, Link]:
    """GetModelInfo and Probe against a running edge node."""
    import grpc

    from device_client.link_probe import measure_link

    from .profiler import edge_profile_from_info
    from .wire import convert
    from .wire.v1 import model_pb2, service_pb2_grpc

    metadata = ()
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
        metadata = (("authorization", f"Bearer {token}"),)
    if args.tls_ca:
        creds = grpc.ssl_channel_credentials(Path(args.tls_ca).read_bytes())
        channel = grpc.secure_channel(args.edge, creds)
    else:
        channel = grpc.insecure_channel(args.edge)
    with channel:
        stub = service_pb2_grpc.EdgeInferenceStub(channel)
        try:
            info = convert.parse_model_info(stub.GetModelInfo(
                model_pb2.ModelInfoRequest(model=sm.name, version=sm.version), timeout=10,
                metadata=metadata))
            link, _samples = measure_link(stub, rounds=args.probe_repeats, metadata=metadata)
        except grpc.RpcError as exc:
            raise SplitInferError(f"edge {args.edge}: {exc.code().name}: {exc.details()}"
                                  ) from exc
    if info.fingerprint != sm.fingerprint:
        raise SplitInferError(f"edge {args.edge} serves {info.model} v{info.version} with "
                              f"fingerprint {info.fingerprint[:16]}…, the bundle has "
                              f"{sm.fingerprint[:16]}…: they are different models")
    return edge_profile_from_info(info), link


def _profiles(args: argparse.Namespace, sm: Any) -> tuple[DeviceProfile, EdgeProfile, Link]:
    from .profiler import profile_device, profile_edge_locally

    if args.device_profile:
        device = DeviceProfile.from_json(_read_json(args.device_profile, "--device-profile"))
    else:
        codecs = _constraints(args).codecs
        device = profile_device(sm, repeats=args.repeats, progress=not args.quiet,
                                **({"codecs": codecs} if codecs else {}))
    if args.edge:
        edge, link = _live(args, sm)
        return device, edge, link
    if args.bandwidth is None or args.rtt is None:
        raise SplitInferError("give the link: --edge HOST:PORT (measured live) or "
                              "--bandwidth RATE --rtt TIME (what-if), e.g. --bandwidth 20mbit "
                              "--rtt 30ms")
    if args.edge_profile:
        edge = EdgeProfile.from_json(_read_json(args.edge_profile, "--edge-profile"))
    else:
        edge = profile_edge_locally(sm, repeats=args.repeats, speedup=args.edge_speedup)
    return device, edge, Link(rtt_s=args.rtt, bandwidth_bps=args.bandwidth)


def _constraints(args: argparse.Namespace) -> Constraints:
    codecs = tuple(c.strip() for c in args.codecs.split(",")) if args.codecs else None
    return Constraints(min_device_cut=args.min_device_cut,
                       device_memory_bytes=args.device_memory_bytes,
                       max_codec_error=args.max_codec_error,
                       allow_edge_only=not args.no_edge_only,
                       allow_device_only=not args.no_device_only, codecs=codecs)


def _print_plan(plan: Plan, top: int) -> None:
    ms = 1e3
    print(f"link: RTT {plan.link.rtt_s * ms:.1f} ms, {plan.link.bandwidth_bps / 1e6:.2f} Mbit/s;"
          f" objective: {plan.objective}")
    print(f"{'rank':>4} {'cut':>4} {'name':<28} {'codec':<10} {'total ms':>9} {'head':>7} "
          f"{'encode':>7} {'uplink':>8} {'rtt':>6} {'edge':>7} {'down':>6}")
    for rank, c in enumerate(plan.alternatives[:top], 1):
        b = c.breakdown
        edge = b.queue_s + b.edge_decode_s + b.tail_s + b.response_encode_s
        print(f"{rank:>4} {c.cut_id:>4} {c.cut_name[:28]:<28} {c.codec or '-':<10} "
              f"{b.total_s * ms:9.2f} {b.head_s * ms:7.2f} {b.encode_s * ms:7.2f} "
              f"{b.uplink_s * ms:8.2f} {b.rtt_s * ms:6.1f} {edge * ms:7.2f} "
              f"{(b.downlink_s + b.response_decode_s) * ms:6.2f}")
    edge_only = "n/a" if plan.edge_only_s is None else f"{plan.edge_only_s * ms:.2f} ms"
    print(f"\nchosen: cut {plan.cut_id} ({plan.cut_name}) with {plan.codec or 'no codec'}: "
          f"{plan.predicted_s * ms:.2f} ms predicted; device-only {plan.device_only_s * ms:.2f} "
          f"ms ({plan.speedup_vs_device_only:.2f}x), edge-only {edge_only}"
          + (f" ({plan.speedup_vs_edge_only:.2f}x)" if plan.speedup_vs_edge_only else ""))
    for note in plan.notes:
        print(f"note: {note if len(note) <= 200 else note[:200] + '…'}")


def _plot(plan: Plan, device: DeviceProfile, edge: EdgeProfile, args: argparse.Namespace,
          out: Path) -> list[Path]:
    try:
        import matplotlib
    except ImportError as exc:
        raise SplitInferError("plots need matplotlib: pip install 'splitinfer[plot]', or pass "
                              "--no-plot") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    best: dict[int, float] = {}
    for c in plan.alternatives:
        best[c.cut_id] = min(best.get(c.cut_id, float("inf")), c.breakdown.total_s)
    ids = sorted(best)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(ids, [best[i] * 1e3 for i in ids], marker=".", label="best codec at this cut")
    ax.axvline(plan.cut_id, color="tab:red", linestyle="--", label=f"chosen: {plan.cut_name}")
    ax.set_xlabel("cut id (0 = edge-only, last = device-only)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"{device.model}: RTT {plan.link.rtt_s * 1e3:.0f} ms, "
                 f"{plan.link.bandwidth_bps / 1e6:.3g} Mbit/s")
    ax.legend()
    fig.tight_layout()
    written.append(out / "plan.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    if args.sweep:
        rates = [10 ** (5 + i * 0.25) for i in range(21)]  # 100 kbit/s .. 1 Gbit/s
        chosen = [choose(device, edge, Link(plan.link.rtt_s, r), objective=args.objective,
                         constraints=_constraints(args)).cut_id for r in rates]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.step([r / 1e6 for r in rates], chosen, where="mid")
        ax.set_xscale("log")
        ax.set_xlabel("bandwidth (Mbit/s)")
        ax.set_ylabel("chosen cut id")
        ax.set_title(f"{device.model}: chosen cut against bandwidth, RTT "
                     f"{plan.link.rtt_s * 1e3:.0f} ms")
        fig.tight_layout()
        written.append(out / "sweep.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


def cmd_plan(args: argparse.Namespace) -> int:
    from .bundle import load_bundle

    sm = load_bundle(args.bundle)
    device, edge, link = _profiles(args, sm)
    plan = choose(device, edge, link, objective=args.objective, constraints=_constraints(args))
    _print_plan(plan, args.top)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(plan.to_json(), indent=2) + "\n")
    written = [out / "plan.json"]
    if args.save_profiles:
        for name, prof in (("device_profile.json", device), ("edge_profile.json", edge)):
            (out / name).write_text(json.dumps(prof.to_json(), indent=2) + "\n")
            written.append(out / name)
    if not args.no_plot:
        written += _plot(plan, device, edge, args, out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def add_parser(sub: Any, arg_type: Any) -> None:
    """Add ``plan`` to the CLI's subparsers; ``arg_type`` wraps a ValueError-raising parser."""
    p = sub.add_parser("plan", help="choose the cut and codec for a link, and show why")
    p.add_argument("bundle", help="bundle directory")
    src = p.add_argument_group("the link")
    src.add_argument("--edge", help="HOST:PORT of an edge node: measure link and edge live")
    src.add_argument("--bandwidth", type=arg_type(parse_rate), help="what-if bandwidth, e.g. 20mbit")
    src.add_argument("--rtt", type=arg_type(parse_duration), help="what-if round trip, e.g. 30ms")
    src.add_argument("--token-file", help="bearer token file for --edge")
    src.add_argument("--tls-ca", help="CA (PEM) to trust for a TLS --edge")
    src.add_argument("--probe-repeats", type=int, default=5, help="Probe rounds (default 5)")
    prof = p.add_argument_group("profiles")
    prof.add_argument("--device-profile", help="DeviceProfile JSON (default: measure here)")
    prof.add_argument("--edge-profile", help="EdgeProfile JSON for what-if planning")
    prof.add_argument("--edge-speedup", type=float, default=1.0,
                      help="without --edge-profile: the edge is this much faster than here")
    prof.add_argument("--repeats", type=int, default=5, help="profiling repeats (default 5)")
    prof.add_argument("--save-profiles", action="store_true",
                      help="also write device_profile.json and edge_profile.json")
    c = p.add_argument_group("objective and constraints")
    c.add_argument("--objective", default="latency",
                   choices=["latency", "throughput", "device_energy"])
    c.add_argument("--min-device-cut", type=int, default=0,
                   help="privacy: only cuts with id >= N (1: raw input never leaves)")
    c.add_argument("--device-memory-bytes", type=int, help="device memory cap for the head")
    c.add_argument("--max-codec-error", type=float, help="largest codec error allowed")
    c.add_argument("--codecs", help="comma-separated codecs to consider")
    c.add_argument("--no-edge-only", action="store_true", help="forbid cut 0")
    c.add_argument("--no-device-only", action="store_true", help="forbid the last cut")
    o = p.add_argument_group("output")
    o.add_argument("--top", type=int, default=10, help="candidates to print (default 10)")
    o.add_argument("--sweep", action="store_true", help="also plot the chosen cut vs bandwidth")
    o.add_argument("--no-plot", action="store_true", help="write plan.json only (no matplotlib)")
    o.add_argument("-o", "--out", default=".", help="directory for plan.json and the plots")
    o.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_plan)
