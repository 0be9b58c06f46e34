"""The one edge-node launcher: a real ``splitinfer-edge`` process on loopback, for the demo,
the benchmarks and the end-to-end tests.

``start_edge(repo, *flags)`` runs the node (the ``splitinfer-edge`` console script next to this
interpreter, else ``python -m edge_node``) with ``--listen 127.0.0.1:0``, reads its ports from
the one line it prints (``splitinfer-edge: listening on port P, metrics on port M``), polls the
gRPC health check until SERVING (with a deadline, never a fixed sleep) and returns an
``EdgeProcess``. It picks a free metrics port and starts again, up to ``attempts`` times, when
another process took that port in between. A start that fails raises ``EdgeStartError`` with
the node's stderr and leaves no process behind.

``launch(...)`` starts one node and waits only for its ports line or its exit: a test of a
start that must fail reads ``returncode`` and ``text("stderr")``. ``run_edge(*args)`` runs the
command to its end with the output captured.

The node's stdout and stderr go to files in a work directory: the caller's (kept), or a
temporary one removed by ``stop()`` (the text stays readable from memory after that).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import grpc
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from edge_node.healthcheck import health_status

__all__ = ["EdgeProcess", "EdgeStartError", "start_edge", "launch", "run_edge", "edge_command",
           "edge_env", "free_port", "wait_for", "health", "serving", "terminate",
           "parse_metrics", "process_cpu_seconds", "READY_LINE", "START_TIMEOUT_S", "SERVING"]

log = logging.getLogger(__name__)
T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "splitinfer-edge: listening on port "
#: torch import, bundle load and tail profiling on a slow, shared machine; each wait (the ports
#: line, then SERVING) gets this long
START_TIMEOUT_S = 180.0
SERVING = health_pb2.HealthCheckResponse.SERVING
STREAMS = ("stdout", "stderr")
_PORTS = re.compile(r"^splitinfer-edge: listening on port (\d+)(?:, metrics on port (\d+))?"
                    r"(?:, health on port (\d+))?$", re.M)
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class EdgeStartError(RuntimeError):
    """The edge node exited, or was not ready in time; the message carries its stderr.

    ``pid``: the node's process id (ended by the time ``start_edge`` raises).
    """

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


def edge_command() -> list[str]:
    """The ``splitinfer-edge`` console script next to this interpreter, else ``python -m
    edge_node`` (a checkout that was never pip-installed has no script)."""
    script = Path(sys.executable).with_name("splitinfer-edge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edge_node"]


def edge_env() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH."""
    # an editable install made before edge_node existed does not map it
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def free_port() -> int:
    """A free TCP port now (another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], T], timeout: float, every: float = 0.05) -> T:
    """``check()`` until it returns something truthy, which is returned; TimeoutError naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)
    return got


def health(address: str, service: str = "", timeout: float = 2.0) -> int | grpc.StatusCode:
    """The health status of ``service`` at ``address`` (``SERVING``, ``NOT_SERVING`` ...), or
    the code of the failed Check (``UNAVAILABLE`` when nothing listens); a fresh channel."""
    h = health_status(address, service, timeout)
    if h.status is not None:
        return h.status
    return h.error if h.error is not None else grpc.StatusCode.UNKNOWN


def serving(address: str, timeout: float = 2.0) -> bool:
    """True when the gRPC health service at ``address`` answers SERVING."""
    return health(address, timeout=timeout) == SERVING


def terminate(proc: subprocess.Popen[Any], kill_after_s: float = 30.0) -> int:
    """SIGTERM, SIGKILL after ``kill_after_s``; the exit code. Safe on an ended process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 elsewhere or ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format -> {(sample name, frozenset of label pairs): value}, read with
    ``prometheus_client``'s own parser."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@dataclass
class EdgeProcess:
    """A started edge node: its process, ports, captured output and /metrics."""

    proc: subprocess.Popen[Any]
    workdir: Path
    port: int = 0
    metrics_port: int = 0
    kill_after_s: float = 30.0
    keep_workdir: bool = True
    host: str = "127.0.0.1"
    health_port: int = 0
    _texts: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_dir(self) -> Path:
        """The work directory (its older name)."""
        return self.workdir

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.proc.poll()

    def text(self, stream: str) -> str:
        """Everything the node wrote to ``stream`` ("stdout" or "stderr") so far."""
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        if stream in self._texts:  # the temporary work directory is gone
            return self._texts[stream]
        try:
            return (self.workdir / f"{stream}.txt").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, chars: int = 3000) -> str:
        return self.text("stderr")[-chars:]

    def log_records(self) -> list[dict[str, Any]]:
        """Every stderr line as JSON (the node must run with ``--log-format json``)."""
        records = []
        for line in filter(str.strip, self.text("stderr").splitlines()):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"stderr line is not JSON: {line!r}; start the node with "
                                 f"'--log-format', 'json'") from None
        return records

    def metrics_text(self, timeout: float = 10.0) -> str:
        """The node's /metrics page (it must run with a metrics port)."""
        if not self.metrics_port:
            raise ValueError("this node serves no /metrics (metrics port 0); start it with "
                             "metrics_port=None (a free port) or a port number")
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            body: bytes = reply.read()
        return body.decode()

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """/metrics parsed: {(sample name, frozenset of label pairs): value}."""
        return parse_metrics(self.metrics_text())

    def metric_sum(self, name: str) -> float:
        """Sum of one sample name's values over all labels, from the node's /metrics."""
        return sum(v for (sample, _), v in self.scrape().items() if sample == name)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the node used so far (Linux; 0.0 elsewhere)."""
        return process_cpu_seconds(self.proc.pid)

    def wait_ports(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the node printed its ports line (sets ``port``, ``metrics_port``) or
        exited; EdgeStartError when it did neither within ``timeout`` seconds."""
        try:
            wait_for("the 'listening on port' line",
                     lambda: self._read_ports() or not self.running, timeout)
        except TimeoutError as exc:
            raise EdgeStartError(f"the edge node (pid {self.pid}) printed no ports within "
                                 f"{timeout:g}s; its stderr:\n{self.stderr_tail()}",
                                 self.pid) from exc

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> None:
        """Poll gRPC health until SERVING; EdgeStartError when it exits or times out."""
        try:
            wait_for("health SERVING", lambda: not self.running or serving(self.address),
                     timeout, every=0.1)
        except TimeoutError as exc:
            raise EdgeStartError(f"the edge node (pid {self.pid}) was not SERVING within "
                                 f"{timeout:g}s; its stderr:\n{self.stderr_tail()}",
                                 self.pid) from exc
        if not self.running:
            raise EdgeStartError(self.exit_report("before it was SERVING"), self.pid)

    def exit_report(self, when: str) -> str:
        """One message for a node that exited: its code, its command and its stderr."""
        args = self.proc.args
        command = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
        return (f"the edge node exited with code {self.returncode} {when} (`{command}`); its "
                f"stderr:\n{self.stderr_tail()}")

    def stop(self) -> int:
        """SIGTERM (the node drains), SIGKILL after ``kill_after_s``; the exit code. Safe to
        call twice; removes a temporary work directory (keeping its text in memory)."""
        code = terminate(self.proc, self.kill_after_s)
        if not self.keep_workdir and not self._texts:
            self._texts = {s: self.text(s) for s in STREAMS}
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def _read_ports(self) -> bool:
        text = self.text("stdout")
        match = _PORTS.search(text[:text.rfind("\n") + 1])  # whole lines only
        if match is None:
            return False
        self.port, self.metrics_port = int(match[1]), int(match[2] or 0)
        self.health_port = int(match[3] or 0)
        return True


def launch(repo: str | Path, *flags: str, workdir: str | Path | None = None,
           metrics_port: int | None = None, timeout: float = START_TIMEOUT_S,
           kill_after_s: float = 30.0, host: str = "127.0.0.1", port: int = 0) -> EdgeProcess:
    """Start one node serving ``repo``; return once it printed its ports or exited.

    Does not wait for SERVING and does not raise when the node exits: check ``running``,
    ``returncode`` and ``text("stderr")``. ``metrics_port``: None picks a free one, 0 turns
    metrics off. ``host``, ``port``: where it listens (a local fleet gives each node its own
    loopback address, 127.0.0.2 ..., and the same port). Raises EdgeStartError (and ends the
    node) when it neither printed its ports nor exited within ``timeout`` seconds.
    """
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="splitinfer-edge-")) if workdir is None else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    metrics = free_port() if metrics_port is None else metrics_port
    cmd = [*edge_command(), "--model-repository", str(repo), "--listen", f"{host}:{port}",
           "--metrics-port", str(metrics), *flags]
    try:
        with (work / "stdout.txt").open("wb") as out, (work / "stderr.txt").open("wb") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=edge_env())
    except BaseException:
        if own:
            shutil.rmtree(work, ignore_errors=True)
        raise
    node = EdgeProcess(proc, work, kill_after_s=kill_after_s, keep_workdir=not own, host=host)
    try:
        node.wait_ports(timeout)
    except BaseException:
        node.stop()
        raise
    return node


def start_edge(repo: str | Path, *flags: str, workdir: str | Path | None = None,
               metrics_port: int | None = None, timeout: float = START_TIMEOUT_S,
               kill_after_s: float = 30.0, attempts: int = 3, host: str = "127.0.0.1",
               port: int = 0) -> EdgeProcess:
    """Start a node serving ``repo`` (a free loopback port by default) and wait until it is
    SERVING.

    ``flags`` go to the node as given (``"--torch-threads", "2"``); ``host``, ``port`` as in
    :func:`launch`; ``metrics_port``: None picks a free one (retried up to ``attempts`` times
    if taken meanwhile), 0 turns metrics off. ``timeout`` bounds each wait (the ports line,
    then SERVING). Raises EdgeStartError with the node's stderr when it exits or is not ready
    in time; no process is left behind.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        node = launch(repo, *flags, workdir=workdir, metrics_port=metrics_port, timeout=timeout,
                      kill_after_s=kill_after_s, host=host, port=port)
        if node.running or not _metrics_port_lost(node, metrics_port):
            break
        log.warning("edge node start %d of %d: the metrics port was taken meanwhile; trying "
                    "another", attempt + 1, attempts)
        node.stop()
        _keep_failed_logs(node, attempt)
    if not node.running:
        node.stop()
        raise EdgeStartError(node.exit_report("at start"), node.pid)
    try:
        node.wait_serving(timeout)
    except BaseException:
        node.stop()
        raise
    return node


def _metrics_port_lost(node: EdgeProcess, asked: int | None) -> bool:
    """The node exited because the port this module picked was taken: worth another try."""
    return asked is None and "--metrics-port" in node.text("stderr")


def _keep_failed_logs(node: EdgeProcess, attempt: int) -> None:
    if node.keep_workdir:  # the caller's folder: the next try must not overwrite this one
        for stream in STREAMS:
            path = node.workdir / f"{stream}.txt"
            if path.exists():
                path.rename(node.workdir / f"{stream}.try{attempt}.txt")


def run_edge(*args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run ``splitinfer-edge *args`` to its end (a start that must fail, ``--help``) with
    stdout and stderr captured as text; subprocess.TimeoutExpired after ``timeout``."""
    return subprocess.run([*edge_command(), *args], capture_output=True, text=True,
                          env=edge_env(), timeout=timeout)
