"""Start and stop a real ``splitinfer-edge`` process for benchmarks, and read its CPU time.

Starting and stopping is ``splitinfer.cli_edgeproc``'s (shared with ``splitinfer demo``); this
module adds the CPU accounting the benchmarks report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from splitinfer import cli_edgeproc
from splitinfer.cli_edgeproc import READY_LINE, edge_command

__all__ = ["EdgeProcess", "start_edge", "cpu_seconds", "machine_busy_seconds", "READY_LINE",
           "edge_command"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


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


@dataclass
class EdgeProcess(cli_edgeproc.EdgeProcess):
    """A running edge node (see ``splitinfer.cli_edgeproc``), with its CPU time."""

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)


def start_edge(repo: Path, *flags: str, timeout: float = 180.0) -> EdgeProcess:
    """Start ``splitinfer-edge`` on free loopback ports (metrics on) and wait until SERVING."""
    node = cli_edgeproc.start_edge(repo, *flags, timeout=timeout)
    return EdgeProcess(node.proc, node.port, node.metrics_port, node.log_dir, node.kill_after_s)
