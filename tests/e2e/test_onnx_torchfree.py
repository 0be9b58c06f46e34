"""A device without torch runs the ONNX head (and the whole client) and gets torch's answers.

The bundle and its ONNX files are made here with torch; the device side runs in a venv that has
no torch at all (``tests/e2e/torchfree.py``) and only sees ``manifest.json`` and ``onnx/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from splitinfer.model.bundle import save_bundle  # noqa: E402
from splitinfer.model.onnx_export import export_onnx  # noqa: E402
from splitinfer.model.split_model import partition  # noqa: E402
from splitinfer.tools.edgeproc import start_edge  # noqa: E402
from tests.e2e import torchfree  # noqa: E402
from tests.models import SkipNet  # noqa: E402

ROOT, run_torchfree = torchfree.ROOT, torchfree.run_torchfree
torchfree_python = torchfree.torchfree_python  # the session fixture that builds the venv

START_TIMEOUT_S = 180.0

HEAD_SCRIPT = """
import sys
import numpy as np
from device_client.onnx_head import OnnxSegments
device, cut, x_path, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
crossing = OnnxSegments(device, threads=1).run_head(cut, [np.load(x_path)])
np.savez(out_path, *crossing)
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""

CLIENT_SCRIPT = """
import sys
import numpy as np
from device_client.client import SplitClient
device, address, cut, x_path, out_path = sys.argv[1:6]
with SplitClient(device, edges=[address], cut=int(cut), codec="fp32", head="onnx",
                 fallback="error") as client:
    y = client.infer(np.load(x_path))
np.save(out_path, np.asarray(y))
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""


@pytest.fixture(scope="module")
def skipnet(tmp_path_factory: pytest.TempPathFactory):
    """Model repository ``repo/skipnet/1`` with ONNX files, and a device copy of just
    ``manifest.json`` + ``onnx/`` (no program.pt2)."""
    torch.manual_seed(0)
    sm = partition(SkipNet().eval(), (torch.randn(1, 3, 8, 8),), name="skipnet")
    base = tmp_path_factory.mktemp("skipnet")
    bundle = base / "repo" / "skipnet" / "1"
    save_bundle(sm, bundle)
    cut = sm.cuts[len(sm.cuts) // 2].id
    export_onnx(bundle, [cut], tail=False)
    device = base / "device"
    device.mkdir()
    shutil.copy(bundle / "manifest.json", device)
    shutil.copytree(bundle / "onnx", device / "onnx")
    return sm, cut, base / "repo", device


@pytest.mark.slow
def test_onnx_head_runs_without_torch(torchfree_python, skipnet, tmp_path):
    sm, cut, _, device = skipnet
    x = torch.randn(3, 3, 8, 8)
    np.save(tmp_path / "x.npy", x.numpy())
    proc = run_torchfree(torchfree_python, HEAD_SCRIPT, str(device), str(cut),
                         str(tmp_path / "x.npy"), str(tmp_path / "out.npz"))
    assert proc.stdout.strip() == "ok"
    with torch.no_grad():
        want = sm.head(cut)(x)
    got = np.load(tmp_path / "out.npz")
    assert len(got.files) == len(want)
    for i, w in enumerate(want):
        np.testing.assert_allclose(got[f"arr_{i}"], w.numpy(), rtol=1e-4, atol=1e-5)


@pytest.fixture
def edge(skipnet) -> Iterator[str]:
    """An edge node (main venv, with torch) serving the repository; yields its address."""
    node = start_edge(skipnet[2], metrics_port=0, timeout=START_TIMEOUT_S)
    try:
        yield node.address
    finally:
        node.stop()


@pytest.mark.slow
def test_split_client_with_onnx_head_runs_without_torch(torchfree_python, skipnet, edge,
                                                        tmp_path):
    sm, cut, _, device = skipnet
    x = torch.randn(2, 3, 8, 8)
    np.save(tmp_path / "x.npy", x.numpy())
    proc = run_torchfree(torchfree_python, CLIENT_SCRIPT, str(device), edge, str(cut),
                         str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))
    assert proc.stdout.strip().endswith("ok"), proc.stdout
    with torch.no_grad():
        want = sm(x)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want.numpy(), rtol=1e-4, atol=1e-4)
