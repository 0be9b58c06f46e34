"""Fixtures shared by the unit tests of the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import splitinfer
from splitinfer.measure.profiler import profile_device, profile_edge_locally
from splitinfer.model.bundle import save_bundle
from tests.models import SkipNet


@pytest.fixture(scope="module")
def skipnet_plan_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A SkipNet bundle (``root/bundle``) with its device and edge profiles
    (``root/device.json``, ``root/edge.json``), for ``splitinfer plan`` without measuring."""
    torch.manual_seed(0)
    sm = splitinfer.partition(SkipNet().eval(), (torch.randn(1, 3, 32, 32),), name="skipnet")
    root = tmp_path_factory.mktemp("plan")
    save_bundle(sm, root / "bundle")
    device = profile_device(sm, codecs=("fp32", "int8+zstd"), repeats=1)
    edge = profile_edge_locally(sm, repeats=1, speedup=20.0)
    (root / "device.json").write_text(json.dumps(device.to_json()))
    (root / "edge.json").write_text(json.dumps(edge.to_json()))
    return root, sm
