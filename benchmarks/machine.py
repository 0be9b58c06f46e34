"""CPU accounting of this machine for the benchmarks: how busy every core was, and a process's
CPU time (Linux /proc; 0.0 elsewhere, so a table still prints)."""

from __future__ import annotations

import os
from pathlib import Path

from splitinfer.tools.edgeproc import process_cpu_seconds

__all__ = ["machine_busy_seconds", "process_cpu_seconds"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float:
    """CPU seconds every core of this machine spent busy so far (Linux /proc/stat; else 0.0)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS
