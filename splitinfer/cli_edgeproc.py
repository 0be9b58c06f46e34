"""Start and stop a real ``splitinfer-edge`` subprocess on loopback, for the demo and benchmarks.

``start_edge(repo, *flags)`` runs ``python -m edge_node`` on a free port (``--listen
127.0.0.1:0``; the node prints ``splitinfer-edge: listening on port P``), waits until gRPC
health says SERVING and returns an ``EdgeProcess``; ``stop()`` ends it (SIGTERM, SIGKILL after
``kill_after_s``) and is safe to call twice. A start that fails stops the child before raising.

It talks gRPC (the health check), which the layer rules allow only on the CLI side of
``splitinfer``: hence the ``cli_`` name, although it is a library module.
"""

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

__all__ = ["EdgeProcess", "start_edge", "edge_command", "free_port", "READY_LINE"]

ROOT = Path(__file__).resolve().parents[1]
READY_LINE = "splitinfer-edge: listening on port "


def edge_command() -> list[str]:
    """``python -m edge_node`` with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "edge_node"]


def _edge_env() -> dict[str, str]:
    # the checkout first: an editable install older than edge_node does not map it
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def free_port() -> int:
    """A free TCP port now (another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def serving(address: str, timeout: float = 2.0) -> bool:
    """True when the gRPC health service at ``address`` answers SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class EdgeProcess:
    """A running edge node; ``stop()`` ends it and removes its log folder."""

    proc: subprocess.Popen
    port: int
    metrics_port: int
    log_dir: Path
    kill_after_s: float = 30.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stderr_tail(self, chars: int = 3000) -> str:
        try:
            return (self.log_dir / "stderr.txt").read_text()[-chars:]
        except OSError:
            return ""

    def metric_sum(self, name: str) -> float:
        """Sum of one metric's samples over all labels, from the node's /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            lines = reply.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                   if line.startswith(name + "{") or line.startswith(name + " "))

    def stop(self) -> int | None:
        """SIGTERM (the node drains), SIGKILL after ``kill_after_s``; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.kill_after_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        shutil.rmtree(self.log_dir, ignore_errors=True)
        return self.proc.returncode


def start_edge(repo: str | Path, *flags: str, metrics_port: int | None = None,
               timeout: float = 180.0, kill_after_s: float = 30.0) -> EdgeProcess:
    """Start an edge node serving ``repo`` on a free loopback port; wait until SERVING.

    ``metrics_port``: None picks a free one; 0 turns metrics off. ``flags`` go to the node as
    given (e.g. ``"--torch-threads", "2"``). Raises RuntimeError with the node's stderr when
    it exits or is not SERVING within ``timeout`` seconds.
    """
    logs = Path(tempfile.mkdtemp(prefix="splitinfer-edge-"))
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    metrics_port = free_port() if metrics_port is None else metrics_port
    cmd = [*edge_command(), "--model-repository", str(repo), "--listen", "127.0.0.1:0",
           "--metrics-port", str(metrics_port), *flags]
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, env=_edge_env())
    node = EdgeProcess(proc, 0, metrics_port, logs, kill_after_s)
    try:
        node.port = _wait_for_port(node, out, time.monotonic() + timeout, timeout)
        deadline = time.monotonic() + timeout
        while not serving(node.address):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the edge node never became SERVING:\n{node.stderr_tail()}")
            time.sleep(0.1)
    except BaseException:
        node.stop()
        raise
    return node


def _wait_for_port(node: EdgeProcess, out: Path, deadline: float, timeout: float) -> int:
    while READY_LINE not in out.read_text():
        if node.proc.poll() is not None:
            raise RuntimeError(f"the edge node exited with {node.proc.returncode}:\n"
                               f"{node.stderr_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the edge node printed no port within {timeout:.0f}s")
        time.sleep(0.05)
    line = next(x for x in out.read_text().splitlines() if x.startswith(READY_LINE))
    return int(line[len(READY_LINE):].split(",")[0])
