"""`splitinfer demo` as users run it: edge subprocess, link emulator, client, report, clean-up.

Small settings (ResNet-18 at 64x64, 10 requests per mode, a fast link) keep each run near half
a minute; the bundle built by the first test is reused by the second (one folder per module).
What is checked is behaviour: exit codes, the table, the JSON, the plot, and that no edge node
or CPU cgroup is left behind, on success and on Ctrl-C. Never wall-clock time. The first run
passes --json (stdout: the result alone; the steps and the report: stderr), the second does not
(the steps on stdout, as a user's pipe sees them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ("--model", "resnet18", "--input-size", "64", "--requests", "10", "--rtt", "10ms",
         "--rate", "50mbit")
TIMEOUT_S = 600

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    pytest.importorskip("torchvision")
    return tmp_path_factory.mktemp("demo")


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    env = {k: v for k, v in os.environ.items()  # rich's switches that make a pipe a terminal
           if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    return {**env, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "splitinfer", "demo", *SMALL, "--out", str(out)]


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _no_cgroup_of(pid: int) -> bool:
    return not Path(f"/sys/fs/cgroup/cpu/splitinfer-device-{pid}").exists()


def test_demo_runs_split_and_baselines_and_cleans_up(out_dir):
    proc = subprocess.run([*_cmd(out_dir), "--json"], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    lines = proc.stderr.splitlines()  # --json: the steps and the report went to stderr
    for start in ("edge node: pid ", "device: profiling",
                  "link      asked 50.0 Mbit/s, RTT 10.0 ms; measured by the client",
                  "plan      cut ", "mode ", "split ", "device-only ", "edge-only ",
                  "split vs the better baseline", "answers   split vs device-only",
                  "answers   edge-only vs device-only", "where a split wins", "inputs    ",
                  "wall time "):
        assert any(line.startswith(start) for line in lines), (start, proc.stderr)
    assert "\x1b" not in proc.stderr and "━" not in proc.stderr  # a pipe: plain lines

    res = json.loads((out_dir / "demo.json").read_text())
    # stdout: the result alone, as written (text: a NaN would never compare equal)
    assert proc.stdout.strip() == (out_dir / "demo.json").read_text().strip()
    assert res["model"] == "resnet18" and res["input_size"] == 64
    assert res["link"]["asked"] == {"bandwidth_bps": 50e6, "rtt_s": 0.01}
    assert res["link"]["measured"]["bandwidth_bps"] > 0
    assert {"cut_id", "cut_name", "codec", "predicted_ms"} <= set(res["plan"])
    for mode in ("split", "device-only", "edge-only"):
        m = res["modes"][mode]
        assert m["requests"] == 10 and len(m["latencies_ms"]) == 10
        assert 0 < m["p50_ms"] <= m["p95_ms"]
        assert sum(m["answered_by"].values()) == 10
    assert res["modes"]["device-only"]["bytes_per_request"] == 0
    assert res["modes"]["device-only"]["codec"] is None
    edge_only = res["modes"]["edge-only"]
    # the frame leaves as a JPEG q90: a few KB for a 64x64 photo crop, far under its raw bytes
    assert edge_only["cut_id"] == 0 and edge_only["codec"] == "jpeg"
    assert 300 < edge_only["bytes_per_request"] < 64 * 64 * 3 / 2
    assert res["speedup"]["baseline"] in ("device-only", "edge-only")
    assert res["agreement"]["split"]["ok"], res["agreement"]
    assert 0 <= res["agreement"]["edge-only"]["relative_error"] < 1
    assert [r["device_factor"] for r in res["window"]] == [0.25, 0.5, 1.0, 2.0]
    assert (out_dir / "demo.png").stat().st_size > 0
    assert (out_dir / "repo" / "resnet18" / "1" / "manifest.json").exists()
    assert not _alive(res["edge_pid"]), "the edge node outlived the demo"


def test_ctrl_c_exits_130_and_stops_the_edge_node(out_dir):
    proc = subprocess.Popen(_cmd(out_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=ROOT)
    watchdog = threading.Timer(TIMEOUT_S, proc.kill)
    watchdog.start()
    edge_pid = None
    try:
        for line in proc.stdout:
            if line.startswith("edge node: pid "):
                edge_pid = int(line.split()[3])
            if line.startswith("device: profiling"):  # the edge and the emulator are up
                break
        assert edge_pid is not None and _alive(edge_pid), "the demo never started the edge"
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, f"{rest}\n{err}"
    assert "interrupted" in err and "Traceback" not in err, err
    assert not _alive(edge_pid), "the edge node outlived the interrupted demo"
    assert _no_cgroup_of(proc.pid)
