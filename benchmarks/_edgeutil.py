"""Start and stop a real ``splitinfer-edge`` process for benchmarks, and read its CPU time."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
READY_LINE = "splitinfer-edge: listening on port "
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def edge_command() -> list[str]:
    """The installed console script next to this Python, else ``python -m edge_node``."""
    script = Path(sys.executable).with_name("splitinfer-edge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edge_node"]


def edge_env() -> dict[str, str]:
    # the checkout first: an editable install older than edge_node does not map it
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def machine_busy_seconds() -> float:
    """CPU seconds every core of this machine spent busy so far (Linux /proc/stat; else 0.0)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class EdgeProcess:
    """A running edge node; ``stop()`` ends it (SIGTERM, then SIGKILL after 30 s), drops its logs."""

    proc: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def metric_sum(self, name: str) -> float:
        """Sum of one metric's samples over all labels, from the node's /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            lines = reply.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                   if line.startswith(name + "{") or line.startswith(name + " "))

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        shutil.rmtree(self.log_path.parent, ignore_errors=True)
        return self.proc.returncode


def _free_port() -> int:
    # --metrics-port 0 turns metrics off: pick a free one (a lost race fails the start loudly)
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def start_edge(repo: Path, *flags: str, timeout: float = 180.0) -> EdgeProcess:
    """Start ``splitinfer-edge`` on free loopback ports and wait until health says SERVING."""
    logs = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    metrics_port = _free_port()
    cmd = [*edge_command(), "--model-repository", str(repo), "--listen", "127.0.0.1:0",
           "--metrics-port", str(metrics_port), *flags]
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, env=edge_env())
    node = EdgeProcess(proc, 0, metrics_port, err)
    deadline = time.monotonic() + timeout
    try:
        while READY_LINE not in out.read_text():
            if proc.poll() is not None:
                raise RuntimeError(f"the edge node exited with {proc.returncode}:\n"
                                   f"{err.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the edge node printed no port within {timeout:.0f}s")
            time.sleep(0.05)
        line = next(x for x in out.read_text().splitlines() if x.startswith(READY_LINE))
        node.port = int(line[len(READY_LINE):].split(",")[0])
        while not _serving(node.address):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the edge node never became SERVING:\n"
                                   f"{err.read_text()[-3000:]}")
            time.sleep(0.1)
    except BaseException:
        node.stop()
        raise
    return node
