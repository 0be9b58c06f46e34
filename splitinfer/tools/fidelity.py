"""``splitinfer fidelity BUNDLE --data ...``: how far each (cut, codec) moves the answer, measured.

::

    splitinfer fidelity bundles/mnv3 --data splitinfer.tools.frames:sample_frames
    splitinfer fidelity bundles/mnv3 --data photos/ --codecs int8,jpeg --cuts 0,6 \\
        --profile device.json

Runs the user's own inputs (a folder of images or ``MODULE:FUNCTION``, see
:mod:`splitinfer.tools.datasets`) through every cut and codec as deployment would, and prints
a table against the unsplit model: KB per request, output error, cosine, top-1 agreement and
accuracy (with labels). Writes the report as JSON (``-o``); ``--profile`` rewrites a device
profile in place with the measured errors, so ``splitinfer plan --max-codec-error`` decides
from them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitinfer.core.errors import SplitInferError
from splitinfer.model.manifest import write_text_atomic

from .console import Column, Output, add_output_flags
from .factory import quiet_torch

if TYPE_CHECKING:
    from splitinfer.core.profiles import DeviceProfile
    from splitinfer.measure.fidelity import FidelityReport

__all__ = ["cmd_fidelity", "add_parser"]

_COLUMNS: list[Column] = [("cut", "right"), "name", "codec", ("KB/request", "right"),
                          ("rel err p50", "right"), ("p95", "right"), ("cosine mean", "right"),
                          ("min", "right"), ("top-1 agree", "right")]


def _cut_ids(text: str | None, sm: Any) -> list[int] | None:
    """``--cuts 0,3,pool``: ids or names, resolved against the bundle's cuts."""
    if not text:
        return None
    ids = []
    for key in (k.strip() for k in text.split(",")):
        ids.append(sm.cut(int(key) if key.isdigit() else key).id)
    return ids


def _codecs(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    if not names:
        raise SplitInferError(f"--codecs {text!r}: give comma-separated codec names, e.g. "
                              "int8,jpeg")
    return names


def _print_report(report: FidelityReport, ui: Output) -> None:
    from splitinfer.measure.fidelity import MIN_DISTINCT_TOP1

    labelled = report.reference_accuracy is not None
    columns = _COLUMNS + ([("accuracy", "right")] if labelled else [])
    rows = []
    for r in report.rows:
        row = [r.cut_id, r.cut_name, r.codec, f"{r.request_bytes / 1024:.1f}",
               f"{r.error_p50:.2e}", f"{r.error_p95:.2e}", f"{r.cosine_mean:.6f}",
               f"{r.cosine_min:.6f}", f"{r.agreement:.0%}"]
        rows.append(row + ([f"{r.accuracy:.0%}"] if r.accuracy is not None else []))
    ui.table(columns, rows, title=f"{report.model}: {report.n} inputs from {report.source}")
    if labelled:
        ui.line(f"unsplit model: accuracy {report.reference_accuracy:.1%} on the labels")
    if report.agreement_meaningful:
        ui.line(f"top-1 agreement is meaningful: the unsplit model's answers span "
                f"{report.distinct_top1} classes")
    elif report.distinct_top1 < min(MIN_DISTINCT_TOP1, report.n):
        ui.line(f"top-1 agreement means little here: the unsplit model's answers span only "
                f"{report.distinct_top1} class(es) over {report.n} inputs (random weights?); "
                "read the output error instead", style="yellow")
    else:
        ui.line("top-1 agreement means little here: the output is not one row of class "
                "scores; read the output error instead", style="yellow")
    for note in report.notes:
        ui.line(f"note: {note if len(note) <= 200 else note[:200] + '…'}", style="yellow")


def _read_profile(path: str, sm: Any) -> DeviceProfile:
    """The ``--profile`` to rewrite, checked before any measuring: the bundle's model."""
    from splitinfer.core.profiles import DeviceProfile

    try:
        profile = DeviceProfile.from_json(json.loads(Path(path).read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise SplitInferError(f"--profile {path}: not a device profile ({exc}); give the JSON "
                              "`splitinfer plan --save-profiles` writes") from exc
    if profile.fingerprint != sm.fingerprint:
        raise SplitInferError(f"--profile {path} is of {profile.model!r} (fingerprint "
                              f"{profile.fingerprint[:16]}…), the bundle {sm.name!r} "
                              f"({sm.fingerprint[:16]}…): they are different models")
    return profile


def cmd_fidelity(args: argparse.Namespace) -> int:
    from splitinfer.measure.fidelity import DEFAULT_CODECS, measure_fidelity
    from splitinfer.model.bundle import load_bundle

    from .datasets import load_samples

    ui: Output = args.ui
    if args.limit is not None and args.limit < 1:
        raise SplitInferError(f"--limit {args.limit}: expected an int >= 1")
    with ui.status(f"loading {args.bundle}"), quiet_torch(args):
        sm = load_bundle(args.bundle)
    cut_ids = _cut_ids(args.cuts, sm)
    profile = _read_profile(args.profile, sm) if args.profile else None
    with ui.status(f"reading {args.data}"):
        samples = load_samples(args.data, sm, args.limit)
    total = len(cut_ids) if cut_ids is not None else len(sm.cuts) - 1
    with ui.progress(f"measuring {len(samples)} inputs", total) as step:
        report = measure_fidelity(sm, samples, codecs=_codecs(args.codecs) or DEFAULT_CODECS,
                                  cut_ids=cut_ids, progress=step, source=args.data)
    if not args.json:
        _print_report(report, ui)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report.to_json(), indent=2) + "\n")
    ui.line(f"wrote {out}")
    if profile is not None:
        updated = report.apply_to(profile)
        write_text_atomic(Path(args.profile), json.dumps(updated.to_json(), indent=2) + "\n")
        ui.line(f"updated {args.profile}: {updated.error_source}")
    if args.json:
        ui.json(report.to_json())
    return 0


def add_parser(sub: Any, arg_type: Any) -> None:
    """Add ``fidelity`` to the CLI's subparsers (``arg_type``: see ``cli._arg_type``)."""
    p = sub.add_parser("fidelity", help="measure how far each cut and codec moves the answer, "
                                        "on your own inputs")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--data", required=True,
                   help="a folder of images (labelled by DIR/<class>/ subfolders) or "
                        "MODULE:FUNCTION returning inputs or (input, label) pairs, e.g. "
                        "splitinfer.tools.frames:sample_frames")
    p.add_argument("--codecs", help="comma-separated codecs (default: fp16, bf16, int8, "
                                    "int8+zstd and the image codecs)")
    p.add_argument("--cuts", help="comma-separated cut ids or names (default: every cut but "
                                  "device-only)")
    p.add_argument("--limit", type=int, help="use the first N inputs (a folder of classes: "
                                             "taken in turn from every class)")
    p.add_argument("--profile", metavar="DEVICE.json",
                   help="rewrite this device profile in place with the measured errors")
    p.add_argument("-o", "--out", default="fidelity.json",
                   help="the report as JSON (default ./fidelity.json)")
    add_output_flags(p, "the report")
    p.set_defaults(func=cmd_fidelity)
