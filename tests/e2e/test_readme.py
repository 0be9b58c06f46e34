"""The README's examples run as written: its Python blocks in order (against a real edge node
started here), and its command-line examples that need nothing else running.

The Python blocks share one namespace and one working folder, as a reader pasting them into
one session would: the first exports ``bundles/resnet18/1``, the edge node serves ``bundles/``,
and the address the README writes (``localhost:50051``) is replaced by the node's own port.
From the command-line block, the lines that run on their own are run (export, inspect, the
offline demo, a what-if plan); the others need a running node (``plan --edge``), run until
stopped (``netem``), or name a placeholder module (``mypkg.nlp``), and are covered elsewhere.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from splitinfer import decode_torch
from splitinfer.tools.edgeproc import start_edge

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
README_ADDRESS = "localhost:50051"

pytestmark = pytest.mark.slow


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.M | re.S)


def _commands() -> list[str]:
    """The command-line block's lines that need no running node, no placeholder module and
    do not run until stopped; continuation lines (``\\``) joined."""
    block = next(b for b in _blocks("sh") if "splitinfer inspect" in b)
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    runnable = []
    for line in lines:
        cmd = line.split("#")[0].strip()
        if not cmd.startswith("splitinfer ") or "mypkg." in cmd or " --edge " in cmd \
                or cmd.startswith("splitinfer netem"):
            continue
        runnable.append(cmd)
    return runnable


def test_the_readme_has_the_examples_this_test_runs():
    assert len(_blocks("python")) == 4
    assert any(README_ADDRESS in b for b in _blocks("python"))
    assert [c.split()[1] for c in _commands()] == ["export", "export", "inspect", "demo", "plan",
                                                  "fidelity", "bottleneck"]


def test_the_python_examples_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme"}
    first, *rest = _blocks("python")
    exec(compile(first, "README.md (Use it from Python)", "exec"), namespace)
    assert (tmp_path / "bundles" / "resnet18" / "1" / "manifest.json").is_file()
    node = start_edge(tmp_path / "bundles", "--torch-threads", "1", metrics_port=0)
    try:
        for i, block in enumerate(rest, 2):
            code = block.replace(README_ADDRESS, node.address)
            exec(compile(code, f"README.md (python block {i})", "exec"), namespace)
    finally:
        node.stop()
    # the SplitClient block: answered where the plan said (on this machine the "device" may be
    # as fast as the edge, so device-only is a fair plan), with the model's answer
    r, model, x = namespace["r"], namespace["model"], namespace["x"]
    assert r.answered_by in (f"edge {node.address}", "device"), r.answered_by
    with torch.no_grad():
        want = model(x)
    assert float((r.outputs - want).abs().max()) <= 0.05 * float(want.abs().max())
    # the request by hand (our protocol), then the same cut's tail over OIP with tritonclient
    assert tuple(decode_torch(namespace["result"].outputs[0]).shape) == (1, 1000)
    sm, cut = namespace["sm"], namespace["cut"]
    with torch.no_grad():
        local = sm.tail(cut.id)(*sm.head(cut.id)(x[:1]))
    assert torch.allclose(torch.from_numpy(namespace["logits"].copy()), local, rtol=1e-4, atol=1e-5)
    assert "tritonclient" in type(namespace["triton"]).__module__


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    """A folder where the README's export lines ran (the other lines read what they wrote),
    and each export's result."""
    folder = tmp_path_factory.mktemp("cli")
    return folder, {c: subprocess.run(_argv(c), cwd=folder, env=_env(), capture_output=True,
                                      text=True, timeout=600)
                    for c in _commands() if c.startswith("splitinfer export")}


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c.split()[:2]))
def test_the_command_line_examples_run(command, exported):
    folder, exports = exported
    for export in exports.values():
        assert export.returncode == 0, f"{export.stdout[-2000:]}\n{export.stderr[-2000:]}"
    out = exports[command] if command in exports else subprocess.run(
        _argv(command), cwd=folder, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{command}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    assert out.stdout.strip(), f"{command} printed nothing"


def _argv(command: str) -> list[str]:
    script = Path(sys.executable).with_name("splitinfer")
    args = shlex.split(command)[1:]
    return [str(script), *args] if script.exists() else \
        [sys.executable, "-m", "splitinfer", *args]
