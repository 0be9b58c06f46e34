"""Measure the link to an edge node with ``Probe``: round trips of several sizes, robust fit.

Each sample is the network time of one Probe echo (``Edge.probe``: the round trip minus the
edge's own time), so what is fitted, ``seconds = rtt + bytes * 8 / bandwidth``
(``splitinfer.core.link.fit_link``), is the network. The sizes come from a first rough estimate,
so a 1 Mbit/s link is measured in about a second and a 1 Gbit/s one still sees real transfers.
When even the largest probe's transfer time is lost in the round trips' noise (loopback, a busy
machine), the fit has no slope to find: the link is then taken as "at least this fast"
(``splitinfer.core.link.bounded_link``), never refused; the client's live estimate refines it
from real requests.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

from splitinfer.core.link import Link, bounded_link, fit_link

if TYPE_CHECKING:
    from .edges import Edge

__all__ = ["measure_link", "sizes_for"]

log = logging.getLogger(__name__)


def sizes_for(rough_bps: float, seconds: float = 0.15) -> list[int]:
    """Probe sizes whose largest takes about ``seconds`` to send at ``rough_bps`` (at most
    2 MB: bigger probes need extra HTTP/2 flow-control round trips, which bend the fit)."""
    top = int(min(max(rough_bps / 8 * seconds, 32 << 10), 2 << 20))
    return [1024, top // 4, top // 2, top]


async def measure_link(edge: Edge, rounds: int = 3, *, sizes: Sequence[int] | None = None,
                       timeout: float = 30.0) -> tuple[Link, list[tuple[int, float]]]:
    """Fit the link from ``rounds`` Probe echoes of every size; also return the samples.

    One unmeasured Probe first pays for the connection (and, through a link emulator, for a
    shape just changed). Without ``sizes``, 1 KB and 64 KB probes give a rough bandwidth and
    ``sizes_for`` picks the sizes from it."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds is {rounds!r}; expected an int >= 1")
    await edge.probe(0, timeout)
    if sizes is None:
        small = await edge.probe(1024, timeout)
        large = await edge.probe(64 << 10, timeout)
        sizes = sizes_for((63 << 10) * 8 / max(large - small, 1e-4))
    samples = [(size, await edge.probe(size, timeout)) for _ in range(rounds) for size in sizes]
    try:
        return fit_link(samples), samples
    except ValueError:
        if len({size for size, _ in samples}) < 2:
            raise  # one size: the caller's mistake, not noise
        link = bounded_link(samples)
        log.info("link probes: transfer time lost in the noise; taking %s as a lower bound",
                 link)
        return link, samples

