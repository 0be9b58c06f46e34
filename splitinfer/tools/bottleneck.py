"""``splitinfer bottleneck train BUNDLE --cut ID --data ... --channels K -o DIR``: a trained
bottleneck at a cut, written as a new bundle version.

::

    splitinfer bottleneck train bundles/digits/1 --cut features.2 --channels 2 \\
        --data mypkg.data:train_frames --train-tail -o bundles/digits/1-b2

Inserts a small encoder on the device side of the cut and its decoder on the edge side
(:mod:`splitinfer.model.bottleneck`), trains them by distillation against the bundle's own
outputs on the ``--data`` inputs (no labels needed; labels given are ignored), and writes the
bottlenecked model as a new bundle (same name, version ``--version``, default
``<version>-b<K>``; its own fingerprint). Prints the cut to plan with in the new bundle, the
output error on held-out inputs, and the bytes per request there against the original cut's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from splitinfer.core.errors import SplitInferError

from .console import Column, Output, add_output_flags
from .factory import quiet_torch

__all__ = ["cmd_bottleneck_train", "add_parser"]

#: codecs whose bytes the summary compares at the original and the new cut
_COMPARE = ("int8+zstd", "ecq-18db", "ecq")


def _mean_bytes(sm: Any, cut_id: int, inputs: list[tuple[Any, ...]], codec: str) -> float:
    """Mean bytes of one request's tensors at ``cut_id`` with ``codec`` over ``inputs``."""
    from splitinfer.codec import get_codec

    c = get_codec(codec)
    total = 0
    for x in inputs:
        total += sum(c.encode(t).nbytes for t in sm.head(cut_id)(*x))
    return total / len(inputs)


def cmd_bottleneck_train(args: argparse.Namespace) -> int:
    import torch

    from splitinfer.model.bottleneck import train_bottleneck
    from splitinfer.model.bundle import load_bundle, save_bundle

    from .datasets import load_samples

    ui: Output = args.ui
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise SplitInferError(f"-o {out} exists and is not empty; choose another directory or "
                              "pass --force to replace it")
    with ui.status(f"loading {args.bundle}"), quiet_torch(args):
        sm = load_bundle(args.bundle)
    cut = sm.cut(int(args.cut) if args.cut.isdigit() else args.cut)
    with ui.status(f"reading {args.data}"):
        samples = load_samples(args.data, sm, args.limit)
    inputs = [tuple(s.inputs) for s in samples]
    torch.manual_seed(args.seed)
    with ui.progress(f"training a {args.channels}-channel bottleneck at cut {cut.id} "
                     f"({cut.name}) on {len(inputs)} inputs", args.epochs) as step, \
            quiet_torch(args):
        new, report = train_bottleneck(
            sm, cut.id, inputs, args.channels, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, snr_db=args.snr_db, held_out=args.held_out,
            train_tail=args.train_tail, seed=args.seed,
            progress=lambda epoch, loss: step(epoch, args.epochs))
    version = args.version or f"{sm.version}-b{args.channels}"
    with ui.status(f"writing {out}"), quiet_torch(args):
        manifest = save_bundle(new, out, name=sm.name, version=version, overwrite=args.force)
    held = inputs[len(inputs) - report.held_out:] if report.held_out else inputs
    sizes = {codec: {"before": round(_mean_bytes(sm, cut.id, held, codec), 1),
                     "after": round(_mean_bytes(new, report.new_cut_id, held, codec), 1)}
             for codec in _COMPARE}
    rows = [[codec, f"{b['before']:,.0f}", f"{b['after']:,.0f}"] for codec, b in sizes.items()]
    result = {"bundle": str(out), "name": manifest.name, "version": manifest.version,
              "fingerprint": manifest.fingerprint, "report": report.to_json(),
              "bytes_per_request": sizes}
    if args.json:
        ui.json(result)
        return 0
    columns: list[Column] = ["codec", ("bytes at the cut", "right"),
                             ("with the bottleneck", "right")]
    ui.table(columns, rows, title=f"{sm.name}: cut {cut.id} ({cut.name}), {report.channels_in} "
             f"-> {report.channels} channels, mean over {len(held)} held-out inputs")
    kept = f"epoch {report.best_epoch}" if report.best_epoch else \
        "the PCA start (no epoch did better: more inputs, or a lower --lr / higher --snr-db?)"
    ui.line(f"output error (relative L2, median over {report.held_out} held-out inputs, no "
            f"codec): {report.error:.3g} with the weights of {kept}; {report.pca_error:.3g} "
            f"from the PCA start; {report.seconds:.0f} s")
    ui.line(f"wrote {out}: {manifest.name} version {manifest.version}, fingerprint "
            f"{manifest.fingerprint[:16]}…; plan and serve it at cut {report.new_cut_id} "
            f"({report.new_cut_name}), e.g. splitinfer fidelity {out} --cuts "
            f"{report.new_cut_id} --data {args.data}")
    return 0


def _positive(kind: type, what: str) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise ValueError(f"{text!r}: {what} must be > 0")
        return value
    return parse


def add_parser(sub: Any, arg_type: Any) -> None:
    """Add ``bottleneck train`` to the CLI's subparsers (``arg_type``: see ``cli._arg_type``)."""
    p = sub.add_parser("bottleneck", help="trained bottlenecks at a cut (bottleneck train)")
    inner = p.add_subparsers(dest="bottleneck_command", metavar="train", required=True)
    t = inner.add_parser("train", help="train a bottleneck at a cut by distillation and write "
                                       "the bottlenecked model as a new bundle")
    t.add_argument("bundle", help="bundle directory")
    t.add_argument("--cut", required=True, help="cut id or name where one float tensor crosses")
    t.add_argument("--channels", type=arg_type(_positive(int, "--channels")), required=True,
                   help="channels (or features) the bottleneck narrows the tensor to")
    t.add_argument("--data", required=True,
                   help="training inputs: a folder of images or MODULE:FUNCTION (labels are "
                        "not needed and not used)")
    t.add_argument("-o", "--out", required=True, help="directory for the new bundle")
    t.add_argument("--version", help="the new bundle's version (default <version>-b<K>)")
    t.add_argument("--epochs", type=arg_type(_positive(int, "--epochs")), default=30,
                   help="training epochs (default 30)")
    t.add_argument("--lr", type=arg_type(_positive(float, "--lr")), default=3e-3,
                   help="Adam learning rate (default 0.003)")
    t.add_argument("--batch-size", type=arg_type(_positive(int, "--batch-size")), default=32)
    t.add_argument("--snr-db", type=arg_type(_positive(float, "--snr-db")), default=18.0,
                   help="train with ecq's rounding noise at this signal-to-noise ratio "
                        "(default 18; the codec you will send with, e.g. ecq-18db)")
    t.add_argument("--held-out", type=float, default=0.2,
                   help="fraction of the inputs (the last ones) kept out of training to "
                        "measure the error (default 0.2)")
    t.add_argument("--train-tail", action="store_true",
                   help="fine-tune the edge side's layers too (the device side never changes)")
    t.add_argument("--limit", type=int, help="use the first N inputs")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true", help="replace a non-empty -o directory")
    add_output_flags(t, "the result")
    t.set_defaults(func=cmd_bottleneck_train)
