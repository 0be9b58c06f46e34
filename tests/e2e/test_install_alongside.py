"""splitinfer installs next to tritonclient, and its generated code loads across its protobuf range.

The generated protobuf code is grpcio-tools 1.62.3's (gencode for protobuf 4.25.1, see
proto/README.md), so setup.cfg can say ``protobuf>=4.25.1,<8`` and ``grpcio>=1.62.3``:

- one fresh venv gets splitinfer and ``tritonclient[grpc]`` (which pins protobuf < 7) from one
  ``pip install``; both are imported and used in one process;
- two light venvs without torch hold the two ends of the protobuf range (4.25.1 with grpcio
  1.62.3, and the newest 7.x with the newest grpcio); the torch-free modules that hold our
  protocol code load there with warnings as errors, and messages of both protocols round-trip.
"""

from __future__ import annotations

import os
import re
import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
#: the torch the Makefile installs (TORCH_PKGS): the one this machine has on disk
TORCH = re.search(r"^TORCH_PKGS \?= (torch==\S+)", (ROOT / "Makefile").read_text(),
                  re.MULTILINE).group(1)
TRITONCLIENT = "tritonclient[grpc]==2.73.0"
FLOOR = ("protobuf==4.25.1", "grpcio==1.62.3", "grpcio-health-checking==1.62.3")
CEILING = ("protobuf>=7,<8", "grpcio", "grpcio-health-checking")
LIGHT = ("numpy", "zstandard", "pillow")


def make_venv(where: Path, *packages: str) -> Path:
    """A fresh venv at ``where`` with ``packages`` from one pip install; its python."""
    venv.create(where, with_pip=True, clear=True)
    python = where / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"pip install {' '.join(packages)} failed:\n" \
                                 f"{done.stdout[-4000:]}{done.stderr[-4000:]}"
    return python


def run(python: Path, code: str, *, source_tree: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if source_tree:
        env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([str(python), "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=600, cwd="/" if not source_tree else ROOT,
                          env=env)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-6000:]}"
    return done.stdout


#: both protocols' messages round-tripped through our conversion code (torch-free)
ROUND_TRIP = """
import google.protobuf, grpc, numpy as np
from splitinfer.codec import get_codec
from splitinfer.wire import convert, oip_convert
from splitinfer.wire.v1 import service_pb2_grpc
from splitinfer.wire.oip import grpc_service_pb2 as pb, grpc_service_pb2_grpc
import splitinfer.transport
from splitinfer.core.spec import TensorSpec

x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
enc = get_codec("int8").encode(x, name="x")
request = convert.build_infer_request(model="m", version="1", fingerprint="f" * 64, cut_id=3,
                                      tensors=[enc], request_id="r")
call = convert.parse_infer_request(type(request).FromString(request.SerializeToString()))
assert call.tensors[0] == enc and call.cut_id == 3
oip = oip_convert.build_infer_request("m.cut3", [enc], fingerprint="f" * 64)
back = oip_convert.parse_infer_request(pb.ModelInferRequest.FromString(oip.SerializeToString()),
                                       {"x": TensorSpec("x", (-1, 2, 3, 4), "float32")})
assert back.tensors[0].payload == enc.payload and back.tensors[0].scales == enc.scales
print("protobuf", google.protobuf.__version__, "grpcio", grpc.__version__)
"""


def test_splitinfer_and_tritonclient_install_into_one_venv(tmp_path):
    python = make_venv(tmp_path / "venv", str(ROOT), TRITONCLIENT, TORCH)
    out = run(python, ROUND_TRIP + """
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2 as tpb
import device_client, edge_node.server
theirs = tpb.ModelInferRequest.FromString(oip.SerializeToString())
params = theirs.inputs[0].parameters  # a tensor this small has one scale (a double_param)
assert enc.axis is None and params["scale"].double_param == enc.scales[0]
assert params["zero_point"].int64_param == enc.zero_points[0]
assert theirs.raw_input_contents[0] == enc.payload
""")
    assert out.startswith("protobuf 6.")  # tritonclient's pin decided it
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True,
                           timeout=300)
    problems = [line for line in check.stdout.splitlines()
                if re.search(r"protobuf|grpcio|splitinfer|tritonclient", line)]
    assert not problems, check.stdout


@pytest.mark.parametrize("end, packages, wanted", [
    ("floor", FLOOR, r"protobuf 4\.25\.1 grpcio 1\.62\.3"),
    ("ceiling", CEILING, r"protobuf 7\.\d+\.\d+ grpcio"),
])
def test_the_generated_code_loads_at_both_ends_of_the_protobuf_range(tmp_path, end, packages,
                                                                     wanted):
    python = make_venv(tmp_path / end, *packages, *LIGHT)
    out = run(python, ROUND_TRIP + "import device_client\n", source_tree=True)
    assert re.match(wanted, out), out
