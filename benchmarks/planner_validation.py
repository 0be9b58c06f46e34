"""Planner validation: does the planner's cut beat the alternatives when measured end to end?

    python -m benchmarks.planner_validation [--quick] [--estimate-only] [--repeats N] [--out PATH]
        [--device-slowdown K | --device-cpu-quota CORES] [--model NAME] [--strict]

One run, side by side, on this machine:

- Model: torchvision MobileNetV3-Small by default (--model mobilenet_v2 / resnet18; random
  weights, seed 0), one 1x3x224x224 input (--quick: 1x3x96x96), exported as a bundle into a
  temporary model repository. MobileNetV3-Small is built for phones, the devices this product
  is for, and its first block shrinks the input (~133 KB as int8+zstd) to ~30 KB after ~10 % of
  the compute, so there are links where a split beats both baselines; ResNet-18's and
  MobileNetV2's early activations are larger than their input.
- Edge: one real ``splitinfer-edge`` process (``--torch-threads 1 --workers 1
  --max-batch-size 1 --profile-tails true``); its profile comes from ``GetModelInfo``.
- Device: this process with one torch thread, made ``--device-slowdown K`` (default 15) times
  slower by time dilation (``splitinfer.measure.slowdown.SlowDevice``): each piece of device work (head
  + encode + building the request; parsing + decoding the answer; the whole model for
  device-only) runs at full speed, then the thread idles K-1 times the CPU time it used. Its
  profile is ``profile_device(slowdown=K)``, through the same emulation. That is how the device
  is made slower than the edge, a phone-class device next to a server; the measured
  device/edge ratio is printed. ``--device-cpu-quota Q`` instead confines the device thread to
  Q cores with a cgroup-v1 ``cpu`` group (10 ms period; ``splitinfer demo`` has it too); it was
  too noisy here to validate against (the kernel cuts work into 1 ms slices: the same
  computation took 80-180 ms depending on where it fell in the period).
- Links: bandwidth 1, 10, 100, 1000 Mbit/s x RTT 5, 30, 100 ms through a link emulator (TCP
  proxy; rate both ways, RTT/2 delay each way); --quick: (10 Mbit/s, 30 ms), (1000, 5).
  Per link the link is measured with Probe (several sizes, ``fit_link``); the planner runs
  on the measured link ("the planner's choice", what a device would do) and on the nominal one.
- Measured per link: edge-only, device-only and an even sample of cuts (--quick: 3), each with
  the codec the planner ranks best for it, plus the planner's choice for every device speed
  from 0.5x to 3x its profile (``SPEED_GRID``); one measurement is head -> encode -> Infer
  through the proxy -> decode. One warm-up each, then rounds in which every configuration runs
  once, the order rotated each round; the median of N (N drops for slow transfers so the full
  grid stays well under 30 minutes; the estimate is printed first). Interleaved, a slow spell
  of this shared machine falls on every configuration alike.
- The device's speed: this machine's speed swings 1.5x in spells of seconds to minutes, and
  the emulated device with it, so a profile taken minutes before is off by up to that much.
  The planner plans for the device's speed in the window the link was measured in: the time
  of the device's own steps in it (its compute only) over what its profile predicts for them
  (``device_speed_factor`` in each row; ``DeviceProfile.scaled``), and for the edge's tails as
  its answers timed them in the window (``edge_speed_factor``: they were profiled once, when
  the edge loaded the model). Its choice for that speed
  is among the configurations measured (or, between two grid steps, measured afterwards beside
  the best one and both baselines).

Targets: chosen/oracle latency <= 1.05 median and <= 1.15 worst over links (oracle: the
fastest configuration measured); |predicted - measured| / measured <= 15 % (median) for the
chosen cut. The "oracle" only knows the configurations measured, not every cut.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the device side is one thread; the edge sets its own

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from device_client import SplitClient  # noqa: E402
from device_client.link_probe import sizes_for  # noqa: E402
from splitinfer.core.link import Link  # noqa: E402
from splitinfer.core.planner import Candidate, Plan, choose  # noqa: E402
from splitinfer.core.profiles import DeviceProfile, EdgeProfile  # noqa: E402
from splitinfer.measure.profiler import profile_device  # noqa: E402
from splitinfer.model.bundle import load_bundle, save_bundle  # noqa: E402
from splitinfer.model.split_model import partition  # noqa: E402
from splitinfer.tools.cpuquota import DeviceQuota  # noqa: E402
from splitinfer.tools.edgeproc import start_edge  # noqa: E402
from splitinfer.tools.netem import LinkEmulator, LinkShape  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEFAULT_OUT = RESULTS / "planner_validation.json"
BANDWIDTHS_MBPS = (1, 10, 100, 1000)
RTTS_MS = (5, 30, 100)
QUICK_LINKS = ((10, 30), (1000, 5))
CODECS = ("fp16", "int8+zstd", "fp32")
# one torch thread: on this 2-core machine a 2-thread OpenMP team in the edge's worker thread
# ran MobileNetV3-Small 3x slower than one thread (two teams contend once the main thread has
# used one), and the edge's background tail profile came out 2x its serving time
EDGE_FLAGS = ("--torch-threads", "1", "--workers", "1", "--max-batch-size", "1",
              "--profile-tails", "true", "--log-level", "WARNING")
DEFAULT_SLOWDOWN = 15.0  # the emulated device's core against this machine's
TARGET_RATIO_MEDIAN, TARGET_RATIO_WORST, TARGET_PRED_ERR = 1.05, 1.15, 0.15
TARGET_SPLIT_WINS, TARGET_WORST_GAIN = 1, 0.95
# device speeds (x its profile) the choice is planned for before measuring, 0.5x to ~3x
SPEED_GRID = tuple(0.5 * 1.04 ** i for i in range(46))
CUT_BUDGET_S = 15.0  # seconds one configuration may take (warm-up + repeats) before N drops
_TIMEOUT_S = 300.0   # a 1.6 MB request at 1 Mbit/s takes ~13 s; leave room


# ---- setup --------------------------------------------------------------------------------------

MODELS = {"mobilenet_v3_small": "MobileNetV3-Small", "mobilenet_v2": "MobileNetV2",
          "resnet18": "ResNet-18"}


def export_model(repo: Path, name: str, side: int) -> tuple[Any, str, torch.Tensor]:
    """The model (seed 0) as a bundle in ``repo``; the SplitModel loaded back, as the edge has
    it."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, side, side)
    save_bundle(partition(model, (x,), name=name), repo / name / "1")
    sm = load_bundle(repo / name / "1")
    return sm, "1", x


def sample_cuts(last: int, k: int) -> list[int]:
    """``k`` evenly spaced interior cuts (0 and ``last`` are measured anyway)."""
    if last < 2:
        return []
    return sorted({int(round(c)) for c in np.linspace(1, last - 1, min(k, last - 1))})


Config = tuple[int, str | None]  # (cut, codec); codec None: device-only


@dataclass(frozen=True)
class Timing:
    """Seconds of one configuration: every repeat after the warm-up, and their median."""

    cut_id: int
    codec: str | None
    samples: tuple[float, ...]
    request_bytes: int
    device_samples: tuple[float, ...] = ()  # the device's own part of each sample (its steps)
    edge_samples: tuple[float, ...] = ()    # the edge's tail compute in each (its StageTiming)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def device_median_s(self) -> float:
        return statistics.median(self.device_samples)

    @property
    def edge_median_s(self) -> float | None:
        return statistics.median(self.edge_samples) if self.edge_samples else None


@dataclass(frozen=True)
class Sample:
    """One request of one configuration, as the device client's own outcome reports it."""

    total_s: float                # end to end, as the caller of SplitClient.infer_result sees it
    device_s: float               # the device's steps in it (head + encode + build; decode)
    edge_compute_s: float | None  # the tail compute the edge reported (None: not sent)
    request_bytes: int


def run_config(client: SplitClient, x: torch.Tensor, config: Config) -> Sample:
    """One request through the shipped SDK at ``config``'s cut and codec (the last cut: the
    whole model on the device)."""
    cut_id, codec = config
    start = time.perf_counter()
    r = client.infer_result(x, cut=cut_id, codec=codec)
    total = time.perf_counter() - start
    return Sample(total, r.device_s, r.edge_timing.compute_s if r.edge_timing else None,
                  r.bytes_sent)


def best_codec(plan: Plan, cut_id: int) -> str | None:
    """The codec the planner ranks best for ``cut_id`` (None: device-only, nothing sent)."""
    return next(c.codec for c in plan.alternatives if c.cut_id == cut_id)


def candidate(plan: Plan, config: Config) -> Candidate:
    cut_id, codec = config
    return next(c for c in plan.alternatives if c.cut_id == cut_id and c.codec == codec)


def predicted_s(plan: Plan, config: Config) -> float:
    return candidate(plan, config).breakdown.total_s


def repeats_for(pred_s: float, base: int) -> int:
    """``base`` repeats, fewer (never under 2) when one request takes seconds: the budget."""
    return max(2, min(base, int(CUT_BUDGET_S / max(pred_s, 1e-6)) - 1))


def probe_sizes(bandwidth_bps: float) -> list[int]:
    # the device client's own sizes, the largest ~0.25 s of transfer (long enough that
    # bandwidth beats the noise, short enough for 1 Mbit/s), capped at 2 MB: at 1 Gbit/s and
    # 100 ms RTT a 4 MB probe needed extra round trips for HTTP/2 flow control (211 ms against
    # 120 for 2 MB), which bent the fit to 300 Mbit/s and an RTT of 87 ms
    return sizes_for(bandwidth_bps, seconds=0.25)


def configs_for(device: DeviceProfile, edge: EdgeProfile, link: Link, k: int
                ) -> tuple[Plan, list[Config]]:
    """The plan on the profile as measured, and what to measure on ``link``: edge-only,
    device-only and ``k`` evenly spaced cuts, each with the codec that plan ranks best for it,
    plus the planner's choice for every device speed in ``SPEED_GRID`` (so the choice for the
    speed the device turns out to have while measuring is among the configurations measured,
    side by side with the rest)."""
    plan = choose(device, edge, link, objective="latency")
    last = device.cuts[-1].cut_id
    cuts = sorted({0, last, *sample_cuts(last, k)})
    configs = {(c, None if c == last else best_codec(plan, c)) for c in cuts}
    for f in SPEED_GRID:
        p = choose(device.scaled(f), edge, link, objective="latency")
        configs.add((p.cut_id, p.codec))
    return plan, sorted(configs, key=lambda c: (c[0], str(c[1])))


def estimate_s(device: DeviceProfile, edge: EdgeProfile, args: argparse.Namespace) -> float:
    """Seconds the measurements will take, from the planner's own predictions."""
    total = 0.0
    for bw, rtt in links(args):
        plan, configs = configs_for(device, edge, Link(rtt / 1e3, bw * 1e6), args.cuts)
        for config in configs:
            pred = predicted_s(plan, config)
            total += pred * (1 + repeats_for(pred, args.repeats))
        total += 2.0  # probing
    return total


# ---- one link -----------------------------------------------------------------------------------

def measure_interleaved(run: Callable[[Config], Sample], configs: list[Config],
                        wanted: dict[Config, int]) -> dict[Config, Timing]:
    """Every configuration: one warm-up each, then rounds in which each runs once (a slow one
    drops out after its ``wanted`` repeats), the order rotated every round. Interleaved, a slow
    minute of this shared machine lands on every configuration alike instead of on whichever
    one was running."""
    nbytes = {c: run(c).request_bytes for c in configs}  # one warm-up each
    samples: dict[Config, list[float]] = {c: [] for c in configs}
    device: dict[Config, list[float]] = {c: [] for c in configs}
    edge: dict[Config, list[float]] = {c: [] for c in configs}
    for r in range(max(wanted.values())):
        for c in configs[r % len(configs):] + configs[:r % len(configs)]:
            if len(samples[c]) < wanted[c]:
                s = run(c)
                samples[c].append(s.total_s)
                device[c].append(s.device_s)
                if s.edge_compute_s is not None:
                    edge[c].append(s.edge_compute_s)
    return {c: Timing(c[0], c[1], tuple(samples[c]), nbytes[c], tuple(device[c]),
                      tuple(edge[c])) for c in configs}


def window_speed(timings: dict[Config, Timing], plan: Plan) -> float:
    """How much slower (> 1) the device ran while measuring than its profile says: the median
    time of its own steps (heads, encoding, decoding answers; whole models) summed over the
    configurations, over what the profile predicts for them. Medians, as the latencies compared
    are; only the device's compute, never a network or edge time."""
    spent = sum(t.device_median_s for t in timings.values())
    expected = sum(candidate(plan, c).breakdown.device_s for c in timings)
    return spent / expected


def edge_window_speed(timings: dict[Config, Timing], edge: EdgeProfile) -> float:
    """The same for the edge: its tails' compute time as its answers report it (median per
    configuration, summed) over its profile's tail times for those cuts (measured once, when it
    loaded the model, perhaps in a slow spell). 1.0 when nothing was sent."""
    sent = [(t.edge_median_s, edge.tail_s[c[0]]) for c, t in timings.items()
            if t.edge_median_s is not None and c[0] in edge.tail_s]
    expected = sum(e for _, e in sent)
    return sum(m for m, _ in sent) / expected if expected > 0 else 1.0


def remeasure(chosen: Config, timings: dict[Config, Timing], last: int) -> list[Config]:
    """A choice not measured yet, and what to measure again beside it: the fastest so far and
    both baselines (every edge-only codec measured), each once."""
    best = min(timings, key=lambda c: timings[c].median_s)
    return list(dict.fromkeys([chosen, best, *(c for c in timings if c[0] in (0, last))]))


def run_link(client: SplitClient, x: torch.Tensor, proxy: LinkEmulator,
             device: DeviceProfile, edge: EdgeProfile, bw_mbps: float, rtt_ms: float,
             args: argparse.Namespace) -> dict[str, Any]:
    nominal = Link(rtt_s=rtt_ms / 1e3, bandwidth_bps=bw_mbps * 1e6)
    proxy.set_shape(LinkShape(rate_bps=nominal.bandwidth_bps, delay_s=nominal.rtt_s / 2))
    measured, samples = client.measure_link(args.probe_rounds,
                                            probe_sizes(nominal.bandwidth_bps))
    last = len(client.manifest.cuts) - 1
    plan0, configs = configs_for(device, edge, measured, args.cuts)
    wanted = {c: repeats_for(predicted_s(plan0, c), args.repeats) for c in configs}

    def run(config: Config) -> Sample:
        return run_config(client, x, config)

    timings = measure_interleaved(run, configs, wanted)
    # this shared machine's speed swings 1.5x in spells of seconds to minutes (the same
    # whole-model run: 7.5 ms, then 11.5 ms for a minute), which moves the emulated device with
    # it; the planner plans for the device's speed in the minutes the oracle was measured in,
    # taken from the device's own steps in them, as a device would time its own work
    speed, edge_speed = window_speed(timings, plan0), edge_window_speed(timings, edge)
    scaled = device.scaled(min(max(speed, SPEED_GRID[0]), SPEED_GRID[-1]))
    edge_now = edge.scaled(edge_speed)
    plan = choose(scaled, edge_now, measured, objective="latency")
    plan_nominal = choose(scaled, edge_now, nominal, objective="latency")
    chosen_config = (plan.cut_id, plan.codec)
    if chosen_config not in timings:  # between two grid speeds: measure it beside the best
        again = remeasure(chosen_config, timings, last)
        timings.update(measure_interleaved(run, again, {
            c: repeats_for(predicted_s(plan, c), args.repeats) for c in again}))
    print(f"  device ran {speed:.2f}x its profile while measuring, the edge's tails "
          f"{edge_speed:.2f}x", flush=True)
    for c, t in timings.items():
        print(f"  cut {c[0]:3d} {str(c[1]):10s} predicted {predicted_s(plan, c) * 1e3:9.1f} ms  "
              f"measured {t.median_s * 1e3:9.1f} ms (device "
              f"{candidate(plan, c).breakdown.device_s * 1e3:6.1f} / "
              f"{t.device_median_s * 1e3:6.1f} ms)", flush=True)
    oracle = min(timings.values(), key=lambda t: t.median_s)
    chosen = timings[chosen_config]
    edge_only = min((t for c, t in timings.items() if c[0] == 0), key=lambda t: t.median_s)
    nominal_config = (plan_nominal.cut_id, plan_nominal.codec)
    return {
        "bandwidth_mbps": bw_mbps, "rtt_ms": rtt_ms,
        "chosen_cut": plan.cut_id, "chosen_cut_name": plan.cut_name, "chosen_codec": plan.codec,
        "chosen_ms": chosen.median_s * 1e3, "predicted_ms": plan.predicted_s * 1e3,
        "oracle_cut": oracle.cut_id, "oracle_codec": oracle.codec,
        "oracle_ms": oracle.median_s * 1e3,
        "device_only_ms": timings[(last, None)].median_s * 1e3,
        "edge_only_ms": edge_only.median_s * 1e3, "edge_only_codec": edge_only.codec,
        "device_speed_factor": speed, "edge_speed_factor": edge_speed,
        "plan_at_profile_speed": {"cut": plan0.cut_id, "codec": plan0.codec,
                                  "measured_ms": (timings[(plan0.cut_id, plan0.codec)].median_s
                                                  * 1e3)},
        "nominal_plan": {"cut": plan_nominal.cut_id, "codec": plan_nominal.codec,
                         "predicted_ms": plan_nominal.predicted_s * 1e3,
                         "measured_ms": (timings[nominal_config].median_s * 1e3
                                         if nominal_config in timings else None)},
        "link_fit": {"rtt_ms": measured.rtt_s * 1e3,
                     "bandwidth_mbps": measured.bandwidth_bps / 1e6,
                     "probe_samples": [[b, s] for b, s in samples]},
        "cuts": [{"cut_id": t.cut_id, "codec": t.codec, "request_bytes": t.request_bytes,
                  "predicted_ms": predicted_s(plan, c) * 1e3,
                  "measured_ms": t.median_s * 1e3, "samples_ms": [s * 1e3 for s in t.samples],
                  "device_predicted_ms": candidate(plan, c).breakdown.device_s * 1e3,
                  "device_measured_ms": t.device_median_s * 1e3}
                 for c, t in timings.items()],
    }


# ---- summary ------------------------------------------------------------------------------------

def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [r["chosen_ms"] / r["oracle_ms"] for r in rows]
    errors = [abs(r["predicted_ms"] - r["chosen_ms"]) / r["chosen_ms"] for r in rows]
    wins = []
    for r in rows:
        baseline = min(r["device_only_ms"], r["edge_only_ms"])
        wins.append({"bandwidth_mbps": r["bandwidth_mbps"], "rtt_ms": r["rtt_ms"],
                     "split": 0 < r["chosen_cut"] < max(c["cut_id"] for c in r["cuts"]),
                     "beats_baselines": r["chosen_ms"] < baseline,
                     "gain_vs_best_baseline": baseline / r["chosen_ms"]})
    # for reference, not a target: the plans from the profile as measured at the start, before
    # the device's speed in each link's window was known
    at_profile = [r["plan_at_profile_speed"]["measured_ms"] / r["oracle_ms"] for r in rows]
    return {"ratio_median": statistics.median(ratios), "ratio_worst": max(ratios),
            "pred_err_median": statistics.median(errors), "pred_err_worst": max(errors),
            "split_vs_baselines": wins,
            "profile_speed_ratio_median": statistics.median(at_profile),
            "profile_speed_ratio_worst": max(at_profile)}


def check_targets(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's value, its bound as text ("<= 1.05") and whether it passes."""
    gains = [w["gain_vs_best_baseline"] for w in s["split_vs_baselines"]]
    wins = sum(1 for w in s["split_vs_baselines"] if w["split"] and w["beats_baselines"])
    checks = (("chosen/oracle median", s["ratio_median"], "<=", TARGET_RATIO_MEDIAN),
              ("chosen/oracle worst", s["ratio_worst"], "<=", TARGET_RATIO_WORST),
              ("|pred-meas|/meas median", s["pred_err_median"], "<=", TARGET_PRED_ERR),
              # the demo issue's: a split wins somewhere, and the choice never loses > 5 %
              ("links where a split beats both baselines", wins, ">=", TARGET_SPLIT_WINS),
              ("chosen vs better baseline, worst (baseline/chosen)", min(gains), ">=",
               TARGET_WORST_GAIN))
    return {name: {"value": value, "target": f"{op} {bound:g}",
                   "pass": value <= bound if op == "<=" else value >= bound}
            for name, value, op, bound in checks}


def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"\n{'link':>16} {'fit':>16} {'chosen':>13} {'chosen':>9} {'pred':>9} {'oracle':>13} "
          f"{'dev-only':>9} {'edge-only':>9} {'nominal':>7} {'gain':>6}")
    print(f"{'Mbit/s, ms':>16} {'Mbit/s, ms':>16} {'cut codec':>13} {'ms':>9} {'ms':>9} "
          f"{'cut: ms':>13} {'ms':>9} {'ms':>9} {'cut':>7} {'x':>6}")
    for r, w in zip(rows, summary["split_vs_baselines"]):
        fit = r["link_fit"]
        print(f"{r['bandwidth_mbps']:>8g}, {r['rtt_ms']:>5g} "
              f"{fit['bandwidth_mbps']:>8.1f}, {fit['rtt_ms']:>5.1f} "
              f"{r['chosen_cut']:>3d} {str(r['chosen_codec']):>9s} {r['chosen_ms']:>9.1f} "
              f"{r['predicted_ms']:>9.1f} {r['oracle_cut']:>3d}: {r['oracle_ms']:>8.1f} "
              f"{r['device_only_ms']:>9.1f} {r['edge_only_ms']:>9.1f} "
              f"{r['nominal_plan']['cut']:>7d} {w['gain_vs_best_baseline']:>6.2f}")
    print("(gain: the better of device-only and edge-only over the chosen, > 1 means faster)")


def plot(rows: list[dict[str, Any]], path: Path, model: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['bandwidth_mbps']:g} Mbit/s\n{r['rtt_ms']:g} ms" for r in rows]
    x = np.arange(len(rows))
    series = (("chosen_ms", "planner's choice"), ("oracle_ms", "oracle (best measured)"),
              ("device_only_ms", "device-only"), ("edge_only_ms", "edge-only"))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4.5))
    width = 0.2
    for i, (key, label) in enumerate(series):
        ax.bar(x + (i - 1.5) * width, [r[key] for r in rows], width, label=label)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("end-to-end latency (ms, log)")
    for i, r in enumerate(rows):  # which cut the planner took, over its bar
        ax.annotate(f"cut {r['chosen_cut']}", (x[i] - 1.5 * width, r["chosen_ms"]),
                    ha="center", va="bottom", fontsize=7)
    ax.set_title(f"{MODELS[model]}: planner's choice vs alternatives, per link", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- driver -------------------------------------------------------------------------------------

def links(args: argparse.Namespace) -> list[tuple[int, int]]:
    return list(QUICK_LINKS) if args.quick else [(b, r) for b in BANDWIDTHS_MBPS for r in RTTS_MS]


def run(args: argparse.Namespace, repo: Path) -> dict[str, Any]:
    sm, version, x = export_model(repo, args.model, args.side)
    with contextlib.ExitStack() as stack:
        # the edge and the link emulator are started before the device quota, so neither is
        # confined by it (threads inherit their starter's cgroup): they are not the device
        node = start_edge(repo, *EDGE_FLAGS)
        stack.callback(node.stop)
        proxy = stack.enter_context(LinkEmulator(("127.0.0.1", node.port)))
        quota = stack.enter_context(DeviceQuota(args.device_cpu_quota))
        print(f"profiling the device (1 thread, slowdown {args.device_slowdown:g}, "
              f"{len(sm.cuts)} cuts, codecs {', '.join(CODECS)})…", flush=True)
        device = profile_device(sm, (x,), codecs=CODECS, repeats=args.profile_repeats,
                                slowdown=args.device_slowdown)
        # the shipped SDK, with the switches a measurement needs: the configurations are
        # given per request (infer_result(cut=, codec=)), nothing is re-planned, no background
        # probe shares the link with the requests, and an edge failure is an error (never a
        # local answer that would pass for a measurement)
        client = stack.enter_context(SplitClient(
            repo / sm.name / version, edges=[f"127.0.0.1:{proxy.port}"], codecs=CODECS,
            device_profile=device, device_slowdown=args.device_slowdown,
            track_device_speed=False, replan=False, background=False, fallback="error",
            deadline_s=_TIMEOUT_S, connect_timeout_s=_TIMEOUT_S))
        edge = client.edge_profile
        if edge is None:
            raise RuntimeError("the edge node reported no tail profile")
        ratio = device.cuts[-1].head_s / edge.tail_s[0]
        print(f"device full model {device.cuts[-1].head_s * 1e3:.1f} ms (1 thread), edge "
              f"tail at cut 0 {edge.tail_s[0] * 1e3:.1f} ms: device/edge = {ratio:.2f}"
              + ("" if ratio > 1 else " — the device is NOT slower than the edge here "
                 "(busy cores?), so splitting cannot pay off"), flush=True)
        est = estimate_s(device, edge, args)
        print(f"estimated measuring time for {len(links(args))} link(s): {est / 60:.1f} min",
              flush=True)
        if args.estimate_only:
            return {"estimate_s": est, "device_edge_ratio": ratio, "rows": []}
        rows = []
        for bw, rtt in links(args):
            print(f"link {bw} Mbit/s, RTT {rtt} ms:", flush=True)
            rows.append(run_link(client, x, proxy, device, edge, bw, rtt, args))
        confined = quota.group is not None
    return {"device_cpu_quota": args.device_cpu_quota if confined else None,
            "device_slowdown": args.device_slowdown,
            "estimate_s": est, "device_edge_ratio": ratio, "rows": rows,
            "device_full_ms": device.cuts[-1].head_s * 1e3, "edge_full_ms": edge.tail_s[0] * 1e3,
            "cuts": len(sm.cuts),
            # the profiles the plans came from (DeviceProfile / EdgeProfile .from_json): the
            # plans of every row can be recomputed from them and its device_speed_factor
            "device_profile": device.to_json(), "edge_profile": edge.to_json()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.planner_validation",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="96x96 input, 2 links, 3 sampled cuts")
    ap.add_argument("--model", choices=sorted(MODELS), default="mobilenet_v3_small",
                    help="torchvision model to split (default mobilenet_v3_small)")
    ap.add_argument("--estimate-only", action="store_true",
                    help="profile, plan and print the time estimate; measure nothing")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per configuration")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    slow = ap.add_mutually_exclusive_group()
    slow.add_argument("--device-slowdown", type=float, default=None, metavar="K",
                      help=f"emulate a device K times slower than this machine's core by time "
                           f"dilation (default {DEFAULT_SLOWDOWN:g})")
    slow.add_argument("--device-cpu-quota", type=float, default=0.0, metavar="CORES",
                      help="instead, confine the device thread to CORES cores with a cgroup "
                           "CPU quota (e.g. 0.1; noisier: see the module docstring)")
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: must be >= 1")
    if args.device_cpu_quota < 0:
        ap.error(f"--device-cpu-quota {args.device_cpu_quota:g}: must be >= 0")
    if args.device_slowdown is None:
        args.device_slowdown = 1.0 if args.device_cpu_quota > 0 else DEFAULT_SLOWDOWN
    elif not args.device_slowdown >= 1:
        ap.error(f"--device-slowdown {args.device_slowdown:g}: must be >= 1 (1 = full speed)")
    args.side = 96 if args.quick else 224
    args.cuts = 3 if args.quick else 10
    args.repeats = args.repeats or (3 if args.quick else 9)
    args.profile_repeats = 3 if args.quick else 15  # one slow spell must not set the profile
    args.probe_rounds = 3 if args.quick else 5
    return args


def report(args: argparse.Namespace, res: dict[str, Any], wall_s: float) -> bool:
    rows = res["rows"]
    summary = summarize(rows)
    print_table(rows, summary)
    targets = check_targets(summary)
    for name, t in targets.items():
        print(f"{'PASS' if t['pass'] else 'FAIL'}: {name} {t['value']:.3f} "
              f"(target {t['target']})")
    print(f"(the plans at the profile's own speed, not knowing the device's speed while "
          f"measuring: chosen/oracle median {summary['profile_speed_ratio_median']:.3f}, worst "
          f"{summary['profile_speed_ratio_worst']:.3f})")
    for w in summary["split_vs_baselines"]:
        what = "a split" if w["split"] else "a baseline itself (no split)"
        verdict = "beats" if w["beats_baselines"] else "does not beat"
        print(f"{w['bandwidth_mbps']:g} Mbit/s {w['rtt_ms']:g} ms: the choice is {what}; it "
              f"{verdict} the better of device-only and edge-only "
              f"({w['gain_vs_best_baseline']:.2f}x)")
    meta = {"cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "processor": platform.processor() or platform.platform(),
            "model": args.model, "quick": args.quick, "input": [1, 3, args.side, args.side],
            "edge_flags": EDGE_FLAGS,
            "codecs": CODECS, "repeats": args.repeats, "wall_s": round(wall_s, 1)}
    out = {"meta": meta, **{k: v for k, v in res.items() if k != "rows"}, "rows": rows,
           "summary": summary, "targets": targets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    png = args.out.with_suffix(".png")
    plot(rows, png, args.model)
    print(f"wrote {args.out} and {png} ({wall_s:.0f} s)")
    return all(t["pass"] for t in targets.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="planner-validation-") as tmp:
        res = run(args, Path(tmp))
    if args.estimate_only:
        return 0
    ok = report(args, res, time.perf_counter() - started)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
