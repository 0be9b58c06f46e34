"""Planner validation: does the planner's cut beat the alternatives when measured end to end?

    python -m benchmarks.planner_validation [--quick] [--estimate-only] [--repeats N] [--out PATH]
        [--device-slowdown K | --device-cpu-quota CORES] [--model NAME] [--strict]

One run, side by side, on this machine:

- Model: torchvision MobileNetV3-Small by default (--model mobilenet_v2 / resnet18; random
  weights, seed 0), exported as a bundle with an ImageNet image input
  (``partition(..., image_input=IMAGENET)``) into a temporary model repository: the bundle
  takes a uint8 1xHxWx3 frame and normalizes it as the first step of its graph, so cut 0 (edge-
  only) carries the frame itself, as a camera app would send it. MobileNetV3-Small is built for
  phones, the devices this product is for; its first block shrinks the input to ~30 KB
  (int8+zstd) after ~10 % of the compute, which is what a split has to beat JPEG with.
- Inputs: real frames, never noise: the 18 frames of ``splitinfer.tools.frames`` (a 3x3 grid
  of overlapping 224-pixel square crops of each of scikit-learn's two sample photos, china.jpg
  and flower.jpg; --quick: the same crops resized to 96x96 with Pillow), uint8 NHWC, batch 1.
  Every configuration's requests cycle through them in the same order (frame 0 for its warm-up,
  then 1, 2, ...), so each sees the same frames; the device profile is measured on frame 0.
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
- Measured per link: the two baselines, device-only and edge-only JPEG (the frame as codec
  "jpeg", quality 90, what a phone app ships), the edge-only codec the planner ranks best when
  it is another (e.g. jpeg-q75, its own row), an even sample of split cuts (--quick: 3), each with
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
chosen cut; on every link the choice at most 5 % slower than the better of device-only and
edge-only JPEG. The "oracle" only knows the configurations measured, not every cut.
Reported beside them: the links where a measured split (a cut before the last, past cut 0 and
the bundle's "image.*" preprocessing cuts, which carry the frame itself) beats both baselines,
and by how much; and per link, from the profiles, what a split
would need (``split_needs``): the most request bytes the split cut with the lowest predicted
time without its uplink may send to be 5 % faster than the better baseline, next to what
int8+zstd sends there and the output error it causes.
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

from benchmarks.planner_validation_summary import (  # noqa: E402
    EDGE_ONLY_CODEC,
    check_targets,
    plot,
    print_needs,
    print_splits,
    print_table,
    split_cuts,
    split_needs,
    summarize,
)
from device_client import SplitClient  # noqa: E402
from device_client.link_probe import sizes_for  # noqa: E402
from splitinfer.codec import IMAGE_CODECS  # noqa: E402
from splitinfer.core.link import Link  # noqa: E402
from splitinfer.core.planner import Candidate, Constraints, Plan, choose  # noqa: E402
from splitinfer.core.profiles import DeviceProfile, EdgeProfile  # noqa: E402
from splitinfer.measure.profiler import profile_device  # noqa: E402
from splitinfer.model.bundle import load_bundle, save_bundle  # noqa: E402
from splitinfer.model.preprocess import IMAGENET  # noqa: E402
from splitinfer.model.split_model import partition  # noqa: E402
from splitinfer.tools import frames  # noqa: E402
from splitinfer.tools.cpuquota import DeviceQuota  # noqa: E402
from splitinfer.tools.edgeproc import start_edge  # noqa: E402
from splitinfer.tools.netem import LinkEmulator, LinkShape  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEFAULT_OUT = RESULTS / "planner_validation.json"
BANDWIDTHS_MBPS = (1, 10, 100, 1000)
RTTS_MS = (5, 30, 100)
QUICK_LINKS = ((10, 30), (1000, 5))
# the image codecs apply at cut 0 only (the uint8 frame); the profile measures them there.
# JPEG at q90 only (and lossless PNG), the client's default: lower qualities would win on bytes
# alone at a larger error than every split here, and the baseline is what a phone app ships
#: ecq (issue 14's entropy-coded quantization) at 18 and 24 dB: a split may send them only at no
#: more output error than the JPEG it competes with (``fidelity_budget``)
CODECS = ("fp16", "int8+zstd", "fp32", "jpeg", "png", "ecq-18db", "ecq")
# one torch thread: on this 2-core machine a 2-thread OpenMP team in the edge's worker thread
# ran MobileNetV3-Small 3x slower than one thread (two teams contend once the main thread has
# used one), and the edge's background tail profile came out 2x its serving time
EDGE_FLAGS = ("--torch-threads", "1", "--workers", "1", "--max-batch-size", "1",
              "--profile-tails", "true", "--log-level", "WARNING")
DEFAULT_SLOWDOWN = 15.0  # the emulated device's core against this machine's
# device speeds (x its profile) the choice is planned for before measuring, 0.5x to ~3x
SPEED_GRID = tuple(0.5 * 1.04 ** i for i in range(46))
CUT_BUDGET_S = 15.0  # seconds one configuration may take (warm-up + repeats) before N drops
_TIMEOUT_S = 300.0   # a 1.6 MB request at 1 Mbit/s takes ~13 s; leave room


# ---- setup --------------------------------------------------------------------------------------

MODELS = {"mobilenet_v3_small": "MobileNetV3-Small", "mobilenet_v2": "MobileNetV2",
          "resnet18": "ResNet-18"}


Config = tuple[int, str | None]  # (cut, codec); codec None: device-only


def export_model(repo: Path, name: str, side: int) -> tuple[Any, str]:
    """The model (random weights, seed 0) with an ImageNet image input as a bundle in ``repo``
    (it takes a uint8 NHWC frame and normalizes it itself, so cut 0 carries the frame); the
    SplitModel loaded back, as the edge has it, and its version."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    example = torch.from_numpy(frames.batch(1, side))
    save_bundle(partition(model, (example,), name=name, image_input=IMAGENET), repo / name / "1")
    return load_bundle(repo / name / "1"), "1"


def frame_inputs(side: int) -> list[torch.Tensor]:
    """The 18 real frames at ``side`` pixels, each a 1 x side x side x 3 uint8 tensor."""
    n = len(frames.sample_frames(side))
    return [torch.from_numpy(frames.batch(1, side, start=i)) for i in range(n)]


class FrameCycle:
    """The input of each configuration's next request: its own walk through the frames, so
    every configuration sees the same frames in the same order (JPEG sizes differ by frame)."""

    def __init__(self, inputs: list[torch.Tensor]) -> None:
        if not inputs:
            raise ValueError("FrameCycle: no frames given; expected at least one input")
        self.inputs = inputs
        self.sent: dict[Config, int] = {}

    def __call__(self, config: Config) -> torch.Tensor:
        i = self.sent.get(config, 0)
        self.sent[config] = i + 1
        return self.inputs[i % len(self.inputs)]


def sample_cuts(last: int, k: int, first: int = 1) -> list[int]:
    """``k`` evenly spaced cuts from ``first`` to ``last - 1`` (0 and ``last`` are measured
    anyway; ``first``: past an image bundle's preprocessing, ``split_cuts``)."""
    if last - first < 1:
        return []
    n = min(k, last - first)
    return sorted({int(round(c)) for c in np.linspace(first, last - 1, n)})


@dataclass(frozen=True)
class Timing:
    """Seconds of one configuration: every repeat after the warm-up, and their median."""

    cut_id: int
    codec: str | None
    samples: tuple[float, ...]
    request_bytes: int  # the median over its timed requests (a JPEG's size depends on the frame)
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


def edge_only_configs(plan: Plan) -> list[Config]:
    """Edge-only JPEG (quality 90, the baseline) and, when the planner ranks another codec at
    cut 0 higher (jpeg-q75, png, ...), that one too."""
    first = min(c.cut_id for c in plan.alternatives)
    ranked = [c.codec for c in plan.alternatives if c.cut_id == first and c.codec is not None]
    if EDGE_ONLY_CODEC not in ranked:
        raise RuntimeError(f"the device profile has no codec {EDGE_ONLY_CODEC!r} at cut {first} "
                           f"(it has {ranked}): the bundle needs an image input (uint8 frame at "
                           f"cut 0) and the profile the image codecs {IMAGE_CODECS}")
    return list(dict.fromkeys([(first, EDGE_ONLY_CODEC), (first, ranked[0])]))


def fidelity_budget(device: DeviceProfile) -> Constraints:
    """Every plan's fidelity budget: no codec whose measured output error (the profile's, on
    its frame) is above what the frame sent as JPEG q90 gives, so that a split that wins here
    wins at no worse answers than the baseline it beats. No JPEG in the profile: no budget."""
    jpeg = next((k for k in device.cuts[0].codecs if k.codec == EDGE_ONLY_CODEC), None)
    return Constraints() if jpeg is None else Constraints(max_codec_error=jpeg.error)


def plan_for(device: DeviceProfile, edge: EdgeProfile, link: Link) -> Plan:
    """The planner's choice for latency under ``fidelity_budget``."""
    return choose(device, edge, link, objective="latency", constraints=fidelity_budget(device))


def configs_for(device: DeviceProfile, edge: EdgeProfile, link: Link, k: int
                ) -> tuple[Plan, list[Config]]:
    """The plan on the profile as measured, and what to measure on ``link``: device-only,
    edge-only JPEG (and the edge-only codec the plan ranks best, if another), ``k`` evenly
    spaced cuts, each with the codec that plan ranks best for it, plus the planner's choice for
    every device speed in ``SPEED_GRID`` (so the choice for the speed the device turns out to
    have while measuring is among the configurations measured, side by side with the rest)."""
    plan = plan_for(device, edge, link)
    last = device.cuts[-1].cut_id
    cuts = sorted({last, *sample_cuts(last, k, split_cuts(device)[0])})
    configs = {(c, None if c == last else best_codec(plan, c)) for c in cuts}
    configs.update(edge_only_configs(plan))
    for f in SPEED_GRID:
        p = plan_for(device.scaled(f), edge, link)
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
    for c in configs:  # one warm-up each
        run(c)
    samples: dict[Config, list[float]] = {c: [] for c in configs}
    nbytes: dict[Config, list[int]] = {c: [] for c in configs}
    device: dict[Config, list[float]] = {c: [] for c in configs}
    edge: dict[Config, list[float]] = {c: [] for c in configs}
    for r in range(max(wanted.values())):
        for c in configs[r % len(configs):] + configs[:r % len(configs)]:
            if len(samples[c]) < wanted[c]:
                s = run(c)
                samples[c].append(s.total_s)
                nbytes[c].append(s.request_bytes)
                device[c].append(s.device_s)
                if s.edge_compute_s is not None:
                    edge[c].append(s.edge_compute_s)
    return {c: Timing(c[0], c[1], tuple(samples[c]), int(statistics.median(nbytes[c])),
                      tuple(device[c]), tuple(edge[c])) for c in configs}


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


def remeasure(chosen: Config, timings: dict[Config, Timing], last: int,
              also: tuple[Config, ...] = ()) -> list[Config]:
    """A choice not measured yet (and ``also``: the edge-only codec the plan now ranks best,
    if new), and what to measure again beside it: the fastest so far and both baselines (every
    edge-only codec measured), each once."""
    best = min(timings, key=lambda c: timings[c].median_s)
    return list(dict.fromkeys([chosen, *also, best,
                               *(c for c in timings if c[0] in (0, last))]))


def best_split(timings: dict[Config, Timing], cuts: tuple[int, int]
               ) -> tuple[Config, Timing] | None:
    """The fastest configuration measured at a split cut (``cuts``: the first and last one,
    ``split_cuts``: past the preprocessing, before device-only)."""
    splits = [(c, t) for c, t in timings.items() if cuts[0] <= c[0] <= cuts[1]]
    return min(splits, key=lambda ct: ct[1].median_s) if splits else None


def _measured(plan: Plan, config: Config, t: Timing) -> dict[str, Any]:
    return {"cut": config[0], "codec": config[1], "measured_ms": t.median_s * 1e3,
            "predicted_ms": predicted_s(plan, config) * 1e3, "request_bytes": t.request_bytes}


def baseline_fields(plan: Plan, timings: dict[Config, Timing], last: int,
                    cuts: tuple[int, int]) -> dict[str, Any]:
    """A row's baselines (device-only; edge-only JPEG q90; the edge-only codec the plan ranks
    best, when another; the fastest edge-only measured) and its fastest split measured."""
    jpeg = timings[(0, EDGE_ONLY_CODEC)]
    ranked = edge_only_configs(plan)[-1]
    edge_best = min(((c, t) for c, t in timings.items() if c[0] == 0),
                    key=lambda ct: ct[1].median_s)
    split = best_split(timings, cuts)
    return {"device_only_ms": timings[(last, None)].median_s * 1e3,
            "edge_only_ms": jpeg.median_s * 1e3, "edge_only_codec": EDGE_ONLY_CODEC,
            "edge_only_request_bytes": jpeg.request_bytes,
            "edge_only_ranked": (None if ranked[1] == EDGE_ONLY_CODEC
                                 else _measured(plan, ranked, timings[ranked])),
            "edge_only_best_ms": edge_best[1].median_s * 1e3,
            "edge_only_best_codec": edge_best[0][1],
            "split_cuts": list(cuts),
            "best_split": None if split is None else _measured(plan, *split)}


def print_link(plan: Plan, timings: dict[Config, Timing], speed: float,
               edge_speed: float) -> None:
    print(f"  device ran {speed:.2f}x its profile while measuring, the edge's tails "
          f"{edge_speed:.2f}x", flush=True)
    for c, t in timings.items():
        print(f"  cut {c[0]:3d} {str(c[1]):10s} predicted {predicted_s(plan, c) * 1e3:9.1f} ms  "
              f"measured {t.median_s * 1e3:9.1f} ms (device "
              f"{candidate(plan, c).breakdown.device_s * 1e3:6.1f} / "
              f"{t.device_median_s * 1e3:6.1f} ms, {t.request_bytes} B)", flush=True)


def run_link(client: SplitClient, inputs: list[torch.Tensor], proxy: LinkEmulator,
             device: DeviceProfile, edge: EdgeProfile, bw_mbps: float, rtt_ms: float,
             args: argparse.Namespace) -> dict[str, Any]:
    nominal = Link(rtt_s=rtt_ms / 1e3, bandwidth_bps=bw_mbps * 1e6)
    proxy.set_shape(LinkShape(rate_bps=nominal.bandwidth_bps, delay_s=nominal.rtt_s / 2))
    measured, samples = client.measure_link(args.probe_rounds,
                                            probe_sizes(nominal.bandwidth_bps))
    last = len(client.manifest.cuts) - 1
    plan0, configs = configs_for(device, edge, measured, args.cuts)

    def measure(cfgs: list[Config], plan: Plan) -> dict[Config, Timing]:
        cycle = FrameCycle(inputs)  # every configuration measured here sees the same frames
        return measure_interleaved(lambda c: run_config(client, cycle(c), c), cfgs,
                                   {c: repeats_for(predicted_s(plan, c), args.repeats)
                                    for c in cfgs})

    timings = measure(configs, plan0)
    # this shared machine's speed swings 1.5x in spells of seconds to minutes (the same
    # whole-model run: 7.5 ms, then 11.5 ms for a minute), which moves the emulated device with
    # it; the planner plans for the device's speed in the minutes the oracle was measured in,
    # taken from the device's own steps in them, as a device would time its own work
    speed, edge_speed = window_speed(timings, plan0), edge_window_speed(timings, edge)
    scaled = device.scaled(min(max(speed, SPEED_GRID[0]), SPEED_GRID[-1]))
    edge_now = edge.scaled(edge_speed)
    plan = plan_for(scaled, edge_now, measured)
    plan_nominal = plan_for(scaled, edge_now, nominal)
    chosen_config = (plan.cut_id, plan.codec)
    missing = [c for c in (chosen_config, *edge_only_configs(plan)) if c not in timings]
    if missing:  # between two grid speeds: measure it beside the best and the baselines
        timings.update(measure(remeasure(missing[0], timings, last, tuple(missing[1:])), plan))
    print_link(plan, timings, speed, edge_speed)
    oracle = min(timings.values(), key=lambda t: t.median_s)
    nominal_config = (plan_nominal.cut_id, plan_nominal.codec)
    return {
        "bandwidth_mbps": bw_mbps, "rtt_ms": rtt_ms,
        "chosen_cut": plan.cut_id, "chosen_cut_name": plan.cut_name, "chosen_codec": plan.codec,
        "chosen_ms": timings[chosen_config].median_s * 1e3,
        "predicted_ms": plan.predicted_s * 1e3,
        "oracle_cut": oracle.cut_id, "oracle_codec": oracle.codec,
        "oracle_ms": oracle.median_s * 1e3,
        **baseline_fields(plan, timings, last, split_cuts(device)),
        "split_needs": split_needs(plan, scaled),
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


# ---- driver -------------------------------------------------------------------------------------

def links(args: argparse.Namespace) -> list[tuple[int, int]]:
    return list(QUICK_LINKS) if args.quick else [(b, r) for b in BANDWIDTHS_MBPS for r in RTTS_MS]


def needs_at_profile(device: DeviceProfile, edge: EdgeProfile, args: argparse.Namespace
                     ) -> list[dict[str, Any]]:
    """``split_needs`` per nominal link from the profiles as measured (no measurement: what
    --estimate-only can tell)."""
    return [{"bandwidth_mbps": bw, "rtt_ms": rtt,
             **(split_needs(plan_for(device, edge, Link(rtt / 1e3, bw * 1e6)), device) or {})}
            for bw, rtt in links(args)]


def run(args: argparse.Namespace, repo: Path) -> dict[str, Any]:
    sm, version = export_model(repo, args.model, args.side)
    inputs = frame_inputs(args.side)
    with contextlib.ExitStack() as stack:
        # the edge and the link emulator are started before the device quota, so neither is
        # confined by it (threads inherit their starter's cgroup): they are not the device
        node = start_edge(repo, *EDGE_FLAGS)
        stack.callback(node.stop)
        proxy = stack.enter_context(LinkEmulator(("127.0.0.1", node.port)))
        quota = stack.enter_context(DeviceQuota(args.device_cpu_quota))
        print(f"profiling the device (1 thread, slowdown {args.device_slowdown:g}, "
              f"{len(sm.cuts)} cuts, codecs {', '.join(CODECS)})…", flush=True)
        device = profile_device(sm, (inputs[0],), codecs=CODECS, repeats=args.profile_repeats,
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
        needs = needs_at_profile(device, edge, args)
        print_needs(needs)
        if args.estimate_only:
            return {"estimate_s": est, "device_edge_ratio": ratio, "rows": [],
                    "split_needs_at_profile": needs}
        rows = []
        for bw, rtt in links(args):
            print(f"link {bw} Mbit/s, RTT {rtt} ms:", flush=True)
            rows.append(run_link(client, inputs, proxy, device, edge, bw, rtt, args))
        confined = quota.group is not None
    return {"device_cpu_quota": args.device_cpu_quota if confined else None,
            "device_slowdown": args.device_slowdown,
            "estimate_s": est, "device_edge_ratio": ratio, "rows": rows,
            "split_needs_at_profile": needs,
            "device_full_ms": device.cuts[-1].head_s * 1e3, "edge_full_ms": edge.tail_s[0] * 1e3,
            "cuts": len(sm.cuts),
            # the profiles the plans came from (DeviceProfile / EdgeProfile .from_json): the
            # plans of every row can be recomputed from them and its device_speed_factor
            "device_profile": device.to_json(), "edge_profile": edge.to_json(),
            "max_codec_error": fidelity_budget(device).max_codec_error}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.planner_validation",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="96x96 frames, 2 links, 3 sampled cuts")
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
              f"{verdict} the better of device-only and edge-only JPEG "
              f"({w['gain_vs_best_baseline']:.2f}x)")
    print_splits(summary)
    meta = {"cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "processor": platform.processor() or platform.platform(),
            "model": args.model, "quick": args.quick, "input": [1, args.side, args.side, 3],
            "input_dtype": "uint8", "image_input": "imagenet",
            "frames": f"splitinfer.tools.frames.batch(1, {args.side}, start=i), i = 0..17",
            "edge_flags": EDGE_FLAGS,
            "codecs": CODECS, "repeats": args.repeats, "wall_s": round(wall_s, 1)}
    out = {"meta": meta, **{k: v for k, v in res.items() if k != "rows"}, "rows": rows,
           "summary": summary, "targets": targets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    png = args.out.with_suffix(".png")
    plot(rows, png, MODELS[args.model])
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
