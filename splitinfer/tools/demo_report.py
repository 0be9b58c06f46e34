"""The live demo's model, bundle and report: what ``splitinfer demo`` builds, prints and writes.

The default model is torchvision's **MobileNetV3-Small** (random weights, nothing downloaded),
exported with an image input: the bundle takes the camera frame, uint8 224x224x3 (NHWC), and
ImageNet normalization is the first part of its graph, so edge-only sends the frame as a JPEG
(quality 90), what a phone app ships (~14 KB for these frames). The inputs are real photos:
the 18 crops of scikit-learn's two sample photos (``splitinfer.tools.frames``). A model built
for phones: its first block shrinks the frame to ~27 KB of int8+zstd after ~10 % of the
compute, still about twice the JPEG, so a split only wins where the device is fast enough and
the link thin enough; ``split_window`` finds where, from the same profiles the client planned
with, and the report says it.

The networked part (edge subprocess, link emulator, device client) is ``splitinfer.tools.demo``;
this module has no network code: the bundle cache under ``.demo/``, the numbers, the table,
``demo.json`` and ``demo.png``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from splitinfer.core.errors import SplitInferError

from .console import Output

__all__ = ["DEFAULT_MODEL", "WHY_DEFAULT", "EDGE_ONLY_CODEC", "resolve_model", "ensure_bundle",
           "summarize_mode", "agreement", "split_window", "smallest_split", "print_report",
           "write_json",
           "write_plot"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "mobilenet_v3_small"
WHY_DEFAULT = ("MobileNetV3-Small, a model built for phones, taking the camera frame (uint8 "
               "224x224x3): edge-only sends it as a JPEG q90 (~14 KB), a split sends its first "
               "block's output (~27 KB int8+zstd) after ~10 % of the compute")
#: what edge-only sends: the frame as a phone app would, a JPEG at quality 90
EDGE_ONLY_CODEC = "jpeg"
MODES = ("split", "device-only", "edge-only")


def resolve_model(name: str) -> str:
    """A torchvision classification model name (``torchvision.models:`` prefix allowed)."""
    import torchvision

    name = name.rpartition(":")[2].rpartition(".")[2] if ":" in name else name
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise SplitInferError(f"--model {name!r} is not a torchvision classification model; "
                              f"use one of e.g. {', '.join(sorted(known)[:6])}, ... "
                              f"({len(known)} in all, torchvision.models.list_models())")
    return name


def _valid(directory: Path, name: str, size: int) -> bool:
    from splitinfer.model.bundle import load_bundle, read_manifest

    try:
        m = read_manifest(directory)
        load_bundle(directory)  # checks every file's hash
    except Exception as exc:  # any damage means: build it again
        log.info("bundle %s unusable (%s); rebuilding", directory, exc)
        return False
    return (m.name == name and m.image_input is not None and m.inputs[0].dtype == "uint8"
            and tuple(m.inputs[0].shape[1:]) == (size, size, 3))


def _shelve_others(repo: Path, shelf: Path, name: str) -> None:
    """The edge serves everything in ``repo``: keep only this model there, the rest aside."""
    if (shelf / name).is_dir() and not (repo / name).exists():
        repo.mkdir(parents=True, exist_ok=True)
        (shelf / name).rename(repo / name)
    for other in repo.iterdir() if repo.is_dir() else ():
        if other.name != name:
            shelf.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(shelf / other.name, ignore_errors=True)
            other.rename(shelf / other.name)


def ensure_bundle(out: Path, name: str, size: int) -> tuple[Path, Path, bool]:
    """``(repo, bundle dir, built)``: ``out/repo/<name>/1``, reused when valid, else exported
    from torchvision's ``name`` with random weights (seed 0) with an image input: a uint8
    1xSIZExSIZEx3 frame, ImageNet normalization in the graph."""
    import torch
    import torchvision

    from splitinfer.model.bundle import export_bundle
    from splitinfer.model.preprocess import IMAGENET

    repo = out / "repo"
    _shelve_others(repo, out / "shelf", name)
    directory = repo / name / "1"
    if _valid(directory, name, size):
        return repo, directory, False
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    export_bundle(model, (torch.zeros(1, 3, size, size),), directory, name=name, version="1",
                  overwrite=True, image_input=IMAGENET)
    return repo, directory, True


def summarize_mode(latencies_s: Sequence[float], bytes_sent: int, answered: dict[str, int],
                   cut_id: int, cut_name: str, codec: str | None,
                   predicted_s: float | None) -> dict[str, Any]:
    ms = np.asarray(latencies_s) * 1e3
    return {"cut_id": cut_id, "cut_name": cut_name, "codec": codec,
            "requests": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean()),
            "bytes_per_request": bytes_sent / max(len(ms), 1), "answered_by": answered,
            "predicted_ms": None if predicted_s is None else predicted_s * 1e3,
            "latencies_ms": [round(float(v), 3) for v in ms]}


def agreement(split: Sequence[np.ndarray], local: Sequence[np.ndarray]) -> dict[str, Any]:
    """How far the split's answers are from the device's own full run, same inputs."""
    a, b = np.stack(split).astype(np.float64), np.stack(local).astype(np.float64)
    err = float(np.abs(a - b).max())
    scale = float(np.abs(b).max()) or 1.0
    top1 = float((a.reshape(len(a), -1).argmax(1) == b.reshape(len(b), -1).argmax(1)).mean())
    return {"max_abs_error": err, "relative_error": err / scale, "top1_agreement": top1,
            "ok": err / scale < 0.1}


#: the bandwidths (Mbit/s) and device speeds (x its profile) ``split_window`` tries
WINDOW_MBITS = tuple(round(0.25 * 2 ** (i / 2), 3) for i in range(23))  # 0.25 .. 512
WINDOW_DEVICE = (0.25, 0.5, 1.0, 2.0)


def split_window(device: Any, edge: Any, rtt_s: float) -> list[dict[str, Any]]:
    """Where a split (a cut strictly between edge-only and device-only) is predicted to beat
    both baselines, at this RTT: per device speed (``WINDOW_DEVICE``: 0.5 = twice as fast as
    the profiled device, its profile ``scaled``), the bandwidths of ``WINDOW_MBITS`` where it
    wins, the best margin (best baseline / split) and that split; from the profiles the client
    planned with."""
    from splitinfer.core.link import Link
    from splitinfer.core.planner import baseline_label, choose

    first, last = device.cuts[0].cut_id, device.cuts[-1].cut_id
    rows = []
    for factor in WINDOW_DEVICE:
        dev = device.scaled(factor)
        wins: list[float] = []
        best: dict[str, Any] | None = None
        for mbit in WINDOW_MBITS:
            plan = choose(dev, edge, Link(rtt_s, mbit * 1e6))
            split = next((a for a in plan.alternatives if first < a.cut_id < last), None)
            base = plan.best_baseline
            if split is None or base is None:
                continue
            margin = base.breakdown.total_s / split.breakdown.total_s
            if margin > 1:
                wins.append(mbit)
                if best is None or margin > float(best["margin"]):
                    best = {"margin": margin, "mbit": mbit, "cut_id": split.cut_id,
                            "codec": split.codec, "baseline": baseline_label(base)}
        rows.append({"device_factor": factor, "wins_mbit": wins, "best": best})
    return rows


def smallest_split(device: Any) -> dict[str, Any] | None:
    """The split (a cut strictly between the first and last) that sends the fewest bytes,
    and what edge-only sends, from a device profile: why a split can or cannot win."""
    first, last = device.cuts[0], device.cuts[-1]
    splits = [(k.request_bytes, c, k) for c in device.cuts[1:-1] for k in c.codecs]
    edge = [k for k in first.codecs if k.codec == EDGE_ONLY_CODEC]
    if not splits:
        return None
    nbytes, cut, codec = min(splits, key=lambda t: (t[0], t[1].cut_id))
    return {"cut_id": cut.cut_id, "cut_name": cut.name, "codec": codec.codec,
            "request_bytes": nbytes, "head_ms": cut.head_s * 1e3,
            "device_only_ms": last.head_s * 1e3,
            "edge_only_codec": EDGE_ONLY_CODEC if edge else None,
            "edge_only_bytes": edge[0].request_bytes if edge else None}


def _why_line(why: dict[str, Any], bandwidth_bps: float | None = None) -> str:
    """Why a split does or does not win: its fewest bytes and their device compute against
    the frame's JPEG (and, given the link's rate, what the bytes saved are worth)."""
    text = (f"why       the fewest bytes a split sends: {why['request_bytes'] / 1e3:.1f} KB "
            f"(cut {why['cut_id']} {why['cut_name']}, {why['codec']}), after "
            f"{why['head_ms']:.1f} ms of device compute (the whole model: "
            f"{why['device_only_ms']:.1f} ms)")
    if why["edge_only_bytes"] is None:
        return text
    text += (f"; edge-only sends the frame as {why['edge_only_codec']}: "
             f"{why['edge_only_bytes'] / 1e3:.1f} KB")
    saved = why["edge_only_bytes"] - why["request_bytes"]
    if saved <= 0:
        return text + " - fewer bytes with no device compute, so no link makes a split faster"
    if bandwidth_bps:
        text += (f" - the {saved / 1e3:.1f} KB saved are worth {saved * 8e3 / bandwidth_bps:.1f} "
                 f"ms at {bandwidth_bps / 1e6:.1f} Mbit/s, against {why['head_ms']:.1f} ms of "
                 "device compute")
    return text


def _window_lines(rows: Sequence[dict[str, Any]], rtt_s: float) -> list[str]:
    out = []
    for r in rows:
        f = r["device_factor"]
        speed = ("this device" if f == 1 else f"a device {1 / f:g}x faster" if f < 1
                 else f"a device {f:g}x slower")
        if not r["wins_mbit"]:
            out.append(f"  {speed}: no bandwidth from {WINDOW_MBITS[0]:g} to "
                       f"{WINDOW_MBITS[-1]:g} Mbit/s")
            continue
        b = r["best"]
        out.append(f"  {speed}: {min(r['wins_mbit']):g}-{max(r['wins_mbit']):g} Mbit/s "
                   f"(best {b['margin']:.2f}x over {b['baseline']} at {b['mbit']:g} Mbit/s, "
                   f"cut {b['cut_id']} {b['codec']})")
    return [f"where a split wins (predicted, RTT {rtt_s * 1e3:.0f} ms):"] + out


def _fmt_link(link: dict[str, float] | None) -> str:
    if not link:
        return "n/a"
    return f"{link['bandwidth_bps'] / 1e6:.1f} Mbit/s, RTT {link['rtt_s'] * 1e3:.1f} ms"


def _device_line(dev: dict[str, Any]) -> str:
    if dev.get("slowdown", 1) > 1:
        how = f"emulated {dev['slowdown']:g}x slower (time dilation)"
    elif dev["cpu_quota"]:
        how = (f"CPU quota {dev['cpu_quota']} cores" if dev["quota_applied"]
               else "no CPU quota (not writable here)")
    else:
        how = "full speed"
    return (f"device    1 torch thread, {how}: device/edge compute "
            f"{dev['device_edge_ratio']:.1f}x (full model {dev['device_full_ms']:.0f} ms here, "
            f"{dev['edge_full_ms']:.0f} ms on the edge)")


def _modes_table(ui: Output, modes: dict[str, Any]) -> None:
    rows = []
    for mode in MODES:
        r = modes[mode]
        rows.append((mode, r["cut_id"], r["codec"] or "-", f"{r['p50_ms']:.1f}",
                     f"{r['p95_ms']:.1f}",
                     "-" if r["predicted_ms"] is None else f"{r['predicted_ms']:.1f}",
                     f"{r['bytes_per_request']:,.0f}",
                     ", ".join(f"{k} {v}" for k, v in r["answered_by"].items())))
    ui.table(["mode", ("cut", "right"), "codec", ("p50 ms", "right"), ("p95 ms", "right"),
              ("predicted", "right"), ("bytes/req", "right"), "answered by"], rows)


def print_report(res: dict[str, Any], ui: Output | None = None) -> None:
    """The report: link, device, plan, then the table of p50/p95/bytes per mode and the
    speedup; through ``ui`` (default: stdout, plain unless it is a terminal)."""
    ui = ui or Output()
    dev, plan = res["device"], res["plan"]
    ui.line()
    ui.line(f"model     {res['model']}, input a uint8 {res['input_size']}x{res['input_size']}x3 "
            f"frame, {res['cuts']}")
    ui.line(f"inputs    {res.get('inputs', 'n/a')}")
    ui.line(f"link      asked {_fmt_link(res['link']['asked'])}; measured by the client "
            f"{_fmt_link(res['link']['measured'])}")
    ui.line(_device_line(dev))
    ui.line(f"plan      {plan['describe']}")
    ui.line()
    _modes_table(ui, res["modes"])
    ui.line()
    s, split = res["speedup"], res["modes"]["split"]
    same = ("edge-only" if split["cut_id"] == 0 else
            "device-only" if split["codec"] is None else "")
    note = (f"  (the planner chose {same} for this link: the difference is noise)" if same
            else "" if s["p50"] > 1 else "  (no win on this link/machine)")
    ui.line(f"split vs the better baseline ({s['baseline']}): {s['p50']:.2f}x at p50, "
            f"{s['p95']:.2f}x at p95{note}", style="bold")
    for mode in ("split", "edge-only"):
        a = res["agreement"][mode]
        ui.line(f"answers   {mode} vs device-only: max |diff| {a['max_abs_error']:.3g} "
                f"({a['relative_error']:.2%} of the output scale), top-1 agreement "
                f"{a['top1_agreement']:.0%}: {'ok' if a['ok'] else 'CHECK'}",
                style=None if a["ok"] else "bold red")
    if res.get("smallest_split"):
        measured = res["link"].get("measured") or res["link"]["asked"]
        ui.line(_why_line(res["smallest_split"], measured["bandwidth_bps"]))
    if res.get("window"):
        ui.line()
        for line in _window_lines(res["window"], res["link"]["asked"]["rtt_s"]):
            ui.line(line)


def write_json(res: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(res, indent=2) + "\n")


def write_plot(res: dict[str, Any], alternatives: Sequence[Any], path: Path) -> bool:
    """Bars of p50/p95 per mode; the planner's predicted latency vs cut. False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install matplotlib)", path)
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(MODES))
    for i, (key, label) in enumerate((("p50_ms", "p50"), ("p95_ms", "p95"))):
        left.bar(x + (i - 0.5) * 0.38, [res["modes"][m][key] for m in MODES], 0.38, label=label)
    left.set_xticks(x, MODES)
    left.set_ylabel("measured latency (ms)")
    left.set_title(f"{res['model']}: measured, {_fmt_link(res['link']['asked'])}", fontsize=9)
    left.legend(fontsize=8)
    best: dict[int, float] = {}
    for a in alternatives:  # the best codec per cut
        best[a.cut_id] = min(best.get(a.cut_id, float("inf")), a.breakdown.total_s * 1e3)
    cuts = sorted(best)
    right.plot(cuts, [best[c] for c in cuts], marker=".", label="predicted (best codec)")
    chosen = res["plan"]["cut_id"]
    if chosen in best:
        right.scatter([chosen], [best[chosen]], color="red", zorder=3, label="chosen cut")
    right.set_xlabel("cut id (0 = edge-only, last = device-only)")
    right.set_ylabel("predicted latency (ms)")
    right.set_title("planner's prediction vs cut, this link", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
