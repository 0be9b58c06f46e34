"""Measure the link to an edge node with ``Probe``: round trips of several sizes, robust fit.

Each sample is the round trip of one Probe minus the edge's own time (``server_s``), so what is
fitted, ``seconds = rtt + bytes * 8 / bandwidth`` (``splitinfer.link.fit_link``), is the network.
``measure_link`` works on a blocking stub (the CLI, benchmarks); ``measure_link_async`` on a
``grpc.aio`` stub (the device client), and picks its sizes from a first rough estimate so a
1 Mbit/s link is measured in about a second and a 1 Gbit/s one still sees real transfers.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Sequence

from splitinfer.link import Link, fit_link
from splitinfer.wire.v1 import probe_pb2

__all__ = ["DEFAULT_PROBE_SIZES", "measure_link", "measure_link_async", "sizes_for"]

DEFAULT_PROBE_SIZES = (1_000, 50_000, 200_000, 1_000_000)


def _request(size: int) -> probe_pb2.ProbeRequest:
    return probe_pb2.ProbeRequest(probe_id=uuid.uuid4().hex, payload=bytes(size),
                                  response_bytes=0)


def _probe(stub: Any, size: int, timeout: float, metadata: Sequence[tuple[str, str]]) -> float:
    start = time.perf_counter()
    reply = stub.Probe(_request(size), timeout=timeout, metadata=metadata)
    return time.perf_counter() - start - reply.server_s


def measure_link(stub: Any, sizes: Sequence[int] = DEFAULT_PROBE_SIZES, rounds: int = 5, *,
                 timeout: float = 30.0, metadata: Sequence[tuple[str, str]] = ()
                 ) -> tuple[Link, list[tuple[int, float]]]:
    """Fit the link from ``rounds`` Probe echoes of every size; also return the samples.

    ``stub`` is an ``EdgeInferenceStub``. One unmeasured Probe first pays for the connection
    (and, through a link emulator, for a shape just changed), so no sample carries it.
    """
    _probe(stub, 0, timeout, metadata)
    samples = [(size, _probe(stub, size, timeout, metadata))
               for _ in range(rounds) for size in sizes]
    return fit_link(samples), samples


async def probe_async(stub: Any, size: int, timeout: float,
                      metadata: Sequence[tuple[str, str]] = ()) -> float:
    """Network seconds of one Probe of ``size`` bytes on a ``grpc.aio`` stub."""
    start = time.perf_counter()
    reply = await stub.Probe(_request(size), timeout=timeout, metadata=metadata)
    return time.perf_counter() - start - reply.server_s


def sizes_for(rough_bps: float, seconds: float = 0.15) -> list[int]:
    """Probe sizes whose largest takes about ``seconds`` to send at ``rough_bps``."""
    top = int(min(max(rough_bps / 8 * seconds, 32 << 10), 2 << 20))
    return [1024, top // 4, top // 2, top]


async def measure_link_async(stub: Any, rounds: int = 3, *, timeout: float = 30.0,
                             metadata: Sequence[tuple[str, str]] = ()
                             ) -> tuple[Link, list[tuple[int, float]]]:
    """Warm up, estimate roughly from 1 KB and 64 KB probes, then fit ``rounds`` of
    ``sizes_for(rough)``."""
    await probe_async(stub, 0, timeout, metadata)
    small = await probe_async(stub, 1024, timeout, metadata)
    large = await probe_async(stub, 64 << 10, timeout, metadata)
    rough = (63 << 10) * 8 / max(large - small, 1e-4)
    samples = [(size, await probe_async(stub, size, timeout, metadata))
               for _ in range(rounds) for size in sizes_for(rough)]
    return fit_link(samples), samples
