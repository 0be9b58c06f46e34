"""Emulate a slower device by time dilation: run a step at full speed, then idle for the rest.

On one machine the device and the edge share the same cores, so a split cannot win unless the
device is made slower than the edge, as a phone is next to a server. ``SlowDevice(15)`` makes
the calling thread behave like a core 15 times slower: after each step it sleeps 14 times the
CPU time (``time.thread_time``) the step used. Unlike a CPU quota (``splitinfer.tools.cpuquota``),
whose kernel scheduler cuts the work into 1 ms slices every 10 ms period, this keeps the work
in one piece, so the same step takes the same time (to the machine's own noise) wherever it
falls in the period, and nothing carries over from one step into the next. Sleep overshoot is
carried as credit, so over many steps the idle time is exact.

Only the calling thread's CPU time counts: run torch with one thread (``torch.set_num_threads(1)``)
so that the work is on this thread. Network waits are not steps: a link is not slower because
the device is.

::

    device = SlowDevice(15)
    crossing = device.run(head, x)          # head time x 15
    with device.step():                     # the same, for a block of code
        payload = encode(crossing)
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator

__all__ = ["SlowDevice"]


class SlowDevice:
    """A thread ``factor`` times slower than this machine's (``factor`` >= 1; 1 = full speed).

    Not shared between threads: each thread that plays the device needs its own.
    """

    def __init__(self, factor: float) -> None:
        if (not isinstance(factor, (int, float)) or isinstance(factor, bool)
                or not 1 <= factor < math.inf):
            raise ValueError(f"SlowDevice factor must be a number >= 1, got {factor!r}")
        self.factor = float(factor)
        self._credit = 0.0  # seconds slept beyond what was owed, paid back by the next steps
        self.cpu_s = 0.0    # CPU time of every step so far
        self.idle_s = 0.0   # time slept so far

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` as one step; returns its result."""
        with self.step():
            return fn(*args, **kwargs)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """One step: the block runs at full speed, then the thread idles (factor − 1) × the
        CPU time the block used. An exception still pays for the time used."""
        start = time.thread_time()
        try:
            yield
        finally:
            self._pay(time.thread_time() - start)

    def _pay(self, cpu_s: float) -> None:
        self.cpu_s += cpu_s
        owed = cpu_s * (self.factor - 1) - self._credit
        if owed <= 0:
            self._credit = -owed
            return
        start = time.perf_counter()
        time.sleep(owed)
        slept = time.perf_counter() - start
        self.idle_s += slept
        self._credit = slept - owed

    def __repr__(self) -> str:
        return f"SlowDevice(factor={self.factor:g})"
