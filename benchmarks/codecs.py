"""Codec benchmark: bytes, SQNR and speed of every codec on resnet18 tensors at many cuts, and
of the image codecs on the camera frames themselves.

    python -m benchmarks.codecs [--repeats N] [--out PATH] [--codecs int8+zstd,fp16]
                                [--frame-codecs jpeg,png] [--frames N]

Tensors: resnet18 (torchvision, random weights, seed 0, eval) on one real frame, the first of
``splitinfer.tools.frames`` (china.jpg, top-left 224x224 crop), normalized as torchvision does
(``frames.normalized(frames.batch(1, 224))``: 1x3x224x224 float32). The tensors come from
``splitinfer.partition`` heads at every cut when that API works, from forward hooks otherwise.
Every post-ReLU tensor is measured, plus a spread of the others; ``--codecs`` defaults to every
codec that carries float tensors. Speeds are MB/s of fp32 input bytes.

Frames (the edge-only baseline): every image codec (``--frame-codecs``, default
``splitinfer.codec.IMAGE_CODECS``) on each of the first ``--frames`` real frames as uint8
(1, 224, 224, 3), next to int8+zstd on the same frame normalized to float: bytes, ratio to the
raw frame (150528 bytes), pixel PSNR (int8+zstd: its decoded float mapped back to pixels),
encode/decode MB/s of each codec's own input bytes (uint8 frame: 150528; float: 602112) and
milliseconds per frame, the comparable figure.

One thread throughout (torch, numpy, zstd, Pillow): the device encodes on one core. Speeds are
the median of ``--repeats`` samples; encode takes a numpy array (the device path without
torch). Ends with PASS/FAIL against the int8+zstd targets (the frames group has none).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.progress import Steps  # noqa: E402
from splitinfer.codec import IMAGE_CODECS, decode, get_codec, list_codecs  # noqa: E402
from splitinfer.core.errors import SplitInferError  # noqa: E402
from splitinfer.tools import frames  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "codecs.json"
TARGET_CODEC = "int8+zstd"
#: name -> (threshold, "min" means value >= threshold)
TARGETS = {"median ratio": 5.0, "min ratio": 4.0, "min SQNR dB": 45.0,
           "min encode MB/s": 500.0, "min decode MB/s": 500.0}
#: a tensor counts as post-ReLU when it is >= 0 and at least this fraction is exactly 0
POST_RELU_ZEROS = 0.10


@dataclass
class Sample:
    cut: int
    cut_name: str
    tensor: str
    array: np.ndarray
    post_relu: bool
    zeros: float


def _sample(cut: int, cut_name: str, tensor: str, t: Any) -> Sample:
    a = np.ascontiguousarray(t.detach().float().numpy())
    zeros = float((a == 0).mean()) if a.size else 0.0
    return Sample(cut, cut_name, tensor, a, bool(a.size and a.min() >= 0
                                                 and zeros >= POST_RELU_ZEROS), zeros)


def _from_partition(model: Any, x: Any) -> list[Sample]:
    import splitinfer

    sm = splitinfer.partition(model, example_inputs=(x,))
    seen: dict[str, Sample] = {}
    for cut in sm.cuts:
        for spec, t in zip(cut.tensors, sm.head(cut.id)(x)):
            if spec.name not in seen and t.is_floating_point():
                seen[spec.name] = _sample(cut.id, cut.name, spec.name, t)
    return list(seen.values())


def _from_hooks(model: Any, x: Any) -> list[Sample]:
    import torch

    found: list[tuple[str, Any]] = [("input", x)]
    names = {m: n for n, m in model.named_modules()}

    def hook(mod: Any, _inp: Any, out: Any) -> None:  # resnet reuses a ReLU: one per call
        found.append((names[mod], out.detach().clone()))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.AdaptiveAvgPool2d,
                                 torch.nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [_sample(i, n, f"{n}#{i}", t) for i, (n, t) in enumerate(found)]


def collect(seed: int = 0) -> tuple[str, list[Sample]]:
    """(source, samples): resnet18 tensors at every cut, via partition if it works."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.from_numpy(frames.normalized(frames.batch(1, 224)))  # frame 0: china.jpg, top-left
    try:
        return "partition", _from_partition(model, x)
    except Exception as e:  # a benchmark should still run while partition is in the works
        print(f"note: partition API unavailable ({type(e).__name__}: {e}); using forward hooks")
        return "hooks", _from_hooks(model, x)


def select(samples: list[Sample], max_other: int) -> list[Sample]:
    """Every post-ReLU tensor, plus up to ``max_other`` others spread evenly, in cut order."""
    other = [s for s in samples if not s.post_relu]
    if len(other) > max_other:
        step = (len(other) - 1) / max(max_other - 1, 1)
        other = [other[round(i * step)] for i in range(max_other)] if max_other else []
    keep = {id(s) for s in other}
    return [s for s in samples if s.post_relu or id(s) in keep]


def time_call(fn: Callable[[], Any], repeats: int, min_sample_s: float = 0.005) -> float:
    """Median seconds per call over ``repeats`` samples of enough calls to last min_sample_s."""
    t0 = time.perf_counter()
    fn()
    number = max(1, math.ceil(min_sample_s / max(time.perf_counter() - t0, 1e-7)))
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        per_call.append((time.perf_counter() - t0) / number)
    return statistics.median(per_call)


def measure(codec_name: str, s: Sample, repeats: int) -> dict[str, Any]:
    codec = get_codec(codec_name)
    x = s.array
    enc = codec.encode(x, s.tensor)
    y = decode(enc)
    err = x.astype(np.float64) - y.astype(np.float64)
    noise = float(np.sum(err * err))
    signal = float(np.sum(x.astype(np.float64) ** 2))
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal else -math.inf)
    fp32 = x.size * 4
    return {
        "codec": codec_name, "stored_as": enc.codec, "cut": s.cut, "cut_name": s.cut_name,
        "tensor": s.tensor, "shape": list(x.shape), "post_relu": s.post_relu,
        "zeros": round(s.zeros, 4), "fp32_bytes": fp32, "bytes": enc.nbytes,
        "ratio": fp32 / enc.nbytes, "sqnr_db": sqnr, "max_abs_err": float(np.abs(err).max()),
        "encode_mbps": fp32 / time_call(lambda: codec.encode(x, s.tensor), repeats) / 1e6,
        "decode_mbps": fp32 / time_call(lambda: decode(enc), repeats) / 1e6,
    }


def measure_all(codecs: list[str], chosen: list[Sample], repeats: int) -> list[dict[str, Any]]:
    """Every codec on every chosen tensor, a table per codec; the rows in that order."""
    rows = []
    with Steps("codec benchmark", len(codecs) * len(chosen)) as steps:
        for codec in codecs:
            codec_rows = []
            for s in chosen:
                codec_rows.append(measure(codec, s, repeats))
                steps.advance(note=f"{codec}: {s.tensor}")
            print_table(codec, codec_rows)
            rows.extend(codec_rows)
    return rows


def _fmt_db(v: float) -> str:
    return "lossless" if v == math.inf else f"{v:.1f}"


def print_table(codec: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n== {codec}")
    print(f"{'cut':>4} {'name':22} {'shape':18} {'relu':>5} {'bytes':>9} {'ratio':>6} "
          f"{'SQNR dB':>8} {'max err':>9} {'enc MB/s':>9} {'dec MB/s':>9}")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['cut']:>4} {r['cut_name'][:22]:22} {shape:18} "
              f"{'yes' if r['post_relu'] else 'no':>5} {r['bytes']:>9} {r['ratio']:>6.2f} "
              f"{_fmt_db(r['sqnr_db']):>8} {r['max_abs_err']:>9.2e} "
              f"{r['encode_mbps']:>9.0f} {r['decode_mbps']:>9.0f}")


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per codec, over post-ReLU tensors: median/min ratio, min SQNR, min/median speeds."""
    out: dict[str, dict[str, float]] = {}
    for codec in dict.fromkeys(r["codec"] for r in rows):
        rs = [r for r in rows if r["codec"] == codec and r["post_relu"]]
        if not rs:
            continue
        out[codec] = {
            "median ratio": statistics.median(r["ratio"] for r in rs),
            "min ratio": min(r["ratio"] for r in rs),
            "min SQNR dB": min(r["sqnr_db"] for r in rs),
            "min encode MB/s": min(r["encode_mbps"] for r in rs),
            "median encode MB/s": statistics.median(r["encode_mbps"] for r in rs),
            "min decode MB/s": min(r["decode_mbps"] for r in rs),
            "median decode MB/s": statistics.median(r["decode_mbps"] for r in rs),
        }
    return out


def check_targets(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    got = summary.get(TARGET_CODEC, {})
    return {k: {"value": got.get(k), "target": v,
                "pass": got.get(k) is not None and got[k] >= v} for k, v in TARGETS.items()}


# -- frames: the image codecs on the camera frame, next to int8+zstd on the float input ------------
FRAME_FLOAT_CODEC = "int8+zstd"


def pixel_psnr(frame: np.ndarray, pixels: np.ndarray) -> float:
    """PSNR in dB of ``pixels`` (any float or uint8 array shaped like ``frame``) against the
    uint8 ``frame``, peak 255; inf when identical."""
    if np.shape(pixels) != np.shape(frame):
        raise ValueError(f"pixels of shape {np.shape(pixels)} against a frame of shape "
                         f"{np.shape(frame)}: expected the same shape")
    err = np.asarray(pixels, np.float64) - np.asarray(frame, np.float64)
    mse = float(np.mean(err * err))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def to_pixels(normalized: np.ndarray) -> np.ndarray:
    """float NCHW normalized with ImageNet mean/std -> float NHWC pixels (0..255 scale)."""
    m = np.asarray(frames.IMAGENET_MEAN, np.float64).reshape(1, -1, 1, 1)
    sd = np.asarray(frames.IMAGENET_STD, np.float64).reshape(1, -1, 1, 1)
    out: np.ndarray = ((np.asarray(normalized, np.float64) * sd + m) * 255.0).transpose(0, 2, 3, 1)
    return out


def measure_frame(codec_name: str, frame: np.ndarray, index: int, repeats: int
                  ) -> dict[str, Any]:
    """One codec on one uint8 HWC frame: the image codecs take the frame, the others its
    normalized float NCHW tensor (what a float-input model is sent)."""
    codec = get_codec(codec_name)
    image = frame[None]
    float_input = frames.normalized(image)
    x = float_input if codec.applies_to("float32", float_input.shape) else image
    enc = codec.encode(x, "frame")
    y = decode(enc)
    pixels = y if x.dtype == np.uint8 else to_pixels(y)
    enc_s = time_call(lambda: codec.encode(x, "frame"), repeats)
    dec_s = time_call(lambda: decode(enc), repeats)
    return {"codec": codec_name, "frame": index, "input": f"{x.dtype} {list(x.shape)}",
            "input_bytes": x.nbytes, "bytes": enc.nbytes, "ratio_to_raw": image.nbytes / enc.nbytes,
            "psnr_db": pixel_psnr(image, pixels), "encode_mbps": x.nbytes / enc_s / 1e6,
            "decode_mbps": x.nbytes / dec_s / 1e6, "encode_ms": enc_s * 1e3,
            "decode_ms": dec_s * 1e3}


def measure_frames(codecs: list[str], n: int, repeats: int) -> list[dict[str, Any]]:
    """Every codec on each of the first ``n`` real frames (224x224)."""
    chosen = frames.sample_frames(224)[:n]
    rows = []
    with Steps("frame codecs", len(codecs) * len(chosen)) as steps:
        for codec in codecs:
            for i, frame in enumerate(chosen):
                rows.append(measure_frame(codec, frame, i, repeats))
                steps.advance(note=f"{codec}: frame {i}")
    return rows


def summarize_frames(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per codec over the frames: bytes (median, q25, q75), median ratio to the raw frame,
    PSNR (median, min), median speeds."""
    out: dict[str, dict[str, Any]] = {}
    for codec in dict.fromkeys(r["codec"] for r in rows):
        rs = [r for r in rows if r["codec"] == codec]
        q25, q50, q75 = np.percentile([r["bytes"] for r in rs], (25, 50, 75))
        out[codec] = {"input": rs[0]["input"], "median bytes": float(q50),
                      "q25 bytes": float(q25), "q75 bytes": float(q75),
                      "median ratio to raw": statistics.median(r["ratio_to_raw"] for r in rs),
                      "median PSNR dB": statistics.median(r["psnr_db"] for r in rs),
                      "min PSNR dB": min(r["psnr_db"] for r in rs)}
        for k in ("encode_mbps", "decode_mbps", "encode_ms", "decode_ms"):
            out[codec][f"median {k.replace('_mbps', ' MB/s').replace('_ms', ' ms')}"] = \
                statistics.median(r[k] for r in rs)
    return out


def print_frames(summary: dict[str, dict[str, Any]], n: int) -> None:
    print(f"\n== frames: {n} real frames 224x224 (uint8 150528 B raw); MB/s of each codec's "
          "own input")
    print(f"{'codec':10} {'input':26} {'bytes med':>9} {'q25-q75':>13} {'ratio':>6} "
          f"{'PSNR med':>8} {'PSNR min':>8} {'enc MB/s':>8} {'dec MB/s':>8} {'enc ms':>7} "
          f"{'dec ms':>7}")
    for codec, s in summary.items():
        print(f"{codec:10} {s['input']:26} {s['median bytes']:>9.0f} "
              f"{s['q25 bytes']:>6.0f}-{s['q75 bytes']:<6.0f} {s['median ratio to raw']:>6.2f} "
              f"{_fmt_db(s['median PSNR dB']):>8} {_fmt_db(s['min PSNR dB']):>8} "
              f"{s['median encode MB/s']:>8.0f} {s['median decode MB/s']:>8.0f} "
              f"{s['median encode ms']:>7.2f} {s['median decode ms']:>7.2f}")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # lossless SQNR: JSON has no inf
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def tensor_codecs() -> list[str]:
    """Every registered codec that carries a float32 activation (the image codecs do not)."""
    return [c for c in list_codecs() if get_codec(c).applies_to("float32", (1, 64, 56, 56))]


def parse_codecs(ap: argparse.ArgumentParser, tensors: str, frame: str
                 ) -> tuple[list[str], list[str]]:
    """The two comma-separated lists as names, checked: a typo or an image codec among the
    tensor codecs ends the run with the fix (``ap.error``) before anything is measured."""
    lists = ([c.strip() for c in tensors.split(",") if c.strip()],
             [c.strip() for c in frame.split(",") if c.strip()])
    for c in lists[0] + lists[1]:
        try:
            get_codec(c)
        except SplitInferError as e:  # CodecError: an unknown name
            ap.error(str(e))
    for c in lists[0]:
        if not get_codec(c).applies_to("float32", (1, 64, 56, 56)):
            ap.error(f"codec {c!r} does not carry float tensors; measure it on the frames "
                     f"with --frame-codecs {c}")
    return lists


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.codecs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    ap.add_argument("--repeats", type=int, default=5, help="timing samples per measurement")
    ap.add_argument("--codecs", default=",".join(tensor_codecs()),
                    help="comma-separated names for the tensors (default: every codec that "
                         "carries float tensors)")
    ap.add_argument("--frame-codecs", default=",".join((*IMAGE_CODECS, FRAME_FLOAT_CODEC)),
                    help="comma-separated names for the frames (image codecs take the uint8 "
                         "frame, the others the normalized float one)")
    ap.add_argument("--frames", type=int, default=18,
                    help="real frames for the frames group (1..18; 0 skips it)")
    ap.add_argument("--max-other", type=int, default=8,
                    help="non-post-ReLU tensors to include (spread over the cuts)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    args = ap.parse_args(argv)
    codecs, frame_codecs = parse_codecs(ap, args.codecs, args.frame_codecs)
    if not 0 <= args.frames <= 18:
        ap.error(f"--frames {args.frames}: there are 18 real frames; pick 0..18")

    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    source, samples = collect()
    chosen = select(samples, args.max_other)
    print(f"{len(samples)} tensors from {source}; measuring {len(chosen)} "
          f"({sum(s.post_relu for s in chosen)} post-ReLU), {args.repeats} repeats, 1 thread")
    rows = measure_all(codecs, chosen, args.repeats)
    summary = summarize(rows)
    targets = check_targets(summary)

    print("\n== summary over post-ReLU tensors")
    for codec, s in summary.items():
        print(f"{codec:10} median ratio {s['median ratio']:5.2f}  min ratio {s['min ratio']:5.2f}"
              f"  min SQNR {_fmt_db(s['min SQNR dB']):>8}  enc MB/s min {s['min encode MB/s']:5.0f}"
              f" med {s['median encode MB/s']:5.0f}  dec MB/s min {s['min decode MB/s']:5.0f}"
              f" med {s['median decode MB/s']:5.0f}")
    ok = all(t["pass"] for t in targets.values())
    parts = [f"{k} {t['value']:.2f} (>= {t['target']:g}) {'ok' if t['pass'] else 'FAIL'}"
             if t["value"] is not None else f"{k} n/a FAIL" for k, t in targets.items()]
    print(f"\n{TARGET_CODEC} targets: {'PASS' if ok else 'FAIL'}: " + "; ".join(parts))
    frame_rows = measure_frames(frame_codecs, args.frames, args.repeats) if args.frames else []
    frame_summary = summarize_frames(frame_rows)
    if frame_rows:
        print_frames(frame_summary, args.frames)

    import torchvision
    import zstandard

    result = {
        "meta": {"model": "resnet18 (random weights, seed 0, eval)", "input": [1, 3, 224, 224],
                 "input_frame": "frames.normalized(frames.batch(1, 224)): frame 0, china.jpg "
                                "top-left 224x224 crop",
                 "source": source, "threads": 1, "repeats": args.repeats,
                 "post_relu_rule": f"min >= 0 and >= {POST_RELU_ZEROS:.0%} zeros",
                 "python": platform.python_version(), "numpy": np.__version__,
                 "torch": torch.__version__, "torchvision": torchvision.__version__,
                 "zstd": zstandard.ZSTD_VERSION, "machine": platform.machine(),
                 "processor": platform.processor() or platform.platform(),
                 "seconds": round(time.perf_counter() - started, 1)},
        "rows": rows, "summary": summary, "targets": targets, "pass": ok,
        "frames": {"meta": {"frames": args.frames, "size": 224, "raw_bytes": 224 * 224 * 3,
                            "mbps_of": "each codec's own input bytes (uint8 frame or float32 "
                                       "normalized frame)",
                            "psnr": "decoded pixels vs the uint8 frame, peak 255"},
                   "rows": frame_rows, "summary": frame_summary},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_json_safe(result), indent=1) + "\n")
    print(f"wrote {args.out} ({result['meta']['seconds']} s)")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
