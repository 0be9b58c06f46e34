#!/usr/bin/env python3
"""Regenerate splitinfer/wire/v1/ from proto/splitinfer/v1/*.proto with the pinned grpcio-tools.

    python scripts/gen_proto.py          # write the generated files
    python scripts/gen_proto.py --check  # exit 1 and list the files that are stale

protoc, run with ``-I proto``, writes ``from splitinfer.v1 import tensor_pb2``; the package lives
at ``splitinfer/wire/v1/``, so the script generates into a temporary folder, rewrites those imports
to ``splitinfer.wire.v1`` and only then compares or writes. Only files with a ``service`` get a
``*_pb2_grpc.py``: grpc is imported nowhere else in splitinfer.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import metadata
from pathlib import Path

#: The grpcio-tools version the committed code was generated with. Other versions write other
#: code (and other runtime version checks), so the script refuses them.
GRPCIO_TOOLS_VERSION = "1.85.1"

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_PACKAGE = "splitinfer/v1"
OUT_DIR = ROOT / "splitinfer" / "wire" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

INIT_TEXT = ('"""Generated protobuf and gRPC code for splitinfer.v1; regenerate with '
             'scripts/gen_proto.py."""\n')

# `from splitinfer.v1 import x_pb2` / `import splitinfer.v1.x_pb2`, and the module name protobuf
# gives its message classes ('splitinfer.v1.x_pb2'). Descriptor bytes hold the proto package name
# 'splitinfer.v1.Tensor', which must stay as it is: the patterns only touch module names.
_IMPORT_FROM = re.compile(r"^(\s*)from splitinfer\.v1 import ", re.MULTILINE)
_IMPORT_PLAIN = re.compile(r"^(\s*)import splitinfer\.v1\.", re.MULTILINE)
_MODULE_NAME = re.compile(r"'splitinfer\.v1\.(\w+_pb2)'")
_CODE_PATH = re.compile(r"generated code in splitinfer/v1/")


def check_tools_version() -> None:
    """Exit with a clear message unless the pinned grpcio-tools is installed."""
    try:
        found = metadata.version("grpcio-tools")
    except metadata.PackageNotFoundError:
        sys.exit(f"gen_proto: grpcio-tools is not installed; "
                 f"install it with: pip install grpcio-tools=={GRPCIO_TOOLS_VERSION}")
    if found != GRPCIO_TOOLS_VERSION:
        sys.exit(f"gen_proto: grpcio-tools {found} is installed, but the generated code is pinned "
                 f"to {GRPCIO_TOOLS_VERSION}; install it with: "
                 f"pip install grpcio-tools=={GRPCIO_TOOLS_VERSION}")


def rewrite_imports(text: str) -> str:
    """Point protoc's imports of ``splitinfer.v1`` at ``splitinfer.wire.v1``."""
    text = _IMPORT_FROM.sub(r"\1from splitinfer.wire.v1 import ", text)
    text = _IMPORT_PLAIN.sub(r"\1import splitinfer.wire.v1.", text)
    text = _CODE_PATH.sub("generated code in splitinfer/wire/v1/", text)
    return _MODULE_NAME.sub(r"'splitinfer.wire.v1.\1'", text)


def run_protoc(args: list[str]) -> None:
    from grpc_tools import protoc

    include = str(Path(protoc.__file__).parent / "_proto")  # well-known types
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", *args])
    if code != 0:
        sys.exit(f"gen_proto: protoc failed (exit {code}) on {args[-1]}")


def generate() -> dict[str, str]:
    """Generate every file into a temporary folder; return {file name: text}."""
    protos = sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    if not protos:
        sys.exit(f"gen_proto: no .proto files in {PROTO_ROOT / PROTO_PACKAGE}")
    files: dict[str, str] = {"__init__.py": INIT_TEXT}
    with tempfile.TemporaryDirectory() as tmp:
        rel = [str(p.relative_to(PROTO_ROOT)) for p in protos]
        run_protoc([f"--python_out={tmp}", f"--pyi_out={tmp}", *rel])
        with_service = [r for r, p in zip(rel, protos)
                        if re.search(r"^\s*service\s", p.read_text(), re.MULTILINE)]
        if with_service:
            run_protoc([f"--grpc_python_out={tmp}", *with_service])
        for path in sorted((Path(tmp) / PROTO_PACKAGE).iterdir()):
            files[path.name] = rewrite_imports(path.read_text())
    return files


def committed_files() -> dict[str, str]:
    if not OUT_DIR.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(OUT_DIR.iterdir())
            if p.is_file() and (p.name == "__init__.py" or p.name.endswith(GENERATED_SUFFIXES))}


def find_stale(fresh: dict[str, str], old: dict[str, str]) -> list[str]:
    """Names that differ, are missing, or are left over from a .proto that is gone."""
    return sorted(n for n in fresh.keys() | old.keys() if fresh.get(n) != old.get(n))


def write_files(fresh: dict[str, str], old: dict[str, str]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in old.keys() - fresh.keys():
        (OUT_DIR / name).unlink()
    for name, text in fresh.items():
        (OUT_DIR / name).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary folder and exit 1 if the committed "
                             "files differ")
    args = parser.parse_args(argv)
    check_tools_version()
    fresh, old = generate(), committed_files()
    stale = find_stale(fresh, old)
    rel_out = OUT_DIR.relative_to(ROOT)
    if args.check:
        if stale:
            print(f"gen_proto: stale generated files in {rel_out}/ "
                  f"(run: python scripts/gen_proto.py):", file=sys.stderr)
            for name in stale:
                print(f"  {rel_out / name}", file=sys.stderr)
            return 1
        print(f"gen_proto: {rel_out}/ is up to date ({len(fresh)} files)")
        return 0
    write_files(fresh, old)
    print(f"gen_proto: wrote {len(fresh)} files to {rel_out}/ ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
