"""The committed splitinfer/wire/v1/ and splitinfer/wire/oip/ code matches the .proto files, the
OIP messages stay out of protobuf's default pool, and layering holds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
GEN_PROTO = ROOT / "scripts" / "gen_proto.py"


def load_gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", GEN_PROTO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_up_to_date():
    # the pinned generator runs from its own venv (build/protoc-venv, made on first use)
    done = subprocess.run([sys.executable, str(GEN_PROTO), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        f"generated code is stale or could not be regenerated; run "
        f"`python scripts/gen_proto.py` and commit the result\n{done.stdout}{done.stderr}")


def test_rewrite_points_imports_at_wire_package_only():
    gen = load_gen_proto()
    text = ("from splitinfer.v1 import tensor_pb2 as t\n"
            "import splitinfer.v1.model_pb2\n"
            "_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'splitinfer.v1.tensor_pb2', g)\n"
            "X = b'\\x32\\x15.splitinfer.v1.Tensor'\n")
    assert gen.rewrite_imports(text) == (
        "from splitinfer.wire.v1 import tensor_pb2 as t\n"
        "import splitinfer.wire.v1.model_pb2\n"
        "_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'splitinfer.wire.v1.tensor_pb2', g)\n"
        "X = b'\\x32\\x15.splitinfer.v1.Tensor'\n")


def test_convert_imports_neither_grpc_nor_torch():
    code = ("import sys, splitinfer.wire.convert; "
            "bad = sorted(m for m in ('grpc', 'torch') if m in sys.modules); "
            "sys.exit(f'splitinfer.wire.convert imported {bad}' if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_only_grpc_modules_import_grpc():
    wire = ROOT / "splitinfer" / "wire"
    importing = sorted(str(p.relative_to(ROOT)) for p in wire.rglob("*.py")
                       if "import grpc\n" in p.read_text())
    assert importing == ["splitinfer/wire/oip/grpc_service_pb2_grpc.py",
                         "splitinfer/wire/v1/service_pb2_grpc.py"]


def test_oip_messages_live_in_a_pool_of_their_own():
    """tritonclient and kserve register 'inference.*' in the default pool; ours must not clash."""
    code = ("from google.protobuf import descriptor_pool; "
            "from splitinfer.wire.oip import grpc_service_pb2 as pb; "
            "import sys\n"
            "try:\n"
            "    descriptor_pool.Default().FindMessageTypeByName('inference.ModelInferRequest')\n"
            "except KeyError:\n"
            "    sys.exit(0 if pb.ModelInferRequest.DESCRIPTOR.full_name == "
            "'inference.ModelInferRequest' else 2)\n"
            "sys.exit('inference.ModelInferRequest is in the default pool')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
