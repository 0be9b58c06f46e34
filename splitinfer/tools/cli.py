"""The ``splitinfer`` command line: export a model to a bundle, inspect it, run the demo.

::

    splitinfer export torchvision.models:resnet18 --example-shape 1,3,224,224 -o bundles/r18
    splitinfer export --from-bundle bundles/r18 --onnx --cut 12
    splitinfer inspect bundles/r18
    splitinfer demo                 # split inference live; --offline: the codec demo

Output goes through ``splitinfer.tools.console``: rich tables and progress bars on a terminal,
plain aligned lines when stdout is not one or with ``--quiet``, and ``--json`` where the result
is data (then stdout carries the JSON alone). ``export`` and ``plan`` live in their own modules
(``splitinfer.tools.export``, ``splitinfer.tools.plan``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Sequence

from splitinfer.core.errors import SplitInferError
from splitinfer.core.link import parse_duration, parse_rate

from .console import Output, add_output_flags
from .factory import parse_shape, quiet_torch

log = logging.getLogger("splitinfer")

#: how many times slower than this machine ``splitinfer demo`` makes its device by default
DEMO_SLOWDOWN = 15.0


def cmd_inspect(args: argparse.Namespace) -> int:
    from splitinfer.model.manifest import read_manifest

    ui: Output = args.ui
    m = read_manifest(args.bundle)
    if args.json:
        ui.json(m.to_json())
        return 0
    ui.line(f"{m.name} v{m.version}  capture={m.capture}  fingerprint={m.fingerprint[:16]}",
            style="bold")
    ui.line("inputs:  " + ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in m.inputs))
    ui.line("outputs: " + ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in m.outputs))
    if m.image_input is not None:
        ui.line(f"image input: {m.image_input.describe()} (normalized in the graph; cut 0 "
                "carries the frame)")
    ui.table([("id", "right"), "name", ("device FLOPs", "right"), ("KB/sample fp32", "right"),
              "tensors"],
             [(c.id, c.name, f"{c.head_flops_fraction:.1%}", f"{c.nbytes_per_sample / 1024:.1f}",
               " ".join(f"{list(t.shape)}:{t.dtype}" for t in c.tensors)) for c in m.cuts])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.offline:
        from .codec_demo import run_demo

        args.model = args.model or "torchvision.models:resnet18"
        args.out = args.out or ".demo/offline.json"
        return run_demo(args, quiet=quiet_torch(args))
    from .demo import (
        run_live,  # imports torch, grpc and the device client: only here
    )

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
        with quiet_torch(args):
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
    p.add_argument("--quiet", dest="global_quiet", action="store_true",
                   help="plain output without progress bars or spinners, for every command "
                        "(plain is also the default when stdout is not a terminal)")
    sub = p.add_subparsers(dest="command", required=True)

    from .export import add_parser as add_export_parser

    add_export_parser(sub)

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
    d.add_argument("--example-shape", type=parse_shape, default=(1, 3, 224, 224),
                   help="--offline: the input shape")
    d.add_argument("--codecs", default="fp32,fp16,bf16,int8,int8+zstd",
                   help="--offline: comma-separated codecs to compare")
    d.add_argument("--cuts", type=int, default=8,
                   help="--offline: how many cuts to show (spread evenly)")
    d.add_argument("--out", default=None,
                   help="live: output folder (default .demo); --offline: the JSON file "
                        "(default .demo/offline.json)")
    add_output_flags(d, "the result (what the demo writes to its JSON file) as JSON")
    d.set_defaults(func=cmd_demo)

    from .plan import add_parser as add_plan_parser

    add_plan_parser(sub, _arg_type)

    from .fidelity import add_parser as add_fidelity_parser

    add_fidelity_parser(sub, _arg_type)

    from .bottleneck import add_parser as add_bottleneck_parser

    add_bottleneck_parser(sub, _arg_type)

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
    # `splitinfer --quiet CMD` and `CMD --quiet` mean the same; a subcommand's own default
    # would overwrite the global flag were they one dest
    args.quiet = args.global_quiet or getattr(args, "quiet", False)
    args.ui = Output(quiet=args.quiet, json_output=getattr(args, "json", False))
    try:
        return int(args.func(args) or 0)
    except (SplitInferError, OSError) as exc:
        print(f"splitinfer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
