"""The device's compute: one thread, as a device computes one thing at a time, optionally dilated
to emulate a slower device, and timed.

Model work (heads, encoding, decoding answers, local tails, shadow checks) runs here, off the
event loop, so the loop keeps moving bytes while the device computes. ``step`` runs one piece of
request work (dilated when ``slowdown`` > 1: ``splitinfer.measure.slowdown.SlowDevice``) and
says how long it took, which is what the device's speed estimate is fed; ``run`` is for work
that is not a request's (loading the bundle, profiling), never dilated.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from splitinfer.measure.slowdown import SlowDevice

__all__ = ["Device"]

T = TypeVar("T")


class Device:
    """The device thread. ``slowdown``: emulate a device that many times slower (1 = off)."""

    def __init__(self, slowdown: float = 1.0) -> None:
        self.slowdown = float(slowdown)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="splitinfer-device")
        # SlowDevice keeps per-thread accounts: it is only ever used on the device thread
        self._slow = SlowDevice(slowdown) if slowdown > 1 else None

    async def step(self, fn: Callable[..., T], *args: object) -> tuple[T, float]:
        """``fn(*args)`` on the device thread as one (dilated) step; its result and seconds."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._timed, fn, *args)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the device thread, never dilated (loading, profiling)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def _timed(self, fn: Callable[..., T], *args: object) -> tuple[T, float]:
        start = time.perf_counter()
        out = fn(*args) if self._slow is None else self._slow.run(fn, *args)
        return out, time.perf_counter() - start

    def close(self) -> None:
        """Stop taking work; queued work is cancelled, running work finishes on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)
