"""Codec benchmark: bytes, SQNR and speed of every codec on resnet18 tensors at many cuts.

    python -m benchmarks.codecs [--repeats N] [--out PATH] [--codecs int8+zstd,fp16]

resnet18 (torchvision, random weights, seed 0, eval) on one random 1x3x224x224 input. The
tensors come from ``splitinfer.partition`` heads at every cut when that API works, from
forward hooks otherwise. Every post-ReLU tensor is measured, plus a spread of the others.
One thread throughout (torch, numpy, zstd): the device encodes on one core. Speeds are MB/s
of fp32 input bytes, the median of ``--repeats`` samples; encode takes a numpy array (the
device path without torch). Ends with PASS/FAIL against the int8+zstd targets.
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
from splitinfer.codec import decode, get_codec, list_codecs  # noqa: E402

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
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
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


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # lossless SQNR: JSON has no inf
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.codecs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    ap.add_argument("--repeats", type=int, default=5, help="timing samples per measurement")
    ap.add_argument("--codecs", default=",".join(list_codecs()), help="comma-separated names")
    ap.add_argument("--max-other", type=int, default=8,
                    help="non-post-ReLU tensors to include (spread over the cuts)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    args = ap.parse_args(argv)
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    for c in codecs:
        get_codec(c)  # fail early on a typo

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

    import torchvision
    import zstandard

    result = {
        "meta": {"model": "resnet18 (random weights, seed 0, eval)", "input": [1, 3, 224, 224],
                 "source": source, "threads": 1, "repeats": args.repeats,
                 "post_relu_rule": f"min >= 0 and >= {POST_RELU_ZEROS:.0%} zeros",
                 "python": platform.python_version(), "numpy": np.__version__,
                 "torch": torch.__version__, "torchvision": torchvision.__version__,
                 "zstd": zstandard.ZSTD_VERSION, "machine": platform.machine(),
                 "processor": platform.processor() or platform.platform(),
                 "seconds": round(time.perf_counter() - started, 1)},
        "rows": rows, "summary": summary, "targets": targets, "pass": ok,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_json_safe(result), indent=1) + "\n")
    print(f"wrote {args.out} ({result['meta']['seconds']} s)")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
