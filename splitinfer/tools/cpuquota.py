"""Make this process a slower "device": confine threads to a share of a CPU with cgroup v1.

On one machine the device and the edge share the same cores, so a split cannot win unless the
device is made slower than the edge, as a phone is next to a server. ``DeviceQuota(0.25)``
puts the calling thread (or the threads given) into a ``cpu`` cgroup allowed 0.25 cores
(``cpu.cfs_quota_us`` over a 10 ms period). Threads started later by a confined thread inherit
the group, so start what must stay fast (an edge subprocess, a link emulator thread) *before*
entering it. Where ``/sys/fs/cgroup/cpu`` is missing or not writable (no root, cgroup v2 only)
it logs a warning and does nothing: the device then runs at full speed. ``group`` is None then.

::

    with DeviceQuota(0.25) as quota:      # quota.group: the cgroup directory, or None
        run_device_side()
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Iterable

__all__ = ["DeviceQuota"]

log = logging.getLogger(__name__)

_PERIOD_US = 10_000


class DeviceQuota:
    """Confine threads to ``cores`` CPUs' worth of time (cgroup v1 ``cpu`` controller).

    ``threads``: native thread ids to confine; default the calling thread. ``cores <= 0`` turns
    it off. Leaving moves every thread still in the group back to the root group and removes it
(twice is harmless).
    """

    ROOT = Path("/sys/fs/cgroup/cpu")

    def __init__(self, cores: float, threads: Iterable[int] | None = None) -> None:
        self.cores = cores
        self.threads = list(threads) if threads is not None else None
        self.group: Path | None = None
        self.error = ""  # why there is no quota, when it was asked for and could not be made

    def __enter__(self) -> DeviceQuota:
        if self.cores <= 0:
            return self
        group = self.ROOT / f"splitinfer-device-{os.getpid()}"
        try:
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(max(int(_PERIOD_US * self.cores),
                                                            1000)))
            for tid in self.threads or [threading.get_native_id()]:
                (group / "tasks").write_text(str(tid))
            self.group = group
        except OSError as exc:
            self.error = str(exc)
            log.warning("no CPU quota for the device (%s); it runs at full speed", exc)
            if group.exists():
                self._release(group)
        return self

    def __exit__(self, *exc: object) -> None:
        # ``group`` stays set afterwards: callers report whether the quota was in force
        if self.group is not None and self.group.exists():
            self._release(self.group)

    def _release(self, group: Path) -> None:
        # threads started under the quota inherited it: move every one back, then remove
        try:
            tids = (group / "tasks").read_text().split()
        except OSError:
            tids = []
        for tid in tids:
            try:
                (self.ROOT / "tasks").write_text(tid)
            except OSError:
                pass  # the thread ended meanwhile
        try:
            group.rmdir()
        except OSError as exc:
            log.warning("could not remove the cgroup %s (%s)", group, exc)
