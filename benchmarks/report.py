"""``make bench``: run every benchmark, one after another, and write benchmarks/report/REPORT.md.

    python -m benchmarks.report [--skip-run] [--only NAME ...]

Each benchmark runs as its own process (so none disturbs another's timing) and writes its JSON
and plot under benchmarks/results/; this module then reads them and writes the report: the
machine, a table of every target (value, target, pass), one section per benchmark with its
tables and plot (plots are copied next to REPORT.md, which is committed). ``--skip-run`` only
rebuilds the report from the JSON already there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.progress import Steps

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REPORT = ROOT / "benchmarks" / "report"
#: name -> (module, extra args); the order they run in
BENCHMARKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "codecs": ("benchmarks.codecs", ()),
    "fidelity": ("benchmarks.fidelity", ()),
    "edge": ("benchmarks.edge", ()),
    "client_stream": ("benchmarks.client_stream", ()),
    "planner_validation": ("benchmarks.planner_validation", ()),
}


def run_all(names: list[str]) -> dict[str, float]:
    """Run the benchmarks; their output goes to benchmarks/report/logs/NAME.log."""
    (REPORT / "logs").mkdir(parents=True, exist_ok=True)
    took = {}
    with Steps("benchmarks", len(names), every_s=0) as steps:
        for name in names:
            took[name] = run_one(name)
            steps.advance(note=f"{name} done in {took[name]:.0f} s")
    return took


def run_one(name: str) -> float:
    """Run one benchmark into its log, print the log's last lines; its wall seconds."""
    module, extra = BENCHMARKS[name]
    log = REPORT / "logs" / f"{name}.log"
    print(f"== {name}: python -m {module} {' '.join(extra)} (log: {log.relative_to(ROOT)})",
          flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", module, *extra], cwd=ROOT, stdout=f,
                              stderr=subprocess.STDOUT)
    took = time.perf_counter() - start
    tail = log.read_text().strip().splitlines()[-6:]
    print("\n".join(f"   {line}" for line in tail), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log}")
    return took


# ---- the report ---------------------------------------------------------------------------------

def _machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB memory"
    except (OSError, ValueError, IndexError):
        pass
    import torch

    return [f"- CPU: {cpu}, {os.cpu_count()} cores{mem}, no GPU used",
            f"- Python {platform.python_version()}, torch {torch.__version__}, "
            f"{platform.system()} {platform.release()}",
            f"- Written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by "
            f"`python -m benchmarks.report`; every figure below is measured side by side in one "
            f"run of its benchmark on this machine, and most are ratios"]


def _fmt(v: Any) -> str:
    if isinstance(v, float) and not isinstance(v, bool):
        return f"{v:.6g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v).replace("|", "\\|")  # a pipe would end the table cell


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return out + [""]


def _targets(name: str, data: dict[str, Any]) -> list[list[Any]]:
    targets = data.get("targets") or {}
    if "target" in data and isinstance(data["target"], dict):  # client_stream's single target
        t = data["target"]
        targets = {"stream (window 8) / sequential frames/s": {
            "value": t["value"], "target": f">= {t['ratio_window_8']}", "pass": t["pass"]}}
    return [[name, k, t.get("value"), t.get("target"), "PASS" if t.get("pass") else "FAIL"]
            for k, t in targets.items()]


def _plot(name: str, stem: str | None = None) -> list[str]:
    src = RESULTS / f"{stem or name}.png"
    if not src.exists():
        return []
    shutil.copy(src, REPORT / src.name)
    return [f"![{name}]({src.name})", ""]


def section_codecs(d: dict[str, Any]) -> list[str]:
    m = d["meta"]
    rows = [[c, s["median ratio"], s["min ratio"], s["min SQNR dB"], s["min encode MB/s"],
             s["min decode MB/s"]] for c, s in d["summary"].items()]
    return ([f"{m['model']}, input {m['input']}, every post-ReLU cut, {m['threads']} thread: "
             "bytes saved against fp32 (ratio), signal to quantization noise, and encode/decode "
             "speed in MB of fp32 input per second.", ""]
            + _table(["codec", "median ratio", "min ratio", "min SQNR dB", "min encode MB/s",
                      "min decode MB/s"], rows) + _plot("codecs"))


def section_fidelity(d: dict[str, Any]) -> list[str]:
    m = d["meta"]
    mini = [[c, s["worst_cos_mean"], s["worst_cos_min"], s["worst_top1_agree_pct"],
             s["median_bytes"]] for c, s in d["summary"]["minilm"].items()]
    digits = [[c, s["worst_delta_pts"], s["worst_agree_pct"], s["median_bytes"]]
              for c, s in d["summary"]["digits"].items()]
    return ([f"(a) all-MiniLM-L6-v2, real weights, {m['minilm']['sentences']} English sentences "
             f"({m['sentence_source']}); {len(m['minilm']['cuts_measured'])} cuts. Cosine of the "
             "split embedding to the full model's (worst cut), nearest-neighbour agreement.", ""]
            + _table(["codec", "worst mean cosine", "worst sentence cosine",
                      "worst NN agreement %", "median bytes/sentence"], mini)
            + [f"(b) CNN trained here on scikit-learn digits ({m['digits']['test_acc_pct']:.2f} % "
               f"test accuracy); top-1 accuracy change against fp32, worst of "
               f"{len(m['digits']['cuts_measured'])} cuts.", ""]
            + _table(["codec", "worst delta (points)", "worst agreement %", "median bytes/image"],
                     digits) + _plot("fidelity"))


def section_edge(d: dict[str, Any]) -> list[str]:
    m = d["meta"]
    on = {r["clients"]: r for r in d["load"]["batching on"]}
    off = {r["clients"]: r for r in d["load"]["batching off"]}
    rows = [[n, off[n]["rps"], on[n]["rps"], on[n]["rps"] / off[n]["rps"],
             on[n]["rows_per_batch"]] for n in sorted(on) if n in off]
    o = d["overhead"]["batching off"]
    return ([f"Throughput: {m['load_model']}, closed-loop clients on this machine "
             "(clients and node share the cores).", ""]
            + _table(["clients", "req/s batching off", "req/s batching on", "ratio",
                      "rows/batch"], rows)
            + [f"Own overhead for a {d['activation_bytes'] // 1000} KB activation: Infer p50 "
               f"{o['infer_p50_ms']:.2f} ms - Probe echo of the same bytes "
               f"{o['echo_p50_ms']:.2f} ms - bare compute {o['compute_p50_ms']:.2f} ms = "
               f"**{o['overhead_p50_ms']:.2f} ms**.", ""] + _plot("edge"))


def section_client(d: dict[str, Any]) -> list[str]:
    m = d["meta"]
    rows = [[r["mode"], r["window"], r["fps"], r["ratio"], r["max_diff"]] for r in d["rows"]]
    return ([f"ResNet-18 cut at `{d['cut_name']}` with int8+zstd (~{d['request_bytes']} B per "
             f"request), {m['frames']} frames, link {m['link']['rate_mbps']:g} Mbit/s and "
             f"{m['link']['rtt_ms']:g} ms RTT through the link emulator, real edge process.", ""]
            + _table(["mode", "window", "frames/s", "x sequential", "max |diff| vs infer"], rows)
            + _plot("client streaming", "client_stream"))


def section_planner(d: dict[str, Any]) -> list[str]:
    m = d["meta"]
    rows = []
    for r, w in zip(d["rows"], d["summary"]["split_vs_baselines"]):
        kind = "split" if w["split"] else ("edge-only" if r["chosen_cut"] == 0 else "device-only")
        rows.append([f"{r['bandwidth_mbps']:g} Mbit/s, {r['rtt_ms']:g} ms",
                     f"{r['chosen_cut']} {r['chosen_cut_name']} ({kind}, {r['chosen_codec']})",
                     r["chosen_ms"], r["predicted_ms"], f"{r['oracle_cut']}: {r['oracle_ms']:.1f}",
                     r["chosen_ms"] / r["oracle_ms"], r["device_only_ms"], r["edge_only_ms"],
                     w["gain_vs_best_baseline"],
                     f"{r.get('device_speed_factor', 1.0):.2f} / "
                     f"{r.get('edge_speed_factor', 1.0):.2f}"])
    wins = [w for w in d["summary"]["split_vs_baselines"] if w["split"] and w["beats_baselines"]]
    worst = min(w["gain_vs_best_baseline"] for w in d["summary"]["split_vs_baselines"])
    if d.get("device_cpu_quota"):
        how = f"one thread under a {d['device_cpu_quota']} core CPU quota (cgroup)"
    else:
        how = (f"one thread made {d.get('device_slowdown', 1):g}x slower by time dilation (each "
               "step of device work runs at full speed, then idles "
               f"{d.get('device_slowdown', 1) - 1:g}x its CPU time; `splitinfer.measure.slowdown`)")
    lines = [f"{m.get('model', 'resnet18')}, input {m['input']}; device = the shipped "
             f"device client (`device_client.SplitClient`, each configuration one "
             f"`infer_result(cut=, codec=)`) on {how}, "
             "edge = a real edge process "
             f"(`{' '.join(m['edge_flags'])}`): device/edge compute ratio "
             f"**{d['device_edge_ratio']:.2f}** "
             f"(whole model {d['device_full_ms']:.1f} ms vs {d['edge_full_ms']:.1f} ms). Each link "
             "emulated by the project's link emulator; every sampled cut measured end to end. "
             "This machine's speed swings (~1.5x, spells of seconds to minutes) and the emulated "
             "device with it, so each link is planned for the device's speed while that link was "
             "measured (its own compute steps against its profile) and the edge's tail times as "
             "its answers reported them (both factors in the last column; `docs/planner.md`, "
             "Validation).", ""]
    lines += _table(["link", "chosen cut", "chosen ms", "predicted ms", "oracle cut: ms",
                     "chosen/oracle", "device-only ms", "edge-only ms",
                     "best baseline / chosen", "device / edge speed x profile"], rows)
    if wins:
        best = max(wins, key=lambda w: w["gain_vs_best_baseline"])
        lines.append(f"The split beats the better of device-only and edge-only on "
                     f"{len(wins)} link(s); most at {best['bandwidth_mbps']:g} Mbit/s, "
                     f"{best['rtt_ms']:g} ms RTT: {best['gain_vs_best_baseline']:.2f}x.")
    else:
        lines.append("No link of this grid made a split the fastest choice.")
    lines += [f"Worst case against the better baseline: {worst:.3f}x (a value below 1 is a loss).",
              ""]
    if "profile_speed_ratio_worst" in d["summary"]:
        lines += [f"For reference, the plans from the profile alone (its speed at the start): "
                  f"chosen/oracle median {d['summary']['profile_speed_ratio_median']:.3f}, worst "
                  f"{d['summary']['profile_speed_ratio_worst']:.3f}.", ""]
    return lines + _plot("planner validation", "planner_validation")


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    "codecs": ("Codecs: bytes and speed", section_codecs),
    "fidelity": ("Fidelity: what lossy codecs cost in accuracy", section_fidelity),
    "edge": ("Edge node: batching throughput and overhead", section_edge),
    "client_stream": ("Device client: stream() vs infer()", section_client),
    "planner_validation": ("Planner validation: chosen vs oracle over a link grid",
                           section_planner),
}


def write_report(took: dict[str, float]) -> Path:
    REPORT.mkdir(parents=True, exist_ok=True)
    data = {n: json.loads((RESULTS / f"{n}.json").read_text())
            for n in BENCHMARKS if (RESULTS / f"{n}.json").exists()}
    lines = ["# splitinfer benchmark report", "", *_machine(), ""]
    targets = [row for n, d in data.items() for row in _targets(n, d)]
    lines += ["## Targets", ""] + _table(["benchmark", "figure", "value", "target", ""], targets)
    for name, (title, fn) in SECTIONS.items():
        if name not in data:
            lines += [f"## {title}", "", f"(not run: no benchmarks/results/{name}.json)", ""]
            continue
        wall = took.get(name) or data[name].get("meta", {}).get("wall_s") \
            or data[name].get("meta", {}).get("seconds")
        lines += [f"## {title}", "", f"`python -m {BENCHMARKS[name][0]}`"
                  + (f" — {wall:.0f} s" if wall else ""), ""] + fn(data[name])
    path = REPORT / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-run", action="store_true", help="only rebuild REPORT.md")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    args = ap.parse_args(argv)
    took = {} if args.skip_run else run_all(args.only or list(BENCHMARKS))
    path = write_report(took)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
