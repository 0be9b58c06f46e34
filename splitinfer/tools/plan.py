"""``splitinfer plan BUNDLE``: where to cut and with which codec, for a link, and why.

Two ways to get the numbers:

* what-if: ``--bandwidth 20mbit --rtt 30ms``; the device profile is measured here (or read from
  ``--device-profile``), the edge profile read from ``--edge-profile`` or measured here and divided
  by ``--edge-speedup``;
* live: ``--edge HOST:PORT``; the edge node's own tail latencies and queue delay come from
  ``GetModelInfo`` and the link is measured with ``Probe`` (several payload sizes, robust fit).

The device profile is measured on real inputs: the first sample of ``--data`` (a folder of
images or ``MODULE:FUNCTION``, read by :func:`splitinfer.tools.datasets.load_samples`), else, for
an image bundle (a uint8 NHWC frame input), a real photo frame (:mod:`splitinfer.tools.frames`),
else the bundle's example inputs. An image bundle's frame can leave the device as a JPEG or a
PNG: those are candidates at cut 0 like any other, and baselines the split has to beat.

Prints the best candidates with their breakdown and request size, the baselines (device-only,
edge-only with each codec at cut 0) and the chosen plan's speedup over each, the chosen plan
naming the best baseline (``--json``: the plan as JSON instead); writes ``plan.json``,
``plan.png`` (predicted latency against cut, the baselines as horizontal lines) and, with
``--sweep``, ``sweep.png`` (the chosen cut against bandwidth). Part of the CLI: it may import
every layer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitinfer.core.errors import ServingError, SplitInferError
from splitinfer.core.link import Link, parse_duration, parse_rate
from splitinfer.core.planner import Candidate, Constraints, Plan, baseline_label, choose
from splitinfer.core.profiles import DeviceProfile, EdgeProfile
from splitinfer.transport import TLS

from .console import Column, Output

if TYPE_CHECKING:
    import torch

    from splitinfer.model.split_model import SplitModel
    from splitinfer.wire.convert import ModelInfo


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SplitInferError(f"cannot read {what} {path}: {exc}") from exc


def _live(args: argparse.Namespace, sm: SplitModel) -> tuple[EdgeProfile, Link]:
    """GetModelInfo and Probe against a running edge node, through the device client's
    ``Edge`` seam (the same calls, TLS and token handling the SDK makes)."""
    try:
        token = Path(args.token_file).read_text().strip() if args.token_file else None
    except OSError as exc:
        raise SplitInferError(f"cannot read --token-file {args.token_file}: {exc}") from exc
    tls = TLS(ca=args.tls_ca) if args.tls_ca else None
    try:
        info, link = asyncio.run(_measure_edge(args.edge, sm, tls, token, args.probe_repeats))
    except ServingError as exc:
        raise SplitInferError(f"edge {args.edge}: {exc.code}: {exc}") from exc
    except ValueError as exc:  # an unreadable --tls-ca
        raise SplitInferError(str(exc)) from exc
    if info.fingerprint != sm.fingerprint:
        raise SplitInferError(f"edge {args.edge} serves {info.model} v{info.version} with "
                              f"fingerprint {info.fingerprint[:16]}…, the bundle has "
                              f"{sm.fingerprint[:16]}…: they are different models")
    return EdgeProfile.from_model_info(info), link


async def _measure_edge(address: str, sm: SplitModel, tls: TLS | None, token: str | None,
                        rounds: int) -> tuple[ModelInfo, Link]:
    from device_client import GrpcEdge
    from device_client.link_probe import measure_link

    edge = GrpcEdge(address, tls=tls, token=token)
    try:
        info = await edge.model_info(sm.name, sm.version, timeout=10.0)
        link, _samples = await measure_link(edge, rounds)
    finally:
        await edge.close()
    return info, link


def _profiles(args: argparse.Namespace, sm: SplitModel) -> tuple[DeviceProfile, EdgeProfile, Link]:
    from splitinfer.measure.profiler import DEFAULT_CODECS, profile_device, profile_edge_locally

    ui = _ui(args)
    if args.device_profile and args.data:
        raise SplitInferError("--data is what the device profile is measured on, and "
                              "--device-profile was measured already: drop one of them")
    measure_edge = not args.edge and not args.edge_profile
    inputs = _profile_inputs(args, sm) if not args.device_profile or measure_edge else None
    if args.device_profile:
        device = DeviceProfile.from_json(_read_json(args.device_profile, "--device-profile"))
    else:
        codecs = _constraints(args).codecs
        with ui.progress(f"profiling {sm.name} on this device") as step:
            device = profile_device(sm, inputs, codecs=codecs or DEFAULT_CODECS,
                                    repeats=args.repeats, progress=step)
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
        with ui.status(f"profiling {sm.name}'s tails here as the edge"):
            edge = profile_edge_locally(sm, inputs, repeats=args.repeats,
                                        speedup=args.edge_speedup)
    return device, edge, Link(rtt_s=args.rtt, bandwidth_bps=args.bandwidth)


def _ui(args: argparse.Namespace) -> Output:
    """The CLI's output (``main`` sets ``args.ui``); plain auto-detection when called bare."""
    ui = getattr(args, "ui", None)
    return ui if isinstance(ui, Output) else Output(quiet=getattr(args, "quiet", False))


#: the real frames an image bundle is profiled on without --data
FRAMES_SPEC = "splitinfer.tools.frames:sample_frames"


def _profile_inputs(args: argparse.Namespace, sm: SplitModel) -> tuple[torch.Tensor, ...] | None:
    """What to profile on: ``--data``'s first sample (a request carries one), a real photo
    frame for an image bundle (any frame size: resized and centre-cropped to it), or None (the
    bundle's examples). Real data gives real sizes and errors: JPEG and zstd on noise say
    nothing about a camera."""
    from .datasets import load_samples

    spec = args.data
    if not spec:
        if getattr(sm, "image_input", None) is None:
            return None
        spec = FRAMES_SPEC
    try:
        samples = load_samples(spec, sm, 1)
    except RuntimeError as exc:  # no scikit-learn: no sample photos
        raise SplitInferError(f"profiling an image bundle takes a real frame: {exc}; or pass "
                              f"--data with your own images") from exc
    if not samples:
        raise SplitInferError(f"--data {spec} gave no samples; give a folder with images or a "
                              f"MODULE:FUNCTION that returns inputs")
    return tuple(samples[0].inputs)


def _fraction(text: str) -> float:
    """A fraction 0..1 from the command line (``--min-agreement``)."""
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"{text!r} is not a fraction; expected a number from 0 to 1, e.g. 0.99")
    return value


def _points(text: str) -> float:
    """Accuracy points 0..100 from the command line (``--max-accuracy-drop 0.5``), as a
    fraction."""
    value = float(text.removesuffix("pt"))
    if not 0 <= value <= 100:
        raise ValueError(f"{text!r} is not a number of accuracy points; expected 0 to 100, "
                         "e.g. 0.5 (half a point of top-1 accuracy)")
    return value / 100.0


def _constraints(args: argparse.Namespace) -> Constraints:
    codecs = tuple(c.strip() for c in args.codecs.split(",")) if args.codecs else None
    try:
        return Constraints(min_device_cut=args.min_device_cut,
                           device_memory_bytes=args.device_memory_bytes,
                           max_codec_error=args.max_codec_error,
                           min_agreement=args.min_agreement,
                           max_accuracy_drop=args.max_accuracy_drop,
                           allow_edge_only=not args.no_edge_only,
                           allow_device_only=not args.no_device_only, codecs=codecs)
    except ValueError as exc:  # e.g. a negative --max-codec-error
        raise SplitInferError(str(exc)) from exc


#: the candidates table: rank, cut, then where the predicted time goes (ms)
_COLUMNS: list[Column] = [("rank", "right"), ("cut", "right"), "name", "codec", ("KB", "right"),
                          ("total ms", "right"), ("head", "right"), ("encode", "right"),
                          ("uplink", "right"), ("rtt", "right"), ("edge", "right"),
                          ("down", "right")]
#: the baselines table: what the chosen plan is compared with
_BASELINE_COLUMNS: list[Column] = ["baseline", ("KB", "right"), ("total ms", "right"),
                                   ("speedup", "right")]


def _errors(device: DeviceProfile | None) -> dict[tuple[int, str | None], str]:
    """(cut, codec) -> the measured output error, formatted (device-only: exact)."""
    if device is None:
        return {}
    out: dict[tuple[int, str | None], str] = {(device.cuts[-1].cut_id, None): "0"}
    for cut in device.cuts:
        out.update({(cut.cut_id, k.codec): f"{k.error:.2g}" for k in cut.codecs})
    return out


def _print_plan(plan: Plan, top: int, ui: Output | None = None,
                device: DeviceProfile | None = None) -> None:
    """The ranked candidates, the baselines and the choice; with ``device`` (the profile the
    plan came from) an ``error`` column: each (cut, codec)'s measured output error."""
    ui = ui or Output()
    ms = 1e3
    errors = _errors(device)
    ui.line(f"link: RTT {plan.link.rtt_s * ms:.1f} ms, {plan.link.bandwidth_bps / 1e6:.2f} "
            f"Mbit/s; objective: {plan.objective}")
    rows = []
    for rank, c in enumerate(plan.alternatives[:top], 1):
        b = c.breakdown
        edge = b.queue_s + b.edge_decode_s + b.tail_s + b.response_encode_s
        rows.append((rank, c.cut_id, c.cut_name, c.codec or "-", f"{c.request_bytes / 1e3:.1f}",
                     f"{b.total_s * ms:.2f}", f"{b.head_s * ms:.2f}", f"{b.encode_s * ms:.2f}",
                     f"{b.uplink_s * ms:.2f}", f"{b.rtt_s * ms:.1f}", f"{edge * ms:.2f}",
                     f"{(b.downlink_s + b.response_decode_s) * ms:.2f}")
                    + ((errors.get((c.cut_id, c.codec), "?"),) if errors else ()))
    ui.table(_COLUMNS + ([("error", "right")] if errors else []), rows)
    if plan.baselines:
        ui.line()
        ui.table(_BASELINE_COLUMNS + ([("error", "right")] if errors else []), [
            (label, f"{b.request_bytes / 1e3:.1f}",
             f"{b.breakdown.total_s * ms:.2f}", f"{plan.speedup_over(b):.2f}x")
            + ((errors.get((b.cut_id, b.codec), "?"),) if errors else ())
            for b, label in _distinct_baselines(plan.baselines, errors)], title="baselines")
    ui.line()
    ui.line(_chosen_line(plan), style="bold green")
    for note in plan.notes:
        ui.line(f"note: {note if len(note) <= 200 else note[:200] + '…'}", style="yellow")


def _distinct_baselines(baselines: tuple[Candidate, ...],
                        errors: dict[tuple[int, str | None], str]
                        ) -> list[tuple[Candidate, str]]:
    """The baselines with their labels, one row per distinct upload: codecs that send the same
    bytes with the same error (every tensor codec sends a uint8 frame as it is; their times
    differ by measuring noise) share the best one's row, "edge-only fp32 (= fp16, int8)"."""
    rows: dict[tuple[Any, ...], tuple[Candidate, list[str]]] = {}
    for b in baselines:
        key = (b.cut_id, b.request_bytes, errors.get((b.cut_id, b.codec))) \
            if b.codec is not None else (b.cut_id,)
        if key in rows:
            rows[key][1].append(str(b.codec))
        else:
            rows[key] = (b, [])
    return [(b, baseline_label(b) + (f" (= {', '.join(same)})" if same else ""))
            for b, same in rows.values()]


def _chosen_line(plan: Plan) -> str:
    """The chosen plan, its speedup over the best baseline, device-only and edge-only."""
    ms = 1e3
    best = plan.best_baseline
    over = "" if best is None else \
        f", {plan.speedup_over(best):.2f}x over {baseline_label(best)} (the best baseline)"
    edge_only = "n/a" if plan.edge_only_s is None else f"{plan.edge_only_s * ms:.2f} ms"
    return (f"chosen: cut {plan.cut_id} ({plan.cut_name}) with {plan.codec or 'no codec'}: "
            f"{plan.predicted_s * ms:.2f} ms predicted{over}; device-only "
            f"{plan.device_only_s * ms:.2f} ms ({plan.speedup_vs_device_only:.2f}x), edge-only "
            f"{edge_only}"
            + (f" ({plan.speedup_vs_edge_only:.2f}x)" if plan.speedup_vs_edge_only else ""))


#: matplotlib colours of the baselines' lines in plan.png
_BASELINE_COLOURS = ("C2", "C1", "C4", "C5", "C6", "C7", "C8", "C9")


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
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.plot(ids, [best[i] * 1e3 for i in ids], marker=".", label="best codec at this cut")
    ax.axvline(plan.cut_id, color="tab:red", linestyle="--", label=f"chosen: {plan.cut_name}")
    n = len(_BASELINE_COLOURS)
    for i, b in enumerate(plan.baselines):  # colours besides the curve's (C0) and red (C3)
        ax.axhline(b.breakdown.total_s * 1e3, color=_BASELINE_COLOURS[i % n],
                   linestyle=":" if i // n % 2 == 0 else "-.",
                   label=f"{baseline_label(b)}: {b.breakdown.total_s * 1e3:.1f} ms")
    ax.set_xlabel("cut id (0 = edge-only, last = device-only)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"{device.model}: RTT {plan.link.rtt_s * 1e3:.0f} ms, "
                 f"{plan.link.bandwidth_bps / 1e6:.3g} Mbit/s")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
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
    from splitinfer.model.bundle import load_bundle

    ui = _ui(args)
    sm = load_bundle(args.bundle)
    device, edge, link = _profiles(args, sm)
    plan = choose(device, edge, link, objective=args.objective, constraints=_constraints(args))
    if not args.json:
        _print_plan(plan, args.top, ui, device)
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
    ui.line("wrote " + ", ".join(str(p) for p in written))
    if args.json:
        ui.json(plan.to_json())
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
    prof.add_argument("--data", metavar="SPEC",
                      help="profile on your data: a folder of images or MODULE:FUNCTION (as "
                           "`splitinfer fidelity --data`); its first sample, a request's "
                           "worth (default: a real photo frame for an image bundle, else the "
                           "bundle's examples)")
    prof.add_argument("--save-profiles", action="store_true",
                      help="also write device_profile.json and edge_profile.json")
    c = p.add_argument_group("objective and constraints")
    c.add_argument("--objective", default="latency",
                   choices=["latency", "throughput", "device_energy"])
    c.add_argument("--min-device-cut", type=int, default=0,
                   help="privacy: only cuts with id >= N (1: raw input never leaves)")
    c.add_argument("--device-memory-bytes", type=int, help="device memory cap for the head")
    c.add_argument("--max-codec-error", "--max-output-error", dest="max_codec_error",
                   type=float, help="largest codec error allowed (the relative error of the "
                   "model's output, as measured by the profile or `splitinfer fidelity`)")
    c.add_argument("--min-agreement", type=arg_type(_fraction),
                   help="smallest top-1 agreement a codec must have kept, as measured by "
                        "`splitinfer fidelity` (codecs it did not measure are out), e.g. 0.99")
    c.add_argument("--max-accuracy-drop", type=arg_type(_points), metavar="POINTS",
                   help="the accuracy budget: most top-1 accuracy points a codec may lose, as "
                        "measured by `splitinfer fidelity` on labelled data (codecs it did not "
                        "measure are out, lossless ones aside), e.g. 0.5")
    c.add_argument("--codecs", help="comma-separated codecs to consider")
    c.add_argument("--no-edge-only", action="store_true", help="forbid cut 0")
    c.add_argument("--no-device-only", action="store_true", help="forbid the last cut")
    o = p.add_argument_group("output")
    o.add_argument("--top", type=int, default=10, help="candidates to print (default 10)")
    o.add_argument("--sweep", action="store_true", help="also plot the chosen cut vs bandwidth")
    o.add_argument("--no-plot", action="store_true", help="write plan.json only (no matplotlib)")
    o.add_argument("-o", "--out", default=".", help="directory for plan.json and the plots")
    o.add_argument("--quiet", action="store_true",
                   help="no progress output (plain lines, as when stdout is not a terminal)")
    o.add_argument("--json", action="store_true",
                   help="print the plan as JSON on stdout (as plan.json) instead of the table; "
                        "all else goes to stderr")
    p.set_defaults(func=cmd_plan)
