"""A virtual environment without torch that holds this checkout: proof the device path needs none.

``torchfree_python`` (a session fixture) builds it once per test session in a temporary
directory: ``python -m venv``, the device's packages (numpy, grpcio, protobuf, zstandard, pillow,
onnxruntime) at the versions of the running environment where it has them, and this checkout
with ``pip install --no-deps -e``. Import the fixture into a test module to use it::

    from tests.e2e import torchfree

    torchfree_python = torchfree.torchfree_python
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: what a device without torch installs to run an ONNX head and talk to an edge node
DEVICE_PACKAGES = ("numpy", "grpcio", "protobuf", "zstandard", "pillow", "onnxruntime")

#: the first build downloads wheels (unless pip's cache has them)
BUILD_TIMEOUT_S = 900


def _pinned(name: str) -> str:
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def _pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", *args], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)
    if proc.returncode != 0:
        pytest.skip(f"cannot build the torch-free venv (pip install {' '.join(args)} exited "
                    f"{proc.returncode}: {proc.stderr.strip()[-500:]}); is a package index "
                    "reachable?")


def build_torchfree_venv(where: Path) -> Path:
    """Make the venv in ``where``; return its python. Skips the test if pip cannot install."""
    proc = subprocess.run([sys.executable, "-m", "venv", str(where)], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"python -m venv failed: {proc.stderr.strip()[-300:]}")
    python = where / "bin" / "python"
    _pip(python, *(_pinned(p) for p in DEVICE_PACKAGES))
    _pip(python, "--no-deps", "-e", str(ROOT))
    check = subprocess.run([str(python), "-c", "import importlib.util, sys; "
                            "sys.exit(importlib.util.find_spec('torch') is not None)"],
                           timeout=60)
    if check.returncode != 0:
        raise AssertionError(f"{where} has torch installed; the proof needs a venv without it")
    return python


@pytest.fixture(scope="session")
def torchfree_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a venv with the device packages and this checkout, and no torch."""
    return build_torchfree_venv(tmp_path_factory.mktemp("torchfree") / "venv")


def run_torchfree(python: Path, code: str, *args: str, timeout: float = 300
                  ) -> subprocess.CompletedProcess:
    """Run ``code`` in the torch-free venv (from a neutral directory, so the checkout comes from
    the editable install), failing with its output when it exits non-zero."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=python.parents[2])
    if proc.returncode != 0:
        raise AssertionError(f"torch-free script exited {proc.returncode}\n"
                             f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
    return proc
