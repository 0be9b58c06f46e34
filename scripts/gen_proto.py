#!/usr/bin/env python3
"""Regenerate splitinfer/wire/v1/ and splitinfer/wire/oip/ from proto/ with the pinned grpcio-tools.

    python scripts/gen_proto.py          # write the generated files
    python scripts/gen_proto.py --check  # exit 1 and list the files that are stale

Two packages:

    proto/splitinfer/v1/*.proto  ->  splitinfer/wire/v1/   our protocol (package splitinfer.v1)
    proto/oip/*.proto            ->  splitinfer/wire/oip/  the Open Inference Protocol (package
                                     inference), registered in a descriptor pool of its own

protoc, run with ``-I proto``, writes ``from splitinfer.v1 import tensor_pb2``; the package lives
at ``splitinfer/wire/v1/``, so the script generates into a temporary folder, rewrites those imports
to ``splitinfer.wire.v1`` (and ``oip`` to ``splitinfer.wire.oip``) and only then compares or
writes. Only files with a ``service`` get a ``*_pb2_grpc.py``: grpc is imported nowhere else in
splitinfer.

The generator is grpcio-tools ``GRPCIO_TOOLS_VERSION`` (protoc 25.1, gencode for protobuf 4.25.1):
the oldest output that today's protobuf still loads, so the one committed code runs on every
protobuf from 4.25.1 to 7.x and splitinfer installs next to packages that pin protobuf < 7
(tritonclient, kserve) or < 6. That grpcio-tools cannot share a venv with a newer protobuf, so the
script runs it from a small venv of its own, ``build/protoc-venv`` (made on first use, ~20 s).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

#: The grpcio-tools version the committed code is generated with. Other versions write other
#: code (and other runtime version checks), so the script only runs this one.
GRPCIO_TOOLS_VERSION = "1.62.3"

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
TOOL_VENV = ROOT / "build" / "protoc-venv"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


class Package:
    """One proto folder and the Python package its generated code goes to."""

    def __init__(self, proto_dir: str, module: str, init_text: str, *,
                 private_pool: bool = False) -> None:
        self.proto_dir = proto_dir            # under proto/, e.g. "splitinfer/v1"
        self.module = module                  # e.g. "splitinfer.wire.v1"
        self.out_dir = ROOT / Path(*module.split("."))
        self.init_text = init_text
        self.private_pool = private_pool

    @property
    def proto_module(self) -> str:
        return self.proto_dir.replace("/", ".")


PACKAGES = (
    Package("splitinfer/v1", "splitinfer.wire.v1",
            '"""Generated protobuf and gRPC code for splitinfer.v1; regenerate with '
            'scripts/gen_proto.py."""\n'),
    Package("oip", "splitinfer.wire.oip",
            '"""Generated protobuf and gRPC code for the Open Inference Protocol (package '
            '`inference`), in a\ndescriptor pool of its own; regenerate with '
            'scripts/gen_proto.py."""\n', private_pool=True),
)

# the pool line protoc writes, and what a package with a private pool gets instead
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = ("# a pool of its own: tritonclient and kserve register the same 'inference.*' "
                 "names in the default one\n_POOL = _descriptor_pool.DescriptorPool()\n"
                 "DESCRIPTOR = _POOL.AddSerializedFile(")


def tool_python() -> Path:
    """The generator venv's python, made (and grpcio-tools installed) when missing."""
    python = TOOL_VENV / "bin" / "python"
    stamp = TOOL_VENV / f".grpcio-tools-{GRPCIO_TOOLS_VERSION}"
    if stamp.exists():
        return python
    print(f"gen_proto: making {TOOL_VENV.relative_to(ROOT)} with grpcio-tools=="
          f"{GRPCIO_TOOLS_VERSION}", file=sys.stderr)
    venv.create(TOOL_VENV, with_pip=True, clear=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                           f"grpcio-tools=={GRPCIO_TOOLS_VERSION}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"gen_proto: cannot install grpcio-tools=={GRPCIO_TOOLS_VERSION} into "
                 f"{TOOL_VENV}:\n{done.stdout}{done.stderr}")
    stamp.touch()
    return python


def rewrite(text: str, pkg: Package) -> str:
    """Point protoc's imports and module names at ``pkg.module``; a private pool if asked."""
    src = re.escape(pkg.proto_module)
    text = re.sub(rf"^(\s*)from {src} import ", rf"\1from {pkg.module} import ", text,
                  flags=re.MULTILINE)
    text = re.sub(rf"^(\s*)import {src}\.", rf"\1import {pkg.module}.", text, flags=re.MULTILINE)
    text = re.sub(rf"'{src}\.(\w+_pb2)'", rf"'{pkg.module}.\1'", text)
    text = text.replace(f"generated code in {pkg.proto_dir}/",
                        f"generated code in {pkg.module.replace('.', '/')}/")
    if pkg.private_pool and _DEFAULT_POOL in text:
        text = text.replace(_DEFAULT_POOL, _PRIVATE_POOL)
    return text


def rewrite_imports(text: str) -> str:
    """Point protoc's imports of ``splitinfer.v1`` at ``splitinfer.wire.v1``."""
    return rewrite(text, PACKAGES[0])


def run_protoc(python: Path, args: list[str]) -> None:
    done = subprocess.run([str(python), "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", *args],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if done.returncode != 0:
        sys.exit(f"gen_proto: protoc failed (exit {done.returncode}) on {args[-1]}:\n"
                 f"{done.stderr}")


def generate(pkg: Package, python: Path) -> dict[str, str]:
    """Generate one package into a temporary folder; return {file name: text}."""
    protos = sorted((PROTO_ROOT / pkg.proto_dir).glob("*.proto"))
    if not protos:
        sys.exit(f"gen_proto: no .proto files in {PROTO_ROOT / pkg.proto_dir}")
    files: dict[str, str] = {"__init__.py": pkg.init_text}
    with tempfile.TemporaryDirectory() as tmp:
        rel = [str(p.relative_to(PROTO_ROOT)) for p in protos]
        run_protoc(python, [f"--python_out={tmp}", f"--pyi_out={tmp}", *rel])
        with_service = [r for r, p in zip(rel, protos)
                        if re.search(r"^\s*service\s", p.read_text(), re.MULTILINE)]
        if with_service:
            run_protoc(python, [f"--grpc_python_out={tmp}", *with_service])
        for path in sorted((Path(tmp) / pkg.proto_dir).iterdir()):
            files[path.name] = rewrite(path.read_text(), pkg)
    return files


def committed_files(pkg: Package) -> dict[str, str]:
    if not pkg.out_dir.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(pkg.out_dir.iterdir())
            if p.is_file() and (p.name == "__init__.py" or p.name.endswith(GENERATED_SUFFIXES))}


def find_stale(fresh: dict[str, str], old: dict[str, str]) -> list[str]:
    """Names that differ, are missing, or are left over from a .proto that is gone."""
    return sorted(n for n in fresh.keys() | old.keys() if fresh.get(n) != old.get(n))


def write_files(pkg: Package, fresh: dict[str, str], old: dict[str, str]) -> None:
    pkg.out_dir.mkdir(parents=True, exist_ok=True)
    for name in old.keys() - fresh.keys():
        (pkg.out_dir / name).unlink()
    for name, text in fresh.items():
        (pkg.out_dir / name).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary folder and exit 1 if the committed "
                             "files differ")
    args = parser.parse_args(argv)
    python = tool_python()
    code = 0
    for pkg in PACKAGES:
        fresh, old = generate(pkg, python), committed_files(pkg)
        stale = find_stale(fresh, old)
        rel_out = pkg.out_dir.relative_to(ROOT)
        if args.check:
            if stale:
                print(f"gen_proto: stale generated files in {rel_out}/ "
                      f"(run: python scripts/gen_proto.py):", file=sys.stderr)
                for name in stale:
                    print(f"  {rel_out / name}", file=sys.stderr)
                code = 1
            else:
                print(f"gen_proto: {rel_out}/ is up to date ({len(fresh)} files)")
            continue
        write_files(pkg, fresh, old)
        print(f"gen_proto: wrote {len(fresh)} files to {rel_out}/ ({len(stale)} changed)")
    return code


if __name__ == "__main__":
    sys.exit(main())
