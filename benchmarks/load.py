"""Closed-loop load over gRPC, shared by the benchmarks: ``clients`` coroutines, each sending its
next request when the last one is answered, pre-serialized bytes in and out (no protobuf work
per call; :func:`closed_loop_calls`: any awaitable call instead, a client library's own),
latencies kept for the answers that arrive inside the measured window."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any, Awaitable, Callable

import grpc

from benchmarks.machine import machine_busy_seconds

#: the largest message either side of a benchmark sends (a 401 KB activation fits many times)
MAX_MESSAGE = 64 << 20


async def closed_loop(address: str, method: str, payload: bytes, clients: int,
                      warmup_s: float, measure_s: float,
                      sample: Callable[[], dict[str, float]] | None = None) -> dict[str, Any]:
    """The window's latencies, its length, and counter deltas over it: this process's CPU
    seconds (``client_cpu``), the machine's (``machine_cpu``) and whatever ``sample`` reads
    (run in a thread at the window's start and end: a scrape of the server, say)."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE),
               ("grpc.max_send_message_length", MAX_MESSAGE)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(method)
        await call(payload, timeout=60)
        return await closed_loop_calls(functools.partial(call, payload, timeout=60), clients,
                                       warmup_s, measure_s, sample)


async def closed_loop_calls(call: Callable[[], Awaitable[Any]], clients: int, warmup_s: float,
                            measure_s: float,
                            sample: Callable[[], dict[str, float]] | None = None
                            ) -> dict[str, Any]:
    """:func:`closed_loop` over any awaitable call (a client library's own ``infer``, say):
    ``clients`` coroutines each awaiting ``call()`` again as soon as it returns."""
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup_s
    end = begin + measure_s
    latencies: list[float] = []
    marks: list[dict[str, float]] = []

    async def client() -> None:
        while loop.time() < end:
            t0 = loop.time()
            await call()
            t1 = loop.time()
            if begin <= t1 <= end:  # answered in the window, whenever it was sent
                latencies.append(t1 - t0)

    def mark() -> dict[str, float]:
        return {"client_cpu": time.process_time(), "machine_cpu": machine_busy_seconds(),
                **(sample() if sample is not None else {})}

    async def meter() -> None:
        await asyncio.sleep(begin - loop.time())
        marks.append(await loop.run_in_executor(None, mark))
        await asyncio.sleep(end - loop.time())
        marks.append(await loop.run_in_executor(None, mark))

    await asyncio.gather(meter(), *(client() for _ in range(clients)))
    return {"latencies": latencies, "seconds": measure_s,
            **{k: marks[1][k] - marks[0][k] for k in marks[0]}}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")
