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
    "feature_floor": ("benchmarks.feature_floor", ()),
    "edge": ("benchmarks.edge", ()),
    "peer": ("benchmarks.peer", ()),
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
    lines = ([f"{m['model']}, input {m.get('input_frame', m['input'])}, every post-ReLU cut, "
              f"{m['threads']} thread: bytes saved against fp32 (ratio), signal to quantization "
              "noise, and encode/decode speed in MB of fp32 input per second.", ""]
             + _table(["codec", "median ratio", "min ratio", "min SQNR dB", "min encode MB/s",
                       "min decode MB/s"], rows))
    frames = (d.get("frames") or {}).get("summary")
    if frames:
        lines += ["The frame itself (what edge-only sends): each image codec on the uint8 "
                  "frames (224x224x3, 150,528 bytes raw), next to int8+zstd on the same frames "
                  "normalized to float (what a model without an image input is sent).", ""]
        lines += _table(["codec", "input", "median bytes", "q25-q75 bytes", "ratio to raw",
                         "median PSNR dB", "min PSNR dB", "encode ms", "decode ms"],
                        [[c, f["input"], f["median bytes"],
                          f"{f['q25 bytes']:,.0f}-{f['q75 bytes']:,.0f}",
                          f["median ratio to raw"], f["median PSNR dB"], f["min PSNR dB"],
                          f["median encode ms"], f["median decode ms"]]
                         for c, f in frames.items()])
    return lines + _plot("codecs")


def section_fidelity(d: dict[str, Any]) -> list[str]:
    m = d["meta"]
    mini = [[c, s["worst_cos_mean"], s["worst_cos_min"], s["worst_top1_agree_pct"],
             s["median_bytes"], _best(s)] for c, s in d["summary"]["minilm"].items()]
    digits = [[c, s["worst_delta_pts"], s["worst_agree_pct"], s["median_bytes"], _best(s)]
              for c, s in d["summary"]["digits"].items()]
    return ([f"(a) all-MiniLM-L6-v2, real weights, {m['minilm']['sentences']} English sentences "
             f"({m['sentence_source']}); {len(m['minilm']['cuts_measured'])} cuts. Cosine of the "
             "split embedding to the full model's (worst cut), nearest-neighbour agreement.", ""]
            + _table(["codec", "worst mean cosine", "worst sentence cosine",
                      "worst NN agreement %", "median bytes/sentence",
                      "best ratio vs fp32 at cosine >= 0.999 (cut)"], mini)
            + [f"(b) CNN trained here on scikit-learn digits ({m['digits']['test_acc_pct']:.2f} % "
               f"test accuracy); top-1 accuracy change against fp32, worst of "
               f"{len(m['digits']['cuts_measured'])} cuts.", ""]
            + _table(["codec", "worst delta (points)", "worst agreement %", "median bytes/image",
                      "best ratio vs fp32 within 0.5 pt (cut)"], digits) + _plot("fidelity") + _fidelity_images(d.get("images")))


def _best(s: dict[str, Any]) -> str:
    """A summary's best ratio in budget, with its cut ("-" when no cut keeps the budget)."""
    ratio = s.get("best_ratio_in_budget")
    return "-" if ratio is None else f"{ratio:.3g} (cut {s.get('best_ratio_in_budget_cut')})"


def _fidelity_images(images: dict[str, Any] | None) -> list[str]:
    """The frame codecs (edge-only) against int8+zstd at early cuts (split), per model."""
    if not images:
        return []
    meta = images["meta"]
    lines = [f"(c) Frames: {meta['frames']}. Edge-only rows send the frame (cut 0) with an image "
             "codec; split rows send an early cut's tensors (the first, `image.div#2`, is the frame "
             "normalized to float: what edge-only sends for a bundle without an image input). "
             "Output distortion against the unsplit model on the original frame; on the trained "
             "digits model, accuracy.", ""]
    for name, info in images["models"].items():
        rows = [r for r in images["rows"] if r["model"] == name and "error" not in r]
        spread = [f"{r['kb_median']:.1f} ({r['kb_q25']:.1f}-{r['kb_q75']:.1f})" for r in rows]
        where = [f"{r['placement']} cut {r['cut']} {r['cut_name']}" for r in rows]
        if "acc_pct" in (rows[0] if rows else {}):
            lines += [f"{name}: {info.get('weights', '')}; {info.get('samples')} test samples, "
                      f"fp32 accuracy {rows[0]['acc_fp32_pct']:.2f} %.", ""]
            lines += _table(["where", "codec", "KB/sample median (q25-q75)", "accuracy %",
                             "change (points)"],
                            [[w, r["codec"], k, r["acc_pct"], r["delta_pts"]]
                             for w, k, r in zip(where, spread, rows)])
            continue
        top1 = ("top-1 agreement not meaningful: random weights give "
                f"{info.get('distinct_top1')} distinct top-1 class(es) over the frames"
                if not info.get("top1_meaningful") else "")
        lines += [f"{name}: {info.get('weights', '')}; {info.get('samples')} frames. {top1}", ""]
        lines += _table(["where", "codec", "KB/frame median (q25-q75)", "rel. error median",
                         "rel. error p95", "cosine mean", "cosine min"],
                        [[w, r["codec"], k, r["relerr_median"], r["relerr_p95"], r["cos_mean"],
                          r["cos_min"]] for w, k, r in zip(where, spread, rows)])
    return lines + _plot("fidelity images", "fidelity_images")


def section_feature_floor(d: dict[str, Any]) -> list[str]:
    """Two probes past the shipped codecs at the smallest early cut of each random-weight image
    model: channel planes as one JPEG, and the channels' top principal components (KLT)."""
    m = d["meta"]
    lines = [f"Could a better post-training codec beat the frame's JPEG at an early cut? "
             f"{m['frames']} real frames, {m['weights']}; `planes-jpeg-qN`: every channel on "
             "its own 0..255 range, tiled into one grey JPEG (spatial redundancy); `klt-K`: the "
             "top K principal components of the channels, fitted on the other photo's frames "
             f"({m['folds']}), sent with ecq (channel redundancy; the components are not "
             "counted). Not shipped codecs: bounds on what one could add.", ""]
    for name, info in d["models"].items():
        b = info["best_within_jpeg_error"]
        lines += _table(["cut", "codec", "KB/frame median", "rel. error median",
                         "rel. error p95"],
                        [[f"{r['cut']} {r['cut_name']}", r["codec"], r["kb_median"],
                          r["relerr_median"], r["relerr_p95"]] for r in info["rows"]])
        lines += [f"{name}: fewest bytes at no more median error than JPEG q90: "
                  + (f"**{b['ratio_to_jpeg']:.2f}x** its bytes ({b['codec']} at cut {b['cut']} "
                     f"{b['cut_name']}, {b['kb']:.2f} KB)." if b else "none."), ""]
    return lines


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


def section_peer(d: dict[str, Any]) -> list[str]:
    m = d["meta"]
    lines = [f"The same tail graph on both sides; weights {m['weights']}. KServe "
             f"({', '.join(m['peer'])}) in its own venv, one torch thread, latency logging off; "
             "the node in its default configuration. Clients send pre-serialized bytes to each "
             "server in turn; 'grpc floor' = a bare grpc.aio server answering the same bytes "
             "with as many bytes as the node answers. The overhead targets read the light "
             "tails (the serving path alone), the req/s targets the conv tails.", ""]
    for name, w in d["workloads"].items():
        sides = list(w["load"])
        rows = []
        for i, ours in enumerate(w["load"]["splitinfer"]):
            rows.append([ours["clients"]] + [f"{w['load'][s][i]['rps']:.0f} / "
                                             f"{w['load'][s][i]['p50_ms']:.2f}" for s in sides]
                        + [w["rps_ratio"][str(ours["clients"])]])  # JSON keys are text
        c, o = w["compute_p50_ms"], w["overhead_ms"]
        lines += [f"**{w['label']}** ({w['activation_bytes'] // 1000} KB)", ""]
        lines += _table(["clients"] + [f"{s} req/s / p50 ms" for s in sides]
                        + ["ours / KServe req/s"], rows)
        lines += [f"Overhead at 1 client (p50 - bare compute {c['splitinfer']:.2f} / "
                  f"{c['kserve']:.2f} ms): ours **{o['splitinfer']:.2f} ms**, KServe "
                  f"{o['kserve']:.2f} ms (**{w['overhead_ratio']:.2f}x**); grpc floor "
                  f"{o['grpc floor']:.2f} ms, ours {w['above_floor_ms']:.2f} ms above it"
                  + (f"; the target (0.5x KServe's = {w['target_overhead_ms']:.2f} ms) sits "
                     "below that floor." if w["target_below_floor"] else ".")]
        sv = w.get("serving_ms") or {}
        if len(sv) == 2:
            lines += [f"Against the tail as it ran inside each server (mean "
                      f"{c['splitinfer in server']:.2f} / {c['kserve in server']:.2f} ms): ours "
                      f"{sv['splitinfer']:.2f} ms, KServe {sv['kserve']:.2f} ms "
                      f"({sv['splitinfer'] / sv['kserve']:.2f}x)."]
        lines += [""] + _peer_tritonclient(w.get("tritonclient"))
    if "hops" in d:
        lines += [f"The node's two thread hops alone (event loop -> worker -> event loop, a tail "
                  f"that does nothing): {d['hops']['two_hops_p50_ms']:.3f} ms p50.", ""]
    if "layouts" in d:
        lines += _table(["tail alone, 1 thread", "as the node runs it, ms", "channels_last, ms"],
                        [[n, v["default_ms"], v["channels_last_ms"]]
                         for n, v in d["layouts"].items()])
    return lines


def _peer_tritonclient(tc: dict[str, Any] | None) -> list[str]:
    """The same client on both sides: tritonclient.grpc.aio against the node's OIP service and
    against KServe (absent from results written before this mode, or with --skip-tritonclient)."""
    if not tc:
        return []
    m, d, ob = tc["models"], tc["max_abs_diff"], tc["over_bytes_p50_ms"]
    rows = [[r["clients"]] + [f"{tc['load'][s][i]['rps']:.0f} / {tc['load'][s][i]['p50_ms']:.2f}"
                              f" / {tc['load'][s][i]['p95_ms']:.2f}" for s in ("splitinfer",
                                                                                "kserve")]
            + [tc["rps_ratio"][str(r["clients"])], tc["p50_ratio"][str(r["clients"])]]
            for i, r in enumerate(tc["load"]["splitinfer"])]
    return ([f"The same client on both sides, tritonclient.grpc.aio `infer` (a request built and "
             f"an answer parsed per call, the activation as FP32 raw_input_contents): our node's "
             f"OIP model `{m['splitinfer']}` against KServe's `{m['kserve']}`; answers checked "
             f"first against the local tail (max abs diff {d['splitinfer']:.1e} / "
             f"{d['kserve']:.1e}).", ""]
            + _table(["clients", "tritonclient -> ours req/s / p50 / p95 ms",
                      "tritonclient -> KServe req/s / p50 / p95 ms", "ours / KServe req/s",
                      "ours / KServe p50"], rows)
            + [f"At 1 client tritonclient's p50 over the byte replay to the same server: ours "
               f"{ob['splitinfer']:+.2f} ms (OIP through tritonclient against our own protocol's "
               f"bytes), KServe {ob['kserve']:+.2f} ms.", ""])


def section_client(d: dict[str, Any]) -> list[str]:
    m = d["meta"]
    rows = [[r["mode"], r["window"], r["fps"], r["ratio"], r["max_diff"]] for r in d["rows"]]
    return ([f"ResNet-18 cut at `{d['cut_name']}` with int8+zstd (~{d['request_bytes']} B per "
             f"request), {m['frames']} real photo frames (the 224-px crops of splitinfer.tools.frames resized to 64x64), link {m['link']['rate_mbps']:g} Mbit/s and "
             f"{m['link']['rtt_ms']:g} ms RTT through the link emulator, real edge process.", ""]
            + _table(["mode", "window", "frames/s", "x sequential", "max |diff| vs infer"], rows)
            + _plot("client streaming", "client_stream"))


def _closest(c: dict[str, Any] | None) -> str:
    """The split cut nearest its byte budget: what it may send against what it sends."""
    if not c:
        return "-"
    return (f"{c['cut']} {c['cut_name']}: {c['bytes_needed']:,.0f} / {c['bytes_now']:,.0f} B "
            f"({c['shrink_needed']:.1f}x too big; output error {c['error_now']:.2g})")


#: tensor codecs that carry a uint8 frame as it is ("raw") or zstd'ed ("raw+zstd")
_TENSOR_ON_FRAME = ("fp32", "fp16", "bf16", "int8", "fp32+zstd", "fp16+zstd", "bf16+zstd",
                    "int8+zstd")


def section_planner(d: dict[str, Any]) -> list[str]:
    m = d["meta"]
    rows = []
    for r, w in zip(d["rows"], d["summary"]["split_vs_baselines"]):
        kind = "split" if w["split"] else ("edge-only" if r["chosen_cut"] == 0 else "device-only")
        codec = r["chosen_codec"]
        if r["chosen_cut"] == 0 and m.get("input_dtype") == "uint8" and codec in _TENSOR_ON_FRAME:
            codec = f"{codec} = the uint8 frame, lossless"  # tensor codecs never quantize integers
        rows.append([f"{r['bandwidth_mbps']:g} Mbit/s, {r['rtt_ms']:g} ms",
                     f"{r['chosen_cut']} {r['chosen_cut_name']} ({kind}, {codec})",
                     r["chosen_ms"], r["predicted_ms"], f"{r['oracle_cut']}: {r['oracle_ms']:.1f}",
                     r["chosen_ms"] / r["oracle_ms"], r["device_only_ms"],
                     f"{r['edge_only_ms']:.1f} ({r.get('edge_only_request_bytes', 0) / 1e3:.1f} KB)",
                     w["gain_vs_best_baseline"],
                     f"{r.get('device_speed_factor', 1.0):.2f} / "
                     f"{r.get('edge_speed_factor', 1.0):.2f}"])
    wins = d["summary"].get("split_wins", [])
    worst = min(w["gain_vs_best_baseline"] for w in d["summary"]["split_vs_baselines"])
    if d.get("device_cpu_quota"):
        how = f"one thread under a {d['device_cpu_quota']} core CPU quota (cgroup)"
    else:
        how = (f"one thread made {d.get('device_slowdown', 1):g}x slower by time dilation (each "
               "step of device work runs at full speed, then idles "
               f"{d.get('device_slowdown', 1) - 1:g}x its CPU time; `splitinfer.measure.slowdown`)")
    lines = [f"{m.get('model', 'resnet18')}, input {m['input']} {m.get('input_dtype', '')} "
             f"({m.get('frames', 'random')}); device = the shipped "
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
             "Validation)."
             + (f" Codecs {', '.join(m['codecs'])}; every plan under a fidelity budget: no codec "
                "whose measured output error is above the frame's as JPEG q90 "
                f"({d['max_codec_error']:.3g} on the profile frame)."
                if d.get("max_codec_error") is not None else ""), ""]
    lines += _table(["link", "chosen cut", "chosen ms", "predicted ms", "oracle cut: ms",
                     "chosen/oracle", "device-only ms", "edge-only JPEG q90 ms (bytes)",
                     "best baseline / chosen", "device / edge speed x profile"], rows)
    if wins:
        best = max(wins, key=lambda w: w["gain"])
        lines.append(f"A split (measured) beats the better of device-only and edge-only JPEG q90 "
                     f"on {len(wins)} link(s); most at {best['bandwidth_mbps']:g} Mbit/s, "
                     f"{best['rtt_ms']:g} ms RTT: cut {best['cut']} {best['codec']}, "
                     f"{best['gain']:.2f}x.")
    else:
        lines.append("No split measured on this grid beats both device-only and edge-only JPEG "
                     "q90.")
    lines += ["", "What a split would need on each link (from the profiles): the most bytes the "
              "best split cut may send to be 5 % faster than the better baseline, against what "
              "int8+zstd sends there and the output error it causes.", ""]
    lines += _table(["link", "best split cut", "baseline (predicted ms)", "bytes it may send",
                     "int8+zstd sends", "int8+zstd output error",
                     "closest cut: may send / int8+zstd sends"],
                    [[f"{n['bandwidth_mbps']:g} Mbit/s, {n['rtt_ms']:g} ms",
                      f"{n['cut']} {n['cut_name']}",
                      f"{n['baseline']} ({n['baseline_predicted_ms']:.1f})",
                      f"{n['bytes_needed']:,.0f}" if n["reachable"]
                      else f"none: {n['rest_predicted_ms'] - 0.95 * n['baseline_predicted_ms']:.1f}"
                           " ms over sending nothing",
                      n["bytes_now"], n["error_now"], _closest(n.get("closest"))]
                     for n in d["summary"].get("split_needs", []) if "cut" in n])
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
    "feature_floor": ("Feature floor: can an early cut go under the JPEG?",
                      section_feature_floor),
    "edge": ("Edge node: batching throughput and overhead", section_edge),
    "peer": ("Edge node vs KServe's ModelServer, over grpcio's floor", section_peer),
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
