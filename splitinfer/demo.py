"""``splitinfer demo``: partition a model, encode what crosses each cut, decode, compare.

The smallest honest end-to-end run there is without a network: for a spread of cuts it runs the
head, encodes the crossing tensors with each codec, decodes them, runs the tail, and compares
the answer with the whole model's (max abs error, top-1 agreement) next to the bytes sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over 0..n-1, first and last included."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _run_cut(sm: Any, cut_id: int, x: Any, ref: Any, codec_names: list[str]) -> list[dict]:
    import torch

    from .codec import decode_torch, encoded_nbytes, get_codec

    crossing = sm.head(cut_id)(x)
    fp32_bytes = sum(t.numel() * t.element_size() for t in crossing)
    rows = []
    for name in codec_names:
        codec = get_codec(name)
        t0 = time.perf_counter()
        encoded = [codec.encode(t, name=f"t{i}") for i, t in enumerate(crossing)]
        t1 = time.perf_counter()
        decoded = [decode_torch(e) for e in encoded]
        t2 = time.perf_counter()
        out = sm.tail(cut_id)(*decoded)
        out = out[0] if isinstance(out, tuple) else out
        sent = sum(encoded_nbytes(e) for e in encoded)
        rows.append({
            "cut": cut_id, "cut_name": sm.cuts[cut_id].name, "codec": name,
            "bytes": sent, "ratio_vs_fp32": fp32_bytes / sent if sent else 0.0,
            "max_abs_err": float((out - ref).abs().max()),
            "top1_agree": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
            "exact": bool(torch.equal(out, ref)),
            "encode_ms": (t1 - t0) * 1e3, "decode_ms": (t2 - t1) * 1e3,
        })
    return rows


def run_demo(args: argparse.Namespace, quiet: Any = None) -> int:
    import torch

    from .cli import _load_factory
    from .partition import partition

    torch.manual_seed(0)
    model = _load_factory(args.model)().eval()
    x = torch.randn(*args.example_shape)
    print(f"partitioning {args.model} (random weights) on input {list(x.shape)} ...")
    t0 = time.perf_counter()
    with quiet if quiet is not None else contextlib.nullcontext():
        sm = partition(model, (x,), name=args.model.rpartition(":")[2])
    print(f"  {len(sm.cuts)} cuts, captured with torch.{sm.capture} in "
          f"{time.perf_counter() - t0:.1f}s, fingerprint {sm.fingerprint[:16]}")
    with torch.no_grad():
        ref = model(x)
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    rows: list[dict] = []
    for cut_id in _spread(len(sm.cuts), args.cuts):
        rows += _run_cut(sm, cut_id, x, ref, codecs)
    print(f"\n{'cut':>4} {'name':<26} {'codec':<10} {'bytes':>10} {'vs fp32':>8} "
          f"{'max|err|':>10} {'top1':>5} {'exact':>5}")
    for r in rows:
        print(f"{r['cut']:>4} {r['cut_name'][:26]:<26} {r['codec']:<10} {r['bytes']:>10} "
              f"{r['ratio_vs_fp32']:>7.1f}x {r['max_abs_err']:>10.2e} {r['top1_agree']:>5.0%} "
              f"{'yes' if r['exact'] else 'no':>5}")
    lossless_ok = all(r["exact"] for r in rows if r["codec"] in ("fp32", "fp32+zstd"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "cuts": len(sm.cuts),
                               "fingerprint": sm.fingerprint, "rows": rows}, indent=2))
    print(f"\nfp32 split == whole model at every cut shown: {'yes' if lossless_ok else 'NO'}")
    print(f"wrote {out}")
    return 0 if lossless_ok else 1
