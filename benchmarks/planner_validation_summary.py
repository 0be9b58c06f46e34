"""The planner validation's verdicts: rows of measured links -> baselines, targets, tables.

Pure parts of ``benchmarks.planner_validation`` (no torch, no network), so they can be tested
on hand-made rows. The two baselines are device-only and edge-only JPEG at quality 90 (the
frame as a phone app ships it). A split is a cut of the model strictly before the last: after
the first cut and after the image bundle's own preprocessing (its "image.*" cuts carry the
frame itself, permuted or normalized: edge-only in another layout, not a split).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from splitinfer.core.planner import Candidate, Plan
from splitinfer.core.profiles import DeviceProfile

EDGE_ONLY_CODEC = "jpeg"  # quality 90: what a phone app ships
SPLIT_CODEC = "int8+zstd"  # what a split sends today, shown next to what it would need to send
SPLIT_MARGIN = 0.95  # a split "wins" when it is 5 % faster than the better baseline
TARGET_RATIO_MEDIAN, TARGET_RATIO_WORST, TARGET_PRED_ERR = 1.05, 1.15, 0.15
TARGET_WORST_GAIN = 0.95  # the choice never more than 5 % slower than the better baseline
#: an image bundle's preprocessing cuts are named so (splitinfer.model.split_model.IMAGE_PREFIX;
#: not imported: that module needs torch)
PREPROCESSING_PREFIX = "image."


# ---- what a split would need (from the profiles) ------------------------------------------------

def bytes_needed(baseline_s: float, rest_s: float, bandwidth_bps: float,
                 margin: float = SPLIT_MARGIN) -> float:
    """The most request bytes a split may send and still finish in ``margin`` x ``baseline_s``
    when everything but its uplink takes ``rest_s``, on a link of ``bandwidth_bps``. At or
    below 0: it cannot, even sending nothing."""
    if not bandwidth_bps > 0:
        raise ValueError(f"bandwidth {bandwidth_bps!r} bit/s: expected > 0")
    return (margin * baseline_s - rest_s) * bandwidth_bps / 8


def _rest_s(c: Candidate) -> float:
    return c.breakdown.total_s - c.breakdown.uplink_s


def split_cuts(device: DeviceProfile) -> tuple[int, int]:
    """The first and the last cut id a split may take: after cut 0 and the preprocessing
    cuts, before the last cut (device-only). first > last when the model has none."""
    ids = [c.cut_id for c in device.cuts]
    pre = [c.cut_id for c in device.cuts if c.name.startswith(PREPROCESSING_PREFIX)]
    return max([ids[0], *pre]) + 1, ids[-1] - 1


def _closest(plan: Plan, device: DeviceProfile, splits: list[Candidate],
             baseline_s: float) -> dict[str, Any] | None:
    """The split cut where int8+zstd is the fewest times over its own byte budget."""
    best: dict[str, Any] | None = None
    for cut in device.cuts:
        now = next((k for k in cut.codecs if k.codec == SPLIT_CODEC), None)
        rests = [_rest_s(c) for c in splits if c.cut_id == cut.cut_id]
        if now is None or not rests:
            continue
        need = bytes_needed(baseline_s, min(rests), plan.link.bandwidth_bps)
        if need > 0 and (best is None or now.request_bytes / need < best["shrink_needed"]):
            best = {"cut": cut.cut_id, "cut_name": cut.name, "bytes_needed": need,
                    "bytes_now": now.request_bytes, "error_now": now.error,
                    "shrink_needed": now.request_bytes / need}
    return best


def split_needs(plan: Plan, device: DeviceProfile) -> dict[str, Any] | None:
    """For ``plan``'s link: the split cut with the lowest predicted time without its uplink
    (head, encode, RTT, edge, answer; the cheapest codec's overheads), the better predicted
    baseline, and the most bytes that cut may send to beat it by 5 % (``bytes_needed``), next
    to what int8+zstd sends there and the output error it causes (``CodecCost.error``); and
    ``closest``: the split cut where int8+zstd is the fewest times over its budget
    (``shrink_needed``: how many times smaller it would have to be; None when no cut can).
    ``device`` is the profile ``plan`` came from. None when the model has no split cut."""
    first = device.cuts[0].cut_id
    lo, hi = split_cuts(device)
    splits = [c for c in plan.alternatives if lo <= c.cut_id <= hi and c.codec is not None]
    if not splits:
        return None
    best = min(splits, key=lambda c: (_rest_s(c), c.cut_id))
    jpeg = next((c for c in plan.alternatives
                 if c.cut_id == first and c.codec == EDGE_ONLY_CODEC), None)
    if jpeg is None:
        raise ValueError(f"the plan has no edge-only {EDGE_ONLY_CODEC!r} (cut {first}); profile "
                         f"the image codecs at cut 0 of an image bundle")
    edge_s = jpeg.breakdown.total_s
    baseline_s = min(plan.device_only_s, edge_s)
    cut = next(c for c in device.cuts if c.cut_id == best.cut_id)
    now = next((k for k in cut.codecs if k.codec == SPLIT_CODEC), None)
    need = bytes_needed(baseline_s, _rest_s(best), plan.link.bandwidth_bps)
    return {"cut": best.cut_id, "cut_name": best.cut_name, "overheads_of_codec": best.codec,
            "rest_predicted_ms": _rest_s(best) * 1e3,
            "baseline": "device-only" if plan.device_only_s <= edge_s else "edge-only jpeg",
            "baseline_predicted_ms": baseline_s * 1e3,
            "link_bandwidth_mbps": plan.link.bandwidth_bps / 1e6,  # the one planned on
            "bytes_needed": need, "reachable": need > 0,
            "codec_now": SPLIT_CODEC, "bytes_now": None if now is None else now.request_bytes,
            "error_now": None if now is None else now.error,
            "agreement_now": None if now is None else now.agreement,
            "closest": _closest(plan, device, splits, baseline_s)}


# ---- rows -> summary and targets ----------------------------------------------------------------

def _split_row(r: dict[str, Any]) -> dict[str, Any]:
    """One link's verdicts: the choice and the best measured split against the baselines."""
    baseline = min(r["device_only_ms"], r["edge_only_ms"])
    every = min(baseline, r.get("edge_only_best_ms", baseline))
    lo, hi = r.get("split_cuts") or (1, max(c["cut_id"] for c in r["cuts"]) - 1)
    split = r.get("best_split")
    out = {"bandwidth_mbps": r["bandwidth_mbps"], "rtt_ms": r["rtt_ms"],
           "split": lo <= r["chosen_cut"] <= hi,
           "beats_baselines": r["chosen_ms"] < baseline,
           "gain_vs_best_baseline": baseline / r["chosen_ms"],
           "best_split": None}
    if split is not None:
        out["best_split"] = {**split, "gain": baseline / split["measured_ms"],
                             "gain_vs_every_edge_only": every / split["measured_ms"],
                             "beats_baselines": split["measured_ms"] < baseline}
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [r["chosen_ms"] / r["oracle_ms"] for r in rows]
    errors = [abs(r["predicted_ms"] - r["chosen_ms"]) / r["chosen_ms"] for r in rows]
    wins = [_split_row(r) for r in rows]
    split_wins = [{"bandwidth_mbps": w["bandwidth_mbps"], "rtt_ms": w["rtt_ms"],
                   **w["best_split"]} for w in wins
                  if w["best_split"] is not None and w["best_split"]["beats_baselines"]]
    # for reference, not a target: the plans from the profile as measured at the start, before
    # the device's speed in each link's window was known
    at_profile = [r["plan_at_profile_speed"]["measured_ms"] / r["oracle_ms"] for r in rows]
    return {"ratio_median": statistics.median(ratios), "ratio_worst": max(ratios),
            "pred_err_median": statistics.median(errors), "pred_err_worst": max(errors),
            "split_vs_baselines": wins, "split_wins": split_wins,
            "split_needs": [{"bandwidth_mbps": r["bandwidth_mbps"], "rtt_ms": r["rtt_ms"],
                             **(r.get("split_needs") or {})} for r in rows],
            "profile_speed_ratio_median": statistics.median(at_profile),
            "profile_speed_ratio_worst": max(at_profile)}


def check_targets(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's value, its bound as text ("<= 1.05") and whether it passes."""
    gains = [w["gain_vs_best_baseline"] for w in s["split_vs_baselines"]]
    checks = (("chosen/oracle median", s["ratio_median"], "<=", TARGET_RATIO_MEDIAN),
              ("chosen/oracle worst", s["ratio_worst"], "<=", TARGET_RATIO_WORST),
              ("|pred-meas|/meas median", s["pred_err_median"], "<=", TARGET_PRED_ERR),
              ("chosen vs better of device-only and edge-only JPEG, worst (baseline/chosen)",
               min(gains), ">=", TARGET_WORST_GAIN))
    return {name: {"value": value, "target": f"{op} {bound:g}",
                   "pass": value <= bound if op == "<=" else value >= bound}
            for name, value, op, bound in checks}


# ---- printing -----------------------------------------------------------------------------------

def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"\n{'link':>16} {'fit':>16} {'chosen':>13} {'chosen':>9} {'pred':>9} {'oracle':>13} "
          f"{'dev-only':>9} {'jpeg-only':>9} {'edge best':>18} {'gain':>6}")
    print(f"{'Mbit/s, ms':>16} {'Mbit/s, ms':>16} {'cut codec':>13} {'ms':>9} {'ms':>9} "
          f"{'cut: ms':>13} {'ms':>9} {'ms':>9} {'codec: ms':>18} {'x':>6}")
    for r, w in zip(rows, summary["split_vs_baselines"]):
        fit = r["link_fit"]
        print(f"{r['bandwidth_mbps']:>8g}, {r['rtt_ms']:>5g} "
              f"{fit['bandwidth_mbps']:>8.1f}, {fit['rtt_ms']:>5.1f} "
              f"{r['chosen_cut']:>3d} {str(r['chosen_codec']):>9s} {r['chosen_ms']:>9.1f} "
              f"{r['predicted_ms']:>9.1f} {r['oracle_cut']:>3d}: {r['oracle_ms']:>8.1f} "
              f"{r['device_only_ms']:>9.1f} {r['edge_only_ms']:>9.1f} "
              f"{str(r['edge_only_best_codec']):>9s}: {r['edge_only_best_ms']:>7.1f} "
              f"{w['gain_vs_best_baseline']:>6.2f}")
    print("(jpeg-only: edge-only, the frame as JPEG q90; edge best: the fastest edge-only codec "
          "measured; gain: the better of device-only and jpeg-only over the chosen, > 1 means "
          "faster)")


def print_splits(summary: dict[str, Any]) -> None:
    """Where a split beats both baselines (measured), and what it would need everywhere."""
    wins = summary["split_wins"]
    for w in wins:
        print(f"{w['bandwidth_mbps']:g} Mbit/s {w['rtt_ms']:g} ms: split cut {w['cut']} "
              f"({w['codec']}) {w['measured_ms']:.1f} ms beats the better baseline "
              f"{w['gain']:.2f}x ({w['gain_vs_every_edge_only']:.2f}x against every edge-only "
              f"codec measured)")
    if not wins:
        print("no link: no split measured beats both device-only and edge-only JPEG")
    print_needs(summary["split_needs"])


def print_needs(needs: list[dict[str, Any]]) -> None:
    print("what a split would need, from the profiles (5 % faster than the better baseline):")
    for n in needs:
        link = f"{n['bandwidth_mbps']:g} Mbit/s {n['rtt_ms']:g} ms"
        if "cut" not in n:
            print(f"  {link}: the model has no split cut")
            continue
        now = (f"{n['codec_now']} sends {n['bytes_now']:,} B (output error "
               f"{n['error_now']:.3g})" if n["bytes_now"] is not None
               else f"{n['codec_now']} not profiled there")
        over_ms = -n["bytes_needed"] * 8e3 / (n["link_bandwidth_mbps"] * 1e6)
        budget = (f"may send <= {n['bytes_needed']:,.0f} B" if n["reachable"] else
                  f"cannot win even sending nothing ({over_ms:.1f} ms over)")
        print(f"  {link}: cut {n['cut']} {n['cut_name']} takes {n['rest_predicted_ms']:.1f} ms "
              f"without uplink vs {n['baseline']} {n['baseline_predicted_ms']:.1f} ms: {budget}; "
              f"{now}")
        c = n["closest"]
        if c is not None and c["cut"] != n["cut"]:
            print(f"    closest: cut {c['cut']} {c['cut_name']} may send <= "
                  f"{c['bytes_needed']:,.0f} B, {n['codec_now']} sends {c['bytes_now']:,} B "
                  f"({c['shrink_needed']:.2f}x its budget; output error {c['error_now']:.3g})")


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['bandwidth_mbps']:g} Mbit/s\n{r['rtt_ms']:g} ms" for r in rows]
    x = np.arange(len(rows))
    series = (("chosen_ms", "planner's choice"), ("oracle_ms", "oracle (best measured)"),
              ("device_only_ms", "device-only"), ("edge_only_ms", "edge-only JPEG q90"))
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
    ax.set_title(f"{title}: planner's choice vs alternatives, per link", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
