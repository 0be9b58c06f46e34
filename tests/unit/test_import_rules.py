"""The layer rules of docs/architecture.md: import-linter's contracts hold, and each one bites.

``lint-imports`` (``.importlinter``) is the rule book; these tests check that it passes on the
tree as it is and that a forbidden import, planted in a copy of the tree, breaks the contract
that names the rule. Two rules import-linter cannot express are checked on the source here: no
module assigns another object's private attribute, and no benchmark imports a private name.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("splitinfer", "edge_node", "device_client")
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the copy's packages shadow the editable install's
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "1000"}  # no wrapped names
    return subprocess.run([str(LINT), str(root / ".importlinter"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _broken(output: str) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^(.*\S) BROKEN$", output, re.M)}


def test_lint_imports_passes_on_the_tree():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "BROKEN" not in out.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / ".importlinter", root / ".importlinter")
    return root


# (module file, the import planted in it, a contract it must break)
FORBIDDEN = [
    ("splitinfer/core/link.py", "import torch", "The core is the standard library and numpy only"),
    ("splitinfer/core/planner.py", "import device_client",
     "Apps: tools over edge node | device client over the library"),
    ("splitinfer/codec/registry.py", "from splitinfer.tools import cli",
     "Nothing imports the tools (CLI, demos, link emulator, CPU quota, edge launcher)"),
    ("splitinfer/model/capture.py", "from splitinfer import transport",
     "The library's layers: tools, then transport | measure, then wire | model, codec, core"),
    ("splitinfer/wire/convert.py", "import torch", "torch lives in the model layer and above"),
    ("splitinfer/measure/slowdown.py", "import grpc",
     "grpc lives in splitinfer.transport and above (and the generated stubs)"),
    ("splitinfer/model/graphcut.py", "from google.protobuf import message",
     "protobuf (google.*) lives in splitinfer.wire only"),
    ("device_client/stats.py", "import edge_node",
     "The edge node and the device client never import each other"),
    ("device_client/breaker.py", "import zstandard", "zstandard lives in the codec only"),
    ("edge_node/batcher.py", "import PIL.Image",
     "Pillow lives in the codec (image codecs) and the tools (reading image files)"),
    ("edge_node/metrics.py", "from splitinfer.codec import _quant",
     "A private module (_name) is imported only inside its own package"),
]


@pytest.mark.parametrize("module, line, contract", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_a_forbidden_import_breaks_its_contract(tree_copy, module, line, contract):
    path = tree_copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{line}  # planted by test_import_rules\n")
        out = _lint(tree_copy)
    finally:
        path.write_text(original)
    assert out.returncode != 0, f"lint-imports passed with {line!r} in {module}"
    assert contract in _broken(out.stdout), (
        f"expected {contract!r} among the broken contracts, got {_broken(out.stdout)}:\n"
        f"{out.stdout[-3000:]}")


# ---- rules on the source ------------------------------------------------------------------

def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")
                  if "_pb2" not in p.name)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _foreign_private_writes(tree: ast.AST) -> list[str]:
    """``x._name = ...`` (or ``+=``, ``setattr(x, "_name", ...)``) where x is not self/cls."""
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = [t for tgt in node.targets
                       for t in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt])]
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "setattr" and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            if _private(node.args[1].value) and ast.unparse(node.args[0]) not in ("self", "cls"):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        for t in targets:
            if isinstance(t, ast.Attribute) and _private(t.attr) \
                    and not (isinstance(t.value, ast.Name) and t.value.id in ("self", "cls")):
                found.append(f"line {t.lineno}: {ast.unparse(t)} = ...")
    return found


@pytest.mark.parametrize("path", _sources(*PACKAGES, "benchmarks"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_assigns_another_objects_private_attribute(path):
    found = _foreign_private_writes(ast.parse(path.read_text()))
    assert not found, f"{path.relative_to(ROOT)} writes private state of another object: {found}"


def test_the_private_write_check_catches_one():
    assert _foreign_private_writes(ast.parse("c._plan = p\nsetattr(c, '_x', 1)\n"
                                             "self._ok = 1\nc.__dict__ = {}\n")) == [
        "line 1: c._plan = ...", "line 2: setattr(c, '_x', 1)"]


def _private_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            names = [a.name for a in node.names]
            if any(_private(p) for p in parts) or any(_private(n) for n in names):
                found.append(f"line {node.lineno}: from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if any(_private(p) for p in a.name.split("."))]
    return found


@pytest.mark.parametrize("path", _sources("benchmarks"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_benchmark_imports_a_private_name(path):
    found = _private_imports(ast.parse(path.read_text()))
    assert not found, f"{path.relative_to(ROOT)} imports private names: {found}"


def test_the_private_import_check_catches_one():
    assert _private_imports(ast.parse("from a._b import c\nfrom a import _c\nimport a._d\n"
                                      "from . import _e\n")) == [
        "line 1: from a._b import c", "line 2: from a import _c", "line 3: import a._d"]


def test_torch_free_parts_import_without_torch():
    # a device with ONNX Runtime but no torch must be able to read bundles and (de)code tensors
    code = ("import sys; sys.modules['torch'] = None\n"
            "import splitinfer, splitinfer.codec, splitinfer.model.manifest\n"
            "import splitinfer.core.spec, splitinfer.core.timing, splitinfer.wire.convert\n"
            "import splitinfer.core.planner, splitinfer.core.profiles, splitinfer.core.link\n"
            "import splitinfer.core.compare, splitinfer.model.image_input\n"
            "import splitinfer.transport\n"
            "import device_client, device_client.onnx_head  # the SDK, for ONNX-only devices\n"
            "import numpy as np\n"
            "e = splitinfer.get_codec('int8+zstd').encode(np.ones((2, 3, 4, 4), np.float32))\n"
            "assert (splitinfer.decode(e) == 1).all()\n"
            "f = np.zeros((1, 16, 16, 3), np.uint8)  # a camera frame, as a JPEG\n"
            "assert splitinfer.decode(splitinfer.get_codec('jpeg').encode(f)).shape == f.shape\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr
