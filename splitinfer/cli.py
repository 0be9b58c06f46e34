"""The ``splitinfer`` command line: export a model to a bundle, inspect it, run the demo.

::

    splitinfer export torchvision.models:resnet18 --example-shape 1,3,224,224 -o bundles/r18
    splitinfer export --from-bundle bundles/r18 --onnx --cut 12
    splitinfer inspect bundles/r18
    splitinfer demo                 # split inference live; --offline: the codec demo
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import sys
from typing import Any, Sequence

from .errors import SplitInferError
from .link import parse_duration, parse_rate

log = logging.getLogger("splitinfer")

_INT_DTYPES = {"int64", "int32", "int16", "int8", "uint8", "bool"}
#: how many times slower than this machine ``splitinfer demo`` makes its device by default
DEMO_SLOWDOWN = 15.0


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad shape {text!r}: use comma-separated positive ints, e.g. 1,3,224,224") from None
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: every dim must be >= 1")
    return shape


def _load_factory(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SplitInferError(f"bad model {spec!r}: use MODULE:FACTORY, e.g. "
                              "torchvision.models:resnet18 or mypkg.models:build")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SplitInferError(f"cannot import {module_name!r} ({exc}); is it installed, or on "
                              "PYTHONPATH?") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SplitInferError(f"{module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _example_inputs(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str],
                    int_high: int, seed: int) -> tuple[Any, ...]:
    import torch

    if dtypes and len(dtypes) != len(shapes):
        raise SplitInferError(f"{len(dtypes)} --example-dtype for {len(shapes)} "
                              "--example-shape; give one dtype per shape, or none")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype in zip(shapes, list(dtypes) or ["float32"] * len(shapes)):
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise SplitInferError(f"unknown --example-dtype {dtype!r}; e.g. float32, int64")
        if dtype in _INT_DTYPES:
            high = 2 if dtype == "bool" else int_high
            out.append(torch.randint(0, high, shape, generator=gen).to(getattr(torch, dtype)))
        else:
            out.append(torch.randn(shape, generator=gen).to(getattr(torch, dtype)))
    return tuple(out)


def _quiet_torch(args: argparse.Namespace) -> Any:
    """torch writes pages of graph dumps when a capture fails; our own error says what matters.

    Returns a context manager that swallows torch's stderr chatter (kept with --log-level DEBUG).
    """
    if args.log_level == "DEBUG":
        return contextlib.nullcontext()
    import torch._logging

    torch._logging.set_logs(all=logging.ERROR)
    return contextlib.redirect_stderr(io.StringIO())


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


def _export_onnx(args: argparse.Namespace, directory: str) -> None:
    from .bundle import read_manifest
    from .onnx_export import export_onnx

    cut_ids = _resolve_cuts(read_manifest(directory), args.cut)
    with _quiet_torch(args):
        out = export_onnx(directory, cut_ids, tail=not args.no_onnx_tail, opset=args.onnx_opset)
    print(f"wrote ONNX {'heads' if args.no_onnx_tail else 'heads and tails'} for cut(s) "
          f"{', '.join(map(str, cut_ids))} to {out} (checked against torch)")


def cmd_export(args: argparse.Namespace) -> int:
    from .bundle import export_bundle

    _check_export_args(args)
    if args.from_bundle:
        _export_onnx(args, args.from_bundle)
        return 0
    factory = _load_factory(args.model)
    try:
        kwargs = json.loads(args.factory_kwargs) if args.factory_kwargs else {}
    except ValueError as exc:
        raise SplitInferError(f"--factory-kwargs is not valid JSON ({exc})") from exc
    if not isinstance(kwargs, dict):
        raise SplitInferError("--factory-kwargs must be a JSON object, e.g. "
                              "'{\"num_classes\": 10}'")
    try:
        model = factory(**kwargs) if callable(factory) else factory
    except Exception as exc:  # the user's code: report it, do not dump a traceback
        raise SplitInferError(f"{args.model}(**{kwargs}) raised {type(exc).__name__}: "
                              f"{exc}") from exc
    examples = _example_inputs(args.example_shape, args.example_dtype or [], args.int_high,
                               args.seed)
    name = args.name or args.model.rpartition(":")[2].rpartition(".")[2]
    with _quiet_torch(args):
        manifest = export_bundle(model, examples, args.output, name=name,
                                 version=args.version, overwrite=args.force,
                                 max_cut_tensors=args.max_cut_tensors)
    print(f"wrote bundle {args.output}: {manifest.name} v{manifest.version}, "
          f"{len(manifest.cuts)} cuts, fingerprint {manifest.fingerprint[:16]}")
    if args.onnx:
        _export_onnx(args, args.output)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .bundle import read_manifest

    m = read_manifest(args.bundle)
    if args.json:
        print(json.dumps(m.to_json(), indent=2))
        return 0
    print(f"{m.name} v{m.version}  capture={m.capture}  fingerprint={m.fingerprint[:16]}")
    print("inputs:  " + ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in m.inputs))
    print("outputs: " + ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in m.outputs))
    print(f"{'id':>4}  {'name':<44} {'device FLOPs':>12}  {'KB/sample fp32':>14}  tensors")
    for c in m.cuts:
        shapes = " ".join(f"{list(t.shape)}:{t.dtype}" for t in c.tensors)
        print(f"{c.id:>4}  {c.name[:44]:<44} {c.head_flops_fraction:>11.1%}  "
              f"{c.nbytes_per_sample / 1024:>14.1f}  {shapes}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.offline:
        from .demo import run_demo

        args.model = args.model or "torchvision.models:resnet18"
        args.out = args.out or ".demo/offline.json"
        return run_demo(args, quiet=_quiet_torch(args))
    from .cli_demo import run_live  # imports torch, grpc and the device client: only here

    args.model = args.model or "mobilenet_v3_small"
    args.out = args.out or ".demo"
    for name, low in (("requests", 1), ("input_size", 32)):
        if getattr(args, name) < low:
            raise SplitInferError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be "
                                  f">= {low}")
    if not 0 <= args.device_cpu_quota <= 64 or not args.deadline > 0:
        raise SplitInferError("--device-cpu-quota must be 0 (off) to 64 cores and --deadline "
                              "> 0 seconds")
    if args.device_slowdown is None:  # the quota, when asked for, replaces the dilation
        args.device_slowdown = 1.0 if args.device_cpu_quota > 0 else DEMO_SLOWDOWN
    elif not 1 <= args.device_slowdown <= 1000:
        raise SplitInferError(f"--device-slowdown {args.device_slowdown:g}: must be 1 (full "
                              f"speed) to 1000")
    try:
        with _quiet_torch(args):
            return run_live(args)
    except KeyboardInterrupt:
        print("splitinfer demo: interrupted; the edge node, link emulator and CPU quota are "
              "stopped", file=sys.stderr)
        return 130


def _parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"bad address {text!r}: use HOST:PORT or :PORT "
                                         "(:PORT means 127.0.0.1:PORT)")
    return host.strip("[]") or "127.0.0.1", int(port)


def _arg_type(parse: Any) -> Any:
    """Wrap a ``ValueError``-raising parser so argparse reports its message and exits 2."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def cmd_netem(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from .netem import LinkShape, NetemProxy

    try:
        shape = LinkShape(rate_bps=args.rate, delay_s=args.delay, jitter_s=args.jitter,
                          burst_bytes=args.burst, jitter_dist=args.jitter_dist)
    except ValueError as exc:
        raise SplitInferError(str(exc)) from exc

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with NetemProxy(args.target, args.listen, shape=shape, seed=args.seed) as proxy:
            print(f"netem listening on {args.listen[0]}:{proxy.port} -> "
                  f"{args.target[0]}:{args.target[1]}", flush=True)
            await stop.wait()
            s = proxy.stats
        print(f"netem stopped: {s.up_bytes} bytes up, {s.down_bytes} bytes down, "
              f"{s.accepted} connections", flush=True)

    asyncio.run(serve())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="splitinfer", description=__doc__.split("\n")[0])
    p.add_argument("--log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level")
    sub = p.add_subparsers(dest="command", required=True)

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
    e.add_argument("--example-shape", type=_parse_shape, action="append",
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
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("inspect", help="list a bundle's cuts")
    i.add_argument("bundle", help="bundle directory")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=cmd_inspect)

    d = sub.add_parser(
        "demo", help="split inference live: edge node, emulated link, planner, baselines",
        description="Run the product end to end on this machine: a MobileNetV3-Small bundle (random "
                    "weights, built once under .demo/), a real edge node subprocess, a link "
                    "emulator (default 20 Mbit/s, 40 ms RTT) and the device client, which "
                    "plans a cut and codec; then the same requests device-only and edge-only. "
                    "Prints p50/p95 latency and bytes per request, writes DIR/demo.json and "
                    "DIR/demo.png. --offline: the codec demo without a network (partition, "
                    "encode/decode at a few cuts, compare).")
    d.add_argument("--offline", action="store_true",
                   help="the offline codec demo (flags --model MODULE:FACTORY, "
                        "--example-shape, --codecs, --cuts, --out FILE.json)")
    d.add_argument("--model", default=None,
                   help="live: a torchvision classification model name (default "
                        "mobilenet_v3_small); --offline: MODULE:FACTORY (default "
                        "torchvision.models:resnet18)")
    d.add_argument("--input-size", type=int, default=224,
                   help="live: input side, the input is 1x3xNxN (default 224)")
    d.add_argument("--rate", type=_arg_type(parse_rate),
                   default=os.environ.get("SPLITINFER_DEMO_RATE", "20mbit"),
                   help="live: link rate each way (default $SPLITINFER_DEMO_RATE or 20mbit)")
    d.add_argument("--rtt", type=_arg_type(parse_duration),
                   default=os.environ.get("SPLITINFER_DEMO_RTT", "40ms"),
                   help="live: link round-trip time (default $SPLITINFER_DEMO_RTT or 40ms)")
    d.add_argument("--requests", type=int, default=60,
                   help="live: timed requests per mode (default 60)")
    slow = d.add_mutually_exclusive_group()
    slow.add_argument("--device-slowdown", type=float, default=None, metavar="K",
                      help="live: make the device K times slower than this machine by time "
                           "dilation: each piece of device work idles K-1 times its CPU time "
                           f"(default {DEMO_SLOWDOWN:g}; 1 = full speed)")
    slow.add_argument("--device-cpu-quota", type=float, default=0.0, metavar="CORES",
                      help="live: instead, confine the device to CORES cores with a cgroup-v1 "
                           "quota where writable (e.g. 0.1; noisier than --device-slowdown)")
    d.add_argument("--deadline", type=float, default=2.0,
                   help="live: per-request deadline in seconds before the local fallback "
                        "(default 2)")
    d.add_argument("--example-shape", type=_parse_shape, default=(1, 3, 224, 224),
                   help="--offline: the input shape")
    d.add_argument("--codecs", default="fp32,fp16,bf16,int8,int8+zstd",
                   help="--offline: comma-separated codecs to compare")
    d.add_argument("--cuts", type=int, default=8,
                   help="--offline: how many cuts to show (spread evenly)")
    d.add_argument("--out", default=None,
                   help="live: output folder (default .demo); --offline: the JSON file "
                        "(default .demo/offline.json)")
    d.set_defaults(func=cmd_demo)

    from .cli_plan import add_parser as add_plan_parser

    add_plan_parser(sub, _arg_type)

    n = sub.add_parser("netem", help="run a TCP proxy that emulates a link "
                                     "(rate, delay, jitter)")
    n.add_argument("--listen", type=_parse_address, default=("127.0.0.1", 0),
                   help="HOST:PORT or :PORT to listen on (default: a free port)")
    n.add_argument("--target", type=_parse_address, required=True,
                   help="HOST:PORT or :PORT to forward to, e.g. :50051")
    n.add_argument("--rate", type=_arg_type(parse_rate), default=None,
                   help="rate per direction, tc units: bit, kbit, mbit, gbit (default: none)")
    n.add_argument("--delay", type=_arg_type(parse_duration), default=0.0,
                   help="one-way delay per direction, e.g. 20ms (units us, ms, s)")
    n.add_argument("--jitter", type=_arg_type(parse_duration), default=0.0,
                   help="delay jitter, e.g. 2ms (never reorders bytes)")
    n.add_argument("--jitter-dist", choices=["uniform", "normal"], default="uniform",
                   help="uniform: +-JITTER; normal: JITTER is the standard deviation")
    n.add_argument("--burst", type=int, default=None,
                   help="token bucket size in bytes (default max(rate x 5 ms, 16 KB))")
    n.add_argument("--seed", type=int, default=0, help="seed for the jitter")
    n.set_defaults(func=cmd_netem)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (SplitInferError, OSError) as exc:
        print(f"splitinfer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
