"""``splitinfer demo``: partition a model, encode what crosses each cut, decode, compare.

The smallest honest end-to-end run there is without a network: for a spread of cuts it runs the
head, encodes the crossing tensors with each codec, decodes them, runs the tail, and compares
the answer with the whole model's (max abs error, top-1 agreement) next to the bytes sent. The
input is real photo frames (``splitinfer.tools.frames``) when the shape is an RGB image
(N, 3, S, S), random values otherwise (the demo says which).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .console import Output
from .factory import load_factory

if TYPE_CHECKING:
    import torch

    from splitinfer.model.split_model import SplitModel


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over 0..n-1, first and last included."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _run_cut(sm: SplitModel, cut_id: int, x: torch.Tensor, ref: torch.Tensor,
             codec_names: list[str]) -> list[dict[str, Any]]:
    import torch

    from splitinfer.codec import encoded_nbytes, get_codec
    from splitinfer.model.tensors import decode_torch

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


def _print_rows(ui: Output, rows: list[dict[str, Any]]) -> None:
    ui.line()
    ui.table([("cut", "right"), "name", "codec", ("bytes", "right"), ("vs fp32", "right"),
              ("max|err|", "right"), ("top1", "right"), ("exact", "right")],
             [(r["cut"], r["cut_name"], r["codec"], r["bytes"], f"{r['ratio_vs_fp32']:.1f}x",
               f"{r['max_abs_err']:.2e}", f"{r['top1_agree']:.0%}", "yes" if r["exact"] else "no")
              for r in rows])


def _example(shape: tuple[int, ...]) -> tuple[Any, str]:
    """The demo's input and what it is: real photo frames (normalized as torchvision models
    expect) for an RGB image shape (N, 3, S, S), else random values (said so)."""
    import torch

    if len(shape) == 4 and shape[1] == 3 and shape[2] == shape[3] >= 8:
        from .frames import batch, normalized

        return (torch.from_numpy(normalized(batch(shape[0], shape[2]))),
                "real photo frames (splitinfer.tools.frames)")
    return torch.randn(*shape), "random values (the shape is not an RGB image)"


def run_demo(args: argparse.Namespace, quiet: Any = None) -> int:
    """The offline codec demo (see the module docstring); the exit code: 1 when a lossless
    codec's split did not give the whole model's answer. ``quiet``: a context manager that
    silences torch while it captures."""
    import torch

    from splitinfer.model.split_model import partition

    ui: Output = getattr(args, "ui", None) or Output()
    torch.manual_seed(0)
    model = load_factory(args.model)().eval()
    x, what = _example(args.example_shape)
    ui.line(f"partitioning {args.model} (random weights) on input {list(x.shape)}, {what} ...")
    t0 = time.perf_counter()
    with ui.status(f"capturing {args.model}"), \
            quiet if quiet is not None else contextlib.nullcontext():
        sm = partition(model, (x,), name=args.model.rpartition(":")[2])
    ui.line(f"  {len(sm.cuts)} cuts, captured with torch.{sm.capture} in "
            f"{time.perf_counter() - t0:.1f}s, fingerprint {sm.fingerprint[:16]}")
    with torch.no_grad():
        ref = model(x)
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    rows: list[dict[str, Any]] = []
    cut_ids = _spread(len(sm.cuts), args.cuts)
    with ui.progress("encoding, decoding and comparing at each cut", len(cut_ids)) as step:
        for done, cut_id in enumerate(cut_ids, 1):
            rows += _run_cut(sm, cut_id, x, ref, codecs)
            step(done, len(cut_ids))
    _print_rows(ui, rows)
    lossless_ok = all(r["exact"] for r in rows if r["codec"] in ("fp32", "fp32+zstd"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "cuts": len(sm.cuts), "fingerprint": sm.fingerprint,
              "rows": rows}
    out.write_text(json.dumps(result, indent=2))
    ui.line(f"\nfp32 split == whole model at every cut shown: {'yes' if lossless_ok else 'NO'}")
    ui.line(f"wrote {out}")
    if getattr(args, "json", False):
        ui.json(result)
    return 0 if lossless_ok else 1
