"""The live demo's model, bundle and report: what ``splitinfer demo`` builds, prints and writes.

The default model is torchvision's **MobileNetV3-Small** (random weights, nothing downloaded) on
one 1x3x224x224 input: a model built for phones, the kind this product is for, whose first block
turns the 150 K input values into ~30 KB of int8+zstd after ~10 % of the compute, so on a thin
uplink a split beats both sending the image (edge-only, ~133 KB) and running everything on a
slow device. (MobileNetV2's early activations are larger than its input: it only splits on
thinner links and slower devices.)

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

__all__ = ["DEFAULT_MODEL", "WHY_DEFAULT", "resolve_model", "ensure_bundle", "summarize_mode",
           "agreement", "print_report", "write_json", "write_plot"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "mobilenet_v3_small"
WHY_DEFAULT = ("MobileNetV3-Small, a model built for phones: its first block shrinks the 150 K "
               "input values to ~30 KB (int8+zstd) after ~10 % of the compute, so a split can "
               "win on a thin uplink")
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
    return m.name == name and tuple(m.inputs[0].shape[1:]) == (3, size, size)


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
    from torchvision's ``name`` with random weights (seed 0) for a 1x3xSIZExSIZE input."""
    import torch
    import torchvision

    from splitinfer.model.bundle import export_bundle

    repo = out / "repo"
    _shelve_others(repo, out / "shelf", name)
    directory = repo / name / "1"
    if _valid(directory, name, size):
        return repo, directory, False
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    export_bundle(model, (torch.randn(1, 3, size, size),), directory, name=name, version="1",
                  overwrite=True)
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
    ui.line(f"model     {res['model']} 1x3x{res['input_size']}x{res['input_size']}, "
            f"{res['cuts']}")
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
    a = res["agreement"]
    ui.line(f"answers   split vs device-only: max |diff| {a['max_abs_error']:.3g} "
            f"({a['relative_error']:.2%} of the output scale), top-1 agreement "
            f"{a['top1_agreement']:.0%}: {'ok' if a['ok'] else 'CHECK'}",
            style=None if a["ok"] else "bold red")


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
