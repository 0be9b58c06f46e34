"""``splitinfer export``: partition a model into a bundle, and write ONNX heads and tails.

::

    splitinfer export torchvision.models:resnet18 --example-shape 1,3,224,224 -o bundles/r18
    splitinfer export --from-bundle bundles/r18 --onnx --cut 12 --json
    splitinfer export torchvision.models:mobilenet_v3_small --example-shape 1,3,224,224 \
        --image-input imagenet -o bundles/mnv3    # takes uint8 frames 1x224x224x3

With ``--image-input`` (or ``--image-mean``/``--image-std``) the bundle takes uint8 NHWC frames
and normalizes them in its graph (:mod:`splitinfer.model.preprocess`); ``--example-shape``
stays the model's own float NCHW shape.

A spinner per stage (building the model, capturing it and finding its cuts, writing) and a bar
over the ONNX cuts on a terminal; ``--json`` prints a summary of what was written.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, Sequence

from splitinfer.core.errors import SplitInferError

from .console import Output, add_output_flags
from .factory import example_inputs, load_factory, parse_shape, quiet_torch

if TYPE_CHECKING:
    from splitinfer.model.image_input import ImageInput

__all__ = ["cmd_export", "add_parser"]


def _check_export_args(args: argparse.Namespace) -> None:
    """The combinations argparse cannot express: a new bundle or --from-bundle, ONNX cuts."""
    if args.model and args.from_bundle:
        raise SplitInferError("give either MODULE:FACTORY (export a new bundle) or "
                              "--from-bundle DIR (add ONNX files to a bundle), not both")
    if not args.model and not args.from_bundle:
        raise SplitInferError("nothing to export: give MODULE:FACTORY (with --example-shape and "
                              "-o DIR), or --from-bundle DIR --onnx --cut ID")
    if args.cut and not args.onnx:
        raise SplitInferError("--cut selects the cuts to write as ONNX: add --onnx")
    if args.onnx and not args.cut:
        raise SplitInferError("--onnx needs at least one --cut ID (an id or a name; "
                              "`splitinfer inspect DIR` lists them)")
    if args.from_bundle:
        if not args.onnx:
            raise SplitInferError("--from-bundle only adds ONNX files: add --onnx --cut ID")
        if args.output or args.example_shape:
            raise SplitInferError("--from-bundle writes into DIR/onnx: drop -o and "
                                  "--example-shape")
    elif not args.example_shape or not args.output:
        raise SplitInferError("exporting MODULE:FACTORY needs --example-shape and -o DIR")


def _floats(flag: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SplitInferError(f"{flag} {text!r}: give one number per channel, separated by "
                              "commas, e.g. 0.485,0.456,0.406") from None


def image_input_from_args(args: argparse.Namespace) -> ImageInput | None:
    """The ``--image-*`` flags as an ImageInput (None without them); bad combinations refused."""
    from splitinfer.model.image_input import PRESETS, ImageInput

    custom = args.image_mean is not None or args.image_std is not None
    if args.image_input is None and not custom and args.image_scale is None:
        return None
    if args.from_bundle:
        raise SplitInferError("--image-input/--image-mean/--image-std/--image-scale describe "
                              "a new bundle's input; a bundle made with --from-bundle keeps "
                              "its own: drop them")
    if args.image_input is not None and (custom or args.image_scale is not None):
        raise SplitInferError(f"--image-input {args.image_input} is a preset (mean, std and "
                              "scale): drop --image-mean/--image-std/--image-scale, or drop "
                              "the preset and give --image-mean and --image-std")
    if args.image_input is None and (args.image_mean is None or args.image_std is None):
        raise SplitInferError("a custom image input needs both --image-mean and --image-std "
                              "(one value per channel each), e.g. --image-mean 0.5,0.5,0.5 "
                              "--image-std 0.5,0.5,0.5; or use --image-input "
                              f"{'|'.join(PRESETS)}")
    if len(args.example_shape or ()) > 1:
        raise SplitInferError("an image model takes one input: give one --example-shape, the "
                              "model's own float N,C,H,W shape (e.g. 1,3,224,224); the bundle "
                              "then takes uint8 frames N,H,W,C")
    if args.image_input is not None:
        return PRESETS[args.image_input]
    try:
        return ImageInput(mean=_floats("--image-mean", args.image_mean),
                          std=_floats("--image-std", args.image_std),
                          scale=1 / 255 if args.image_scale is None else args.image_scale)
    except ValueError as exc:
        raise SplitInferError(f"bad --image-mean/--image-std/--image-scale: {exc}") from exc


def _resolve_cuts(manifest: Any, keys: Sequence[str]) -> list[int]:
    """Cut ids for ``--cut`` values (ids or names), checked against the manifest."""
    by_name = {c.name: c.id for c in manifest.cuts}
    ids = []
    for key in keys:
        if key.isdigit() and int(key) < len(manifest.cuts):
            ids.append(int(key))
        elif key in by_name:
            ids.append(by_name[key])
        else:
            raise SplitInferError(f"unknown --cut {key!r}: {manifest.name} has cuts "
                                  f"0..{len(manifest.cuts) - 1}, named e.g. "
                                  f"{[c.name for c in manifest.cuts[1:4]]} (`splitinfer "
                                  "inspect` lists them)")
    return list(dict.fromkeys(ids))


def _export_onnx(args: argparse.Namespace, directory: str) -> list[str]:
    """Write the ONNX files of ``--cut``; the paths written."""
    from splitinfer.model.manifest import read_manifest
    from splitinfer.model.onnx_export import INDEX, export_onnx

    ui: Output = args.ui
    cut_ids = _resolve_cuts(read_manifest(directory), args.cut)
    # the bar outside quiet_torch: torch's stderr is swallowed, the bar's must not be
    with ui.progress("exporting ONNX", len(cut_ids)) as step, quiet_torch(args):
        out = export_onnx(directory, cut_ids, tail=not args.no_onnx_tail, opset=args.onnx_opset,
                          progress=step)
    ui.line(f"wrote ONNX {'heads' if args.no_onnx_tail else 'heads and tails'} for cut(s) "
            f"{', '.join(map(str, cut_ids))} to {out} (checked against torch)")
    index = json.loads((out / INDEX).read_text())
    parts = ("head",) if args.no_onnx_tail else ("head", "tail")
    return [str(out / entry["file"]) for cut_id in cut_ids for part in parts
            if (entry := index["cuts"][str(cut_id)].get(part)) and "file" in entry]


def _build_model(args: argparse.Namespace) -> Any:
    """The user's model: ``MODULE:FACTORY`` called with ``--factory-kwargs``."""
    factory = load_factory(args.model)
    try:
        kwargs = json.loads(args.factory_kwargs) if args.factory_kwargs else {}
    except ValueError as exc:
        raise SplitInferError(f"--factory-kwargs is not valid JSON ({exc})") from exc
    if not isinstance(kwargs, dict):
        raise SplitInferError("--factory-kwargs must be a JSON object, e.g. "
                              "'{\"num_classes\": 10}'")
    try:
        return factory(**kwargs) if callable(factory) else factory
    except Exception as exc:  # the user's code: report it, do not dump a traceback
        raise SplitInferError(f"{args.model}(**{kwargs}) raised {type(exc).__name__}: "
                              f"{exc}") from exc


def _export_summary(directory: str, onnx_files: list[str]) -> dict[str, Any]:
    """``export --json``: what was written."""
    from splitinfer.model.manifest import read_manifest

    m = read_manifest(directory)
    summary = {"bundle": str(directory), "name": m.name, "version": m.version,
               "fingerprint": m.fingerprint, "cuts": len(m.cuts), "onnx": onnx_files}
    if m.image_input is not None:  # only image bundles have the key, as in the manifest
        summary["image_input"] = m.image_input.to_json()
    return summary


def cmd_export(args: argparse.Namespace) -> int:
    from splitinfer.model.bundle import save_bundle
    from splitinfer.model.split_model import partition

    _check_export_args(args)
    image_input = image_input_from_args(args)
    ui: Output = args.ui
    directory = args.from_bundle or args.output
    if not args.from_bundle:
        with ui.status(f"building {args.model}"):
            model = _build_model(args)
        examples = example_inputs(args.example_shape, args.example_dtype or [], args.int_high,
                                  args.seed)
        name = args.name or args.model.rpartition(":")[2].rpartition(".")[2]
        # export_bundle's two steps, one spinner each (capturing is the long one)
        with ui.status(f"capturing {name} with torch.export and finding its cuts"), \
                quiet_torch(args):
            sm = partition(model, examples, name=name, capture="export",
                           max_cut_tensors=args.max_cut_tensors, image_input=image_input)
        with ui.status(f"writing the bundle to {args.output}"), quiet_torch(args):
            manifest = save_bundle(sm, args.output, name=name, version=args.version,
                                   overwrite=args.force)
        ui.line(f"wrote bundle {args.output}: {manifest.name} v{manifest.version}, "
                f"{len(manifest.cuts)} cuts, fingerprint {manifest.fingerprint[:16]}")
        if manifest.image_input is not None:
            frame = "x".join("N" if d < 0 else str(d) for d in manifest.inputs[0].shape)
            ui.line(f"input: frames {frame}, {manifest.image_input.describe()} "
                    "(normalized in the graph)")
    onnx_files = _export_onnx(args, directory) if args.onnx else []
    if args.json:
        ui.json(_export_summary(directory, onnx_files))
    return 0


def _add_image_flags(e: argparse.ArgumentParser) -> None:
    from splitinfer.model.image_input import PRESETS

    e.add_argument("--image-input", choices=sorted(PRESETS), default=None,
                   help="the model takes an image: the bundle takes uint8 NHWC frames "
                        "(N,H,W,C, as a camera or image decoder gives them; NHWC only) and "
                        "normalizes them in its graph with this preset's mean/std "
                        "(imagenet: torchvision's); --example-shape stays the model's N,C,H,W")
    e.add_argument("--image-mean", metavar="M1,M2,M3",
                   help="custom image input: per-channel mean after scaling (with --image-std)")
    e.add_argument("--image-std", metavar="S1,S2,S3",
                   help="custom image input: per-channel std (> 0; with --image-mean)")
    e.add_argument("--image-scale", type=float, default=None,
                   help="custom image input: multiplies the uint8 frame before the mean/std "
                        "(default 1/255: 0..255 -> 0..1)")


def add_parser(sub: Any) -> None:
    """Add ``export`` to the CLI's subparsers."""
    e = sub.add_parser(
        "export", help="partition a model and write a bundle (and ONNX heads/tails)",
        description="Partition a model and write a bundle; with --onnx --cut ID also write "
                    "the ONNX head and tail of those cuts (DIR/onnx/, for devices without "
                    "torch). `export --from-bundle DIR --onnx --cut ID` adds ONNX files to an "
                    "existing bundle.",
        epilog="examples:\n  splitinfer export torchvision.models:resnet18 --example-shape "
               "1,3,224,224 -o r18 --onnx --cut 12\n  splitinfer export --from-bundle r18 "
               "--onnx --cut layer3.1.relu",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("model", nargs="?", help="MODULE:FACTORY that returns an nn.Module "
                                            "(e.g. torchvision.models:resnet18); leave out "
                                            "with --from-bundle")
    e.add_argument("--example-shape", type=parse_shape, action="append",
                   help="shape of one example input, dim 0 the batch (repeat for several "
                        "inputs), e.g. 1,3,224,224 (required with MODULE:FACTORY)")
    e.add_argument("--example-dtype", action="append",
                   help="dtype of each example input (default float32), e.g. int64")
    e.add_argument("--int-high", type=int, default=100,
                   help="integer example inputs are drawn from [0, INT_HIGH) (default 100)")
    e.add_argument("--factory-kwargs", help="JSON object passed to FACTORY as keywords")
    e.add_argument("-o", "--output", help="bundle directory to write (required with "
                                          "MODULE:FACTORY)")
    e.add_argument("--name", help="model name (default: the factory's name)")
    e.add_argument("--version", default="1", help="model version (default 1)")
    e.add_argument("--max-cut-tensors", type=int, default=4,
                   help="offer only cuts where at most this many tensors cross (default 4)")
    e.add_argument("--seed", type=int, default=0, help="seed for the example inputs")
    _add_image_flags(e)
    e.add_argument("--force", action="store_true", help="replace an existing bundle")
    e.add_argument("--onnx", action="store_true",
                   help="also write the ONNX head and tail of every --cut into DIR/onnx/ "
                        "(checked against torch at batch 1 and 3); needs onnx, onnxscript "
                        "and onnxruntime")
    e.add_argument("--cut", action="append", metavar="ID",
                   help="cut id or name to write as ONNX (repeat for several); with --onnx")
    e.add_argument("--from-bundle", metavar="DIR",
                   help="add ONNX files to this existing bundle instead of exporting a model")
    e.add_argument("--no-onnx-tail", action="store_true",
                   help="write only the ONNX heads (what a device runs)")
    e.add_argument("--onnx-opset", type=int, default=None,
                   help="ONNX opset (default: the exporter's)")
    add_output_flags(e, "a summary as JSON: bundle, name, version, fingerprint, cuts, ONNX files")
    e.set_defaults(func=cmd_export)
