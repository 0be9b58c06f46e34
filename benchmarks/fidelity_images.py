"""Fidelity on real frames: bytes and output distortion of the frame sent as JPEG/PNG (cut 0,
edge-only) against fp16, int8+zstd, int4+zstd, int2+zstd and ecq (12, 18, 24, 30 dB) at early
cuts, the honest baseline of issue 13 and the rate-fidelity table of issue 14 (``beat_jpeg``:
its target, the fewest bytes an early cut sends against JPEG q90 at no worse fidelity).

The images section of ``python -m benchmarks.fidelity`` (see its docstring for the run).

(i) torchvision MobileNetV3-Small and ResNet-18, RANDOM weights (seed 0, eval): nothing may
    download weights, so only the output distortion is meaningful, not top-1 (reported with
    ``distinct_top1``: how many classes the unsplit model predicts over the frames). Each is
    partitioned with ``image_input=IMAGENET``: its input is the uint8 NHWC frame and the
    ImageNet normalization is the first part of the graph, so cut 0 carries the frame as a
    camera gives it. Frames: ``splitinfer.tools.frames.sample_frames(224)`` (18 crops of
    scikit-learn's two sample photos). Reference: the unsplit model on the same frames.
(ii) a CNN trained here on scikit-learn digits as frames: 8x8 (0..16) -> uint8 (x 255/16,
    rounded) -> 32x32 with Pillow's bilinear resize -> the grey value in 3 channels, ImageNet
    normalization part of the model (as in (i)); stratified 70/30 split, seed 0. Accuracy is
    real: top-1 test accuracy of split inference, and its change against the unsplit model.

Rows per model: cut 0 with ``raw`` (the bare frame: the lossless control) and every codec of
``splitinfer.codec.IMAGE_CODECS``; then ``TENSOR_CODECS`` at ``n_cuts`` early cuts (a float
tensor crosses, the head runs at most ``EARLY_FLOPS`` of the model's FLOPs): the normalized
frame (the last cut of the preprocessing, what a float-input model would be sent), then cuts
spread evenly over the rest (see ``early_cuts``). Each sample is encoded on its own (one
device request); KB are 1000 bytes of payload and codec parameters.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

import splitinfer
from benchmarks.fidelity import fit_classifier, roundtrip, spread, usable_cuts
from benchmarks.progress import Steps
from splitinfer.codec import IMAGE_CODECS
from splitinfer.core.compare import cosine, relative_error, top1
from splitinfer.core.errors import SplitInferError
from splitinfer.core.spec import DYNAMIC

FRAME_CODECS = ("raw", *IMAGE_CODECS)  # at cut 0; raw: the bare frame, the lossless control
#: at the early cuts: fp16, int8 (the default), the opt-in sub-byte codecs, and ecq at four
#: signal-to-noise ratios (its rate-fidelity curve)
TENSOR_CODECS = ("fp16", "int8+zstd", "int4+zstd", "int2+zstd", "ecq-12db", "ecq-18db", "ecq",
                 "ecq-30db")
#: the trained bottleneck on the trained digits model (``splitinfer.model.bottleneck``): where,
#: how narrow, how trained (distilled on the training frames, no labels; the tail fine-tuned;
#: ecq's noise at snr_db while training), and the codecs its narrow tensor is sent with
BOTTLENECK = {"cut": "features.2", "channels": (2, 4), "epochs": 30, "snr_db": 18.0,
              "train_tail": True}
BOTTLENECK_CODECS = ("int8+zstd", "ecq-12db", "ecq-18db", "ecq")
#: issue 14's baseline and target: an early cut sends at most BEAT_RATIO of JPEG q90's bytes at
#: no more output error (no less accuracy) than JPEG q90 gives
BASELINE, BEAT_RATIO = "jpeg", 0.5
#: "early": the head runs at most this fraction of the model's FLOPs
EARLY_FLOPS = 0.25
DIGITS_SIDE = 32
_FLOOR = 1e-7  # where a log axis draws an error of exactly 0
FRAME_SOURCE = ("splitinfer.tools.frames.sample_frames(224): crops of scikit-learn's sample "
                "photos china.jpg and flower.jpg")
DIGITS_SOURCE = (f"scikit-learn digits 8x8 (0..16) -> uint8 (x 255/16) -> {DIGITS_SIDE}x"
                 f"{DIGITS_SIDE} Pillow bilinear -> grey in 3 channels; stratified 70/30, seed 0")


# -- pure figures -------------------------------------------------------------------------------
def frame_figures(ref: Any, out: Any, sizes: Sequence[float]) -> dict[str, float]:
    """Per-row figures from per-sample outputs and wire bytes: KB per frame (median, q25,
    q75), relative L2 error of the output (median, p95), cosine (mean, min), top-1 agreement."""
    if len(sizes) == 0:
        raise ValueError("no wire sizes: expected one byte count per sample")
    kb = np.asarray(sizes, dtype=np.float64) / 1000.0
    err, cos = relative_error(ref, out), cosine(ref, out)
    if len(err) != len(kb):
        raise ValueError(f"{len(err)} outputs but {len(kb)} wire sizes: expected one per sample")
    q25, q50, q75 = np.percentile(kb, (25, 50, 75))
    return {"kb_median": round(float(q50), 3), "kb_q25": round(float(q25), 3),
            "kb_q75": round(float(q75), 3),
            "relerr_median": float(np.median(err)), "relerr_p95": float(np.percentile(err, 95)),
            "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "top1_agree_pct": 100.0 * float((top1(ref) == top1(out)).mean())}


def accuracy_figures(ref: Any, out: Any, y: Any) -> dict[str, float]:
    """Top-1 accuracy of ``out`` and of ``ref`` against labels ``y``, in percent; the
    difference in points; agreement of the two predictions."""
    labels = np.asarray(y).reshape(-1)
    pred, base = top1(out), top1(ref)
    if len(pred) != len(labels):
        raise ValueError(f"{len(pred)} outputs but {len(labels)} labels: expected one per sample")
    acc, ref_acc = 100.0 * float((pred == labels).mean()), 100.0 * float((base == labels).mean())
    return {"acc_pct": acc, "acc_fp32_pct": ref_acc, "delta_pts": acc - ref_acc,
            "agree_pct": 100.0 * float((pred == base).mean())}


def beat_jpeg(rows: Sequence[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """Issue 14's figure for one model: among the split rows (early cuts) whose median output
    error is no larger than the frame sent as JPEG q90 gives (on a trained model: whose accuracy
    is no lower), the fewest KB per sample as a fraction of JPEG's, with the cut and codec;
    value None when no split row keeps that fidelity. None when JPEG q90 was not measured."""
    mine = [r for r in rows if r["model"] == model and "error" not in r]
    base = next((r for r in mine if r["cut"] == 0 and r["codec"] == BASELINE), None)
    if base is None or not base["kb_median"]:
        return None
    acc = "acc_pct" in base

    def keeps(r: dict[str, Any]) -> bool:
        return bool(r["acc_pct"] >= base["acc_pct"] if acc
                    else r["relerr_median"] <= base["relerr_median"])

    best = min((r for r in mine if r["cut"] != 0 and keeps(r)), key=lambda r: r["kb_median"],
               default=None)
    fid = "acc_pct" if acc else "relerr_median"
    ratio = round(best["kb_median"] / base["kb_median"], 4) if best else None
    detail = (f"{best['codec']} at cut {best['cut']} {best['cut_name']}: {best['kb_median']:.2f} "
              f"KB vs {base['kb_median']:.2f}, {fid} {best[fid]:.4g} vs {base[fid]:.4g}"
              if best else f"no early cut keeps JPEG q90's {fid} {base[fid]:.4g}")
    return {"value": ratio, "target": f"<= {BEAT_RATIO}", "pass": bool(ratio is not None
            and ratio <= BEAT_RATIO), "detail": detail,
            "codec": best["codec"] if best else None, "cut": best["cut"] if best else None}


# -- running a (cut, codec) over samples -----------------------------------------------------------
def early_cuts(sm: Any, inputs: Sequence[torch.Tensor], n: int,
               max_flops: float = EARLY_FLOPS) -> tuple[list[Any], dict[int, str]]:
    """(up to ``n`` early cuts, {cut id: why not} for those whose tail fails on contiguous
    tensors). Early: a float tensor crosses and the head runs at most ``max_flops`` of the
    model. The preprocessing's cuts carry the frame's values again (one tensor of as many
    elements): only the last (the normalized frame, what a float-input model is sent) is kept,
    then ``n - 1`` cuts spread evenly over the rest, first and last included."""
    per_frame = numel_per_sample(sm.cuts[0].tensors[0].shape)
    early = [c for c in sm.cuts[1:] if c.head_flops_fraction <= max_flops
             and any(t.dtype.startswith(("float", "bfloat")) for t in c.tensors)
             and all(t.shape and t.shape[0] == DYNAMIC for t in c.tensors)]
    frame = [c for c in early
             if len(c.tensors) == 1 and numel_per_sample(c.tensors[0].shape) == per_frame]
    rest = [c for c in early if c not in frame]
    picks = (frame[-1:] + spread(rest, n - len(frame[-1:])))[:max(n, 0)] if n > 0 else []
    return usable_cuts(sm, picks, inputs)


def numel_per_sample(shape: Sequence[int]) -> int:
    """Elements per sample of a spec shape (dim 0 is the batch)."""
    return int(np.prod([abs(int(d)) for d in shape[1:]]))


def run_codec(sm: Any, cut: Any, crossing: Sequence[torch.Tensor], codec: str
              ) -> tuple[Any, list[int]] | str:
    """(tail output, wire bytes per sample) with ``cut``'s tensors through ``codec``, or the
    error text when the codec refused them."""
    sizes: list[int] = []
    try:
        decoded, _ = roundtrip(codec, crossing, [t.name for t in cut.tensors], per_sample=sizes)
    except SplitInferError as e:
        return f"{type(e).__name__}: {e}"
    return sm.tail(cut.id)(*decoded), sizes


def _figures(ref: Any, out: Any, sizes: Sequence[float], y: Any) -> dict[str, Any]:
    """A row's figures: ``frame_figures``; with labels ``y``, its KB and median error, then
    ``accuracy_figures`` instead of the distortion ones."""
    figs = frame_figures(ref, out, sizes)
    if y is None:
        return figs
    return {k: v for k, v in figs.items() if k.startswith("kb_")} | \
        {"relerr_median": figs["relerr_median"], **accuracy_figures(ref, out, y)}


def _row(model: str, cut: Any, codec: str) -> dict[str, Any]:
    return {"model": model, "cut": cut.id, "cut_name": cut.name, "codec": codec,
            "placement": "edge-only" if cut.id == 0 else "split",
            "head_flops_fraction": cut.head_flops_fraction}


def measure(sm: Any, model: str, x: torch.Tensor, n_cuts: int, y: torch.Tensor | None = None,
            steps: Steps | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for cut 0 x FRAME_CODECS and early cuts x TENSOR_CODECS on frames ``x`` (uint8
    NHWC); with labels ``y``, accuracy figures instead of distortion ones (KB kept)."""
    steps = steps or Steps(model, 0, enabled=False)
    ref = sm(x)
    cuts, rejected = early_cuts(sm, (x,), n_cuts)
    plan = [(sm.cuts[0], FRAME_CODECS)] + [(c, TENSOR_CODECS) for c in cuts]
    steps.grow(len(plan))
    rows = []
    for cut, codecs in plan:
        crossing = sm.head(cut.id)(x)
        for codec in codecs:
            got = run_codec(sm, cut, crossing, codec)
            if isinstance(got, str):
                rows.append({**_row(model, cut, codec), "error": got})
                continue
            rows.append({**_row(model, cut, codec), **_figures(ref, got[0], got[1], y)})
        steps.advance(note=f"{model} cut {cut.id} {cut.name}")
    info = {"samples": int(x.shape[0]), "frame_shape": list(x.shape[1:]),
            "raw_frame_bytes": int(x[0].numel()), "cuts_total": len(sm.cuts),
            "cuts_measured": [0] + [c.id for c in cuts], "cuts_rejected_by_tail": rejected,
            "distinct_top1": int(len(np.unique(top1(ref))))}
    return rows, info


# -- models ----------------------------------------------------------------------------------
def partition_frames(model: nn.Module, example: torch.Tensor, name: str) -> Any:
    """``model`` (float NCHW in) partitioned to take uint8 NHWC frames, ImageNet-normalized."""
    from splitinfer.model.preprocess import IMAGENET

    return splitinfer.partition(model, (example,), name=name, image_input=IMAGENET)


def image_models(seed: int = 0) -> list[tuple[str, nn.Module]]:
    """torchvision MobileNetV3-Small and ResNet-18, random weights (seed 0), eval."""
    import torchvision

    out = []
    for name, ctor in (("mobilenet_v3_small", torchvision.models.mobilenet_v3_small),
                       ("resnet18", torchvision.models.resnet18)):
        torch.manual_seed(seed)
        out.append((name, ctor(weights=None).eval()))
    return out


class FrameDigitsCNN(nn.Module):
    """Three conv+pool stages + one linear: normalized 3x32x32 -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(64 * (DIGITS_SIDE // 8) ** 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def digit_frames(side: int = DIGITS_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 frames (N, side, side, 3), labels): scikit-learn digits as camera-like frames."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    grey = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(g).resize((side, side),
                                                         Image.Resampling.BILINEAR))
                    for g in grey])
    return np.ascontiguousarray(np.repeat(big[..., None], 3, axis=3)), data.target


def train_frame_digits(epochs: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor,
                                                            torch.Tensor, dict[str, Any]]:
    """(eval CNN taking normalized floats, uint8 test frames, test labels, facts); the facts
    hold the uint8 training frames too (``train_frames``, not for JSON)."""
    from sklearn.model_selection import train_test_split

    from splitinfer.tools.frames import normalized

    frames_u8, target = digit_frames()
    x = torch.from_numpy(normalized(frames_u8))  # what the model's own normalization gives
    y = torch.tensor(target, dtype=torch.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed,
                              stratify=target)
    torch.manual_seed(seed)
    model = fit_classifier(FrameDigitsCNN(), x, y, tr, epochs, seed)
    return model, torch.from_numpy(frames_u8[te]), y[torch.as_tensor(te)], {
        "source": DIGITS_SOURCE, "train": len(tr), "test": len(te), "epochs": epochs,
        "train_frames": torch.from_numpy(frames_u8[tr])}


def bottleneck_rows(sm: Any, model: str, train_frames: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor, steps: Steps | None = None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for ``BOTTLENECK``: a bottleneck trained on ``train_frames`` (no labels) at each
    width, then its narrow tensor sent with each of ``BOTTLENECK_CODECS`` on the test frames
    ``x``; accuracy against ``y`` and error against the ORIGINAL unsplit model. Also the
    training reports."""
    from splitinfer.model.bottleneck import train_bottleneck

    steps = steps or Steps(model, 0, enabled=False)
    steps.grow(len(BOTTLENECK["channels"]))
    ref = sm(x)
    samples = [(train_frames[i:i + 1],) for i in range(len(train_frames))]
    rows, reports = [], []
    for k in BOTTLENECK["channels"]:
        new, rep = train_bottleneck(sm, BOTTLENECK["cut"], samples, k,
                                    epochs=BOTTLENECK["epochs"], snr_db=BOTTLENECK["snr_db"],
                                    train_tail=BOTTLENECK["train_tail"])
        reports.append(rep.to_json())
        cut = new.cut(rep.new_cut_id)
        crossing = new.head(cut.id)(x)
        for codec in BOTTLENECK_CODECS:
            row = {"model": model, "cut": rep.cut_id,
                   "cut_name": f"{rep.cut_name} + bottleneck {k} ch", "codec": codec,
                   "placement": "split+bottleneck",
                   "head_flops_fraction": cut.head_flops_fraction, "channels": k}
            got = run_codec(new, cut, crossing, codec)
            if isinstance(got, str):
                rows.append({**row, "error": got})
                continue
            rows.append({**row, **_figures(ref, got[0], got[1], y)})
        steps.advance(note=f"{model} bottleneck {k} ch at {rep.cut_name}")
    return rows, reports


# -- the section -------------------------------------------------------------------------------
def run_images(n_frames: int = 18, n_cuts: int = 4, epochs: int = 8,
               steps: Steps | None = None) -> dict[str, Any]:
    """The images section as one JSON-ready dict: rows, per-model facts, wall time."""
    from splitinfer.tools.frames import batch

    started = time.perf_counter()
    steps = steps or Steps("images", 0, enabled=False)
    x = torch.from_numpy(batch(n_frames, 224))
    rows, models = [], {}
    for name, model in image_models():
        sm = partition_frames(model, x[:1], name)
        r, info = measure(sm, name, x, n_cuts, steps=steps)
        rows += r
        models[name] = {**info, "weights": "random (torchvision, seed 0, eval)",
                        "top1_meaningful": False, "capture": sm.capture}
    cnn, x_te, y_te, facts = train_frame_digits(epochs)
    x_tr = facts.pop("train_frames")
    sm = partition_frames(cnn, x_te[:1], "digits-frames")
    r, info = measure(sm, "digits-frames", x_te, n_cuts, y=y_te, steps=steps)
    rows += r
    bn_rows, bn_reports = bottleneck_rows(sm, "digits-frames", x_tr, x_te, y_te, steps)
    rows += bn_rows
    models["digits-frames"] = {**info, **facts, "weights": "trained here",
                               "top1_meaningful": True, "capture": sm.capture,
                               "bottleneck": {**BOTTLENECK, "channels": list(BOTTLENECK[
                                   "channels"]), "reports": bn_reports}}
    return {"meta": {"frames": FRAME_SOURCE, "n_frames": n_frames, "image_input": "IMAGENET",
                     "frame_codecs": list(FRAME_CODECS), "tensor_codecs": list(TENSOR_CODECS),
                     "early_flops": EARLY_FLOPS, "cuts_per_model": n_cuts,
                     "kb": "1000 bytes of payload + codec params per sample",
                     "seconds": round(time.perf_counter() - started, 1)},
            "models": models, "rows": rows}


# -- output ------------------------------------------------------------------------------------
def table_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The section's table as text, one block per model."""
    lines: list[str] = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        acc = any("acc_pct" in r for r in mine)
        lines += ["", f"== {model}",
                  f"{'cut':>4} {'where':24} {'codec':10} {'KB med':>8} {'KB q25-q75':>13} "
                  + (f"{'acc %':>7} {'delta':>6} {'agree %':>8} {'relerr med':>10}" if acc else
                     f"{'relerr med':>10} {'relerr p95':>10} {'cos mean':>9} {'cos min':>9} "
                     f"{'top1 %*':>7}")]
        for r in mine:
            where = "edge-only (frame)" if r["cut"] == 0 else r["cut_name"][-24:]
            if r.get("channels"):
                where = f"bottleneck {r['channels']} ch"
            head = f"{r['cut']:>4} {where:24} {r['codec']:10} "
            if "error" in r:
                lines.append(head + r["error"][:70])
                continue
            head += f"{r['kb_median']:>8.2f} {r['kb_q25']:>6.2f}-{r['kb_q75']:<6.2f} "
            lines.append(head + (
                f"{r['acc_pct']:>7.2f} {r['delta_pts']:>+6.2f} {r['agree_pct']:>8.2f} "
                f"{r['relerr_median']:>10.2e}" if acc else
                f"{r['relerr_median']:>10.2e} {r['relerr_p95']:>10.2e} {r['cos_mean']:>9.6f} "
                f"{r['cos_min']:>9.6f} {r['top1_agree_pct']:>7.1f}"))
    return lines


def plot_images(section: dict[str, Any], path: Any) -> None:
    """One panel per model: KB per sample (log) against output relative error (image models,
    log) or accuracy change (digits); one marker per (cut, codec)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(section["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.6), squeeze=False)
    fig.suptitle("Frame sent as an image, edge-only (blue squares) vs split at cut N "
                 "(orange, codec@N) and with a trained bottleneck of K channels there (green, "
                 "codec@N+bK)", fontsize=10)
    for ax, model in zip(axes[0], models):
        rows = [r for r in section["rows"] if r["model"] == model and "error" not in r]
        acc = section["models"][model].get("top1_meaningful", False)
        for r in rows:
            y = r["delta_pts"] if acc else max(r["relerr_median"], _FLOOR)
            frame, k = r["cut"] == 0, r.get("channels")
            ax.plot(r["kb_median"], y, "s" if frame else "o",
                    color="tab:blue" if frame else "tab:green" if k else "tab:orange")
            label = r["codec"] if frame else f"{r['codec']}@{r['cut']}" + (f"+b{k}" if k else "")
            ax.annotate(label, (r["kb_median"], y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set(xscale="log", xlabel="KB per sample on the wire (median, log)",
               ylabel="top-1 accuracy change (points)" if acc
               else f"output relative L2 error (median, log; 0 drawn at {_FLOOR:g})",
               yscale="linear" if acc else "log",
               title=f"{model}" + (" (trained)" if acc else " (random weights)"))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(section: dict[str, Any], png: Any) -> None:
    """Print the section (facts per model, then the table) and write its figure to ``png``."""
    m = section["meta"]
    print(f"\n== images: {m['n_frames']} frames ({m['frames']}); KB = {m['kb']}; the image "
          f"models have random weights: their top-1 agreement (top1 %*) is not meaningful")
    for model, info in section["models"].items():
        print(f"{model}: cuts {info['cuts_measured']} of {info['cuts_total']}, "
              f"{info['distinct_top1']} distinct top-1 classes over {info['samples']} samples")
    print("\n".join(table_lines(section["rows"])))
    plot_images(section, png)
    print(f"images section {m['seconds']} s; wrote {png}")
