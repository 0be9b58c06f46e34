"""The layer rules of ARCHITECTURE.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _py_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", [p for p in _py_files("splitinfer")
                                  if "wire" not in p.parts and not p.name.startswith("cli")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_network_or_serving_code(path):
    bad = _imports(path) & {"grpc", "prometheus_client", "edge_node", "device_client"}
    assert not bad, f"{path.name} imports {bad}: the core must work without a network"


@pytest.mark.parametrize("package, forbidden", [("edge_node", "device_client"),
                                                ("device_client", "edge_node")])
def test_edge_and_device_never_import_each_other(package, forbidden):
    for path in _py_files(package):
        assert forbidden not in _imports(path), f"{path} imports {forbidden}"


def test_nothing_imports_the_cli():
    for package in ("splitinfer", "edge_node", "device_client"):
        for path in _py_files(package):
            if path.name.startswith("cli") or path.name in ("__main__.py", "demo.py"):
                continue
            text = path.read_text()
            assert not re.search(r"splitinfer\.cli\b|from \.cli\b|from \.cli_plan\b", text), path


def test_torch_free_parts_import_without_torch():
    # a device with ONNX Runtime but no torch must be able to read bundles and (de)code tensors
    code = ("import sys; sys.modules['torch'] = None\n"
            "import splitinfer, splitinfer.codec, splitinfer.bundle, splitinfer.spec\n"
            "import splitinfer.wire.convert, splitinfer.timing\n"
            "import splitinfer.planner, splitinfer.profiles, splitinfer.link\n"
            "import device_client, device_client.onnx_head  # the SDK, for ONNX-only devices\n"
            "import numpy as np\n"
            "e = splitinfer.get_codec('int8+zstd').encode(np.ones((2, 3, 4, 4), np.float32))\n"
            "assert (splitinfer.decode(e) == 1).all()\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr
