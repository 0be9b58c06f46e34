"""The `splitinfer` entry point as users run it: export a bundle, inspect it, run the demo.

Its stdout is a pipe here, so the output is the plain kind (no colour, no box drawing) that
scripts and logs read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: rich's switches that would make a pipe count as a terminal
TERMINAL_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in TERMINAL_ENV}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "splitinfer", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_export_then_load_and_inspect(tmp_path):
    pytest.importorskip("torchvision")
    out = tmp_path / "r18"
    proc = _run("export", "torchvision.models:resnet18", "--example-shape", "1,3,64,64",
                "-o", str(out), "--version", "7")
    assert "wrote bundle" in proc.stdout and "resnet18 v7" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "resnet18" and manifest["version"] == "7"
    assert manifest["inputs"] == [{"name": "x", "shape": [-1, 3, 64, 64], "dtype": "float32"}]
    listing = _run("inspect", str(out)).stdout
    assert "layer3.1.relu" in listing and "input" in listing and "output" in listing
    # the bundle reloads without importing torchvision's model class
    code = (f"import sys, torch, splitinfer; sm = splitinfer.load_bundle({str(out)!r}); "
            "x = torch.randn(2, 3, 64, 64); y = sm.tail(30)(*sm.head(30)(x)); "
            "assert torch.equal(y, sm(x)); "
            "assert not any(m.startswith('torchvision.models') for m in sys.modules); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.strip() == "ok", proc.stderr
    # exporting into the same directory again is refused without --force, and keeps the bundle
    again = _run("export", "torchvision.models:resnet18", "--example-shape", "1,3,64,64",
                 "-o", str(out), check=False)
    assert again.returncode == 2 and "not empty" in again.stderr
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_export_multi_input_model_with_int_inputs(tmp_path):
    out = tmp_path / "tio"
    proc = _run("export", "tests.models:TwoInTwoOut", "--example-shape", "1,5,4",
                "--example-shape", "1,5", "--example-dtype", "float32", "--example-dtype",
                "int64", "--int-high", "2", "-o", str(out), "--json")
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["dtype"] for i in manifest["inputs"]] == ["float32", "int64"]
    assert [o["name"] for o in manifest["outputs"]] == ["hidden", "logits"]
    # --json: stdout is the summary alone, the messages went to stderr
    assert json.loads(proc.stdout) == {
        "bundle": str(out), "name": "TwoInTwoOut", "version": "1",
        "fingerprint": manifest["fingerprint"], "cuts": len(manifest["cuts"]), "onnx": []}
    assert "wrote bundle" in proc.stderr
    # piped, inspect prints plain rows: one per cut, id and name first
    listing = _run("inspect", str(out)).stdout
    assert "\x1b" not in listing and not set("─━│┃┏┡└") & set(listing), listing
    lines = listing.splitlines()
    rows = lines[[i for i, x in enumerate(lines) if x.split()[:2] == ["id", "name"]][0] + 1:]
    assert [r.split()[:2] for r in rows] == [[str(c["id"]), c["name"]]
                                             for c in manifest["cuts"]]
    assert json.loads(_run("inspect", str(out), "--json").stdout) == manifest


@pytest.mark.parametrize("args, message", [
    (["export", "torchvision.models:resnet18", "--example-shape", "1,x,3", "-o", "o"],
     "bad shape"),
    (["export", "torchvision.models:resnet18", "--example-shape", "0,3", "-o", "o"],
     "every dim must be >= 1"),
    (["export", "no_such_module_xyz:f", "--example-shape", "1,3", "-o", "o"],
     "cannot import 'no_such_module_xyz'"),
    (["export", "tests.models", "--example-shape", "1,3", "-o", "o"], "use MODULE:FACTORY"),
    (["export", "tests.models:nothing", "--example-shape", "1,3", "-o", "o"],
     "has no attribute 'nothing'"),
    (["export", "tests.models:Chain", "--example-shape", "1,16", "--example-dtype", "int64",
      "--example-dtype", "int64", "-o", "o"], "2 --example-dtype for 1 --example-shape"),
    (["export", "tests.models:DataDependent", "--example-shape", "1,4", "-o", "o"],
     "could not capture the model"),
    (["inspect", "/nonexistent/bundle"], "no manifest.json"),
    (["export", "tests.models:Chain", "--example-shape", "1,16", "--factory-kwargs", "{bad",
      "-o", "o"], "not valid JSON"),
    (["export", "tests.models:Chain", "--example-shape", "1,16", "--factory-kwargs",
      '{"width": 3}', "-o", "o"], "raised TypeError"),
    (["export", "tests.models:Chain", "--example-shape", "1,15", "-o", "o"],
     "raised RuntimeError on the example inputs (batch resized to 2: [2, 15]:float32)"),
])
def test_bad_input_gets_a_clear_error(tmp_path, args, message):
    args = [str(tmp_path / a) if a == "o" else a for a in args]
    proc = _run(*args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "symbolic_shapes" not in proc.stderr  # no pages of torch internals
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_demo_runs_and_shows_lossless_split_is_exact(tmp_path):
    pytest.importorskip("torchvision")
    out = tmp_path / "demo.json"
    proc = _run("demo", "--offline", "--cuts", "3", "--example-shape", "1,3,64,64", "--codecs",
                "fp32,int8+zstd", "--out", str(out))
    assert "fp32 split == whole model at every cut shown: yes" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert {r["codec"] for r in rows} == {"fp32", "int8+zstd"} and len(rows) == 6
    assert all(r["exact"] for r in rows if r["codec"] == "fp32")
