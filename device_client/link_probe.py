"""Measure the link to an edge node with ``Probe``: round trips of several sizes, robust fit.

Each sample is the round trip of one Probe minus the edge's own time (``server_s``), so what is
fitted, ``seconds = rtt + bytes * 8 / bandwidth`` (``splitinfer.link.fit_link``), is the network.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Sequence

from splitinfer.link import Link, fit_link
from splitinfer.wire.v1 import probe_pb2

__all__ = ["DEFAULT_PROBE_SIZES", "measure_link"]

DEFAULT_PROBE_SIZES = (1_000, 50_000, 200_000, 1_000_000)


def _probe(stub: Any, size: int, timeout: float, metadata: Sequence[tuple[str, str]]) -> float:
    req = probe_pb2.ProbeRequest(probe_id=uuid.uuid4().hex, payload=bytes(size),
                                 response_bytes=0)
    start = time.perf_counter()
    reply = stub.Probe(req, timeout=timeout, metadata=metadata)
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
