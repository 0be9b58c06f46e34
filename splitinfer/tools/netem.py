"""Link emulator: a TCP proxy that gives a loopback connection a rate, a delay, jitter and cut-offs.

Each direction (``up``: client → target, ``down``: target → client) is shaped on its own:

- a token bucket paces the bytes (``rate_bps``; tokens are bytes, refilled at rate/8 per second,
  capacity ``burst_bytes``, by default ``max(rate × 5 ms, 1514 B)``, one Ethernet frame being
  the least a real shaper passes at once); this is the bottleneck;
- each piece leaving the bucket is held for ``delay_s`` ± jitter (uniform, or normal with
  ``jitter_s`` as its standard deviation; seeded), but never released before the piece ahead
  of it, because a TCP stream stays ordered;
- ``drop()`` resets every connection and refuses new ones (accepted, then reset) until
  ``restore()``; ``blackhole()`` keeps connections open but moves no byte (held, not lost)
  until ``restore()``.

A direction never buffers more than ``rate × (delay + jitter + 1 s) + burst`` bytes (256 KB at
least, 4 MB when unshaped): past that it stops reading, which pushes back on the sender.

Two faces: :class:`NetemProxy` for asyncio users (``async with NetemProxy(...)``), and
:class:`LinkEmulator`, which runs one on a background thread for synchronous tests::

    with LinkEmulator(("127.0.0.1", port), shape=LinkShape(rate_bps=20e6, delay_s=0.02)) as link:
        connect_to(link.port)
        link.set_shape(LinkShape(rate_bps=5e6, delay_s=0.05))   # mid-run, open connections too
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from splitinfer.core.link import (  # re-exported: the CLI's units are the link's
    parse_duration,
    parse_rate,
)

log = logging.getLogger(__name__)

__all__ = ["LinkShape", "LinkStats", "NetemProxy", "LinkEmulator", "parse_rate",
           "parse_duration"]

_CHUNK = 64 * 1024
_MIN_BURST = 1514  # one Ethernet frame: tc's tbf, too, wants burst >= MTU
_UNSHAPED_QUEUE = 4 * 1024 * 1024


@dataclass(frozen=True)
class LinkShape:
    """How one direction of the link behaves. ``rate_bps=None`` means no rate limit."""

    rate_bps: float | None = None
    delay_s: float = 0.0
    jitter_s: float = 0.0
    burst_bytes: int | None = None
    jitter_dist: str = "uniform"

    def __post_init__(self) -> None:
        if self.rate_bps is not None and not self.rate_bps > 0:
            raise ValueError(f"rate_bps={self.rate_bps!r}: must be > 0, or None for no limit")
        for name in ("delay_s", "jitter_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 0")
        if self.burst_bytes is not None and self.burst_bytes < 1:
            raise ValueError(f"burst_bytes={self.burst_bytes!r}: must be >= 1, or None "
                             "for the default max(rate x 5 ms, 1514 B)")
        if self.jitter_dist not in ("uniform", "normal"):
            raise ValueError(f"jitter_dist={self.jitter_dist!r}: use 'uniform' or 'normal'")

    @property
    def burst(self) -> int:
        """Bucket capacity in bytes: ``burst_bytes``, or ``max(rate × 5 ms, 1514 B)``."""
        if self.burst_bytes is not None:
            return self.burst_bytes
        return max(int((self.rate_bps or 0) / 8 * 0.005), _MIN_BURST)

    @property
    def queue_limit(self) -> int:
        """Most bytes one direction holds before it stops reading (backpressure)."""
        if self.rate_bps is None:
            return _UNSHAPED_QUEUE
        held = self.rate_bps / 8 * (self.delay_s + self.jitter_s + 1.0) + self.burst
        return max(int(held), 256 * 1024)


@dataclass(frozen=True)
class LinkStats:
    """Bytes delivered per direction (``up``: client → target) and connections seen."""

    up_bytes: int = 0
    down_bytes: int = 0
    accepted: int = 0
    active: int = 0
    refused: int = 0


class _TokenBucket:
    """Bytes may leave at ``rate/8`` per second after a burst of ``capacity`` bytes.

    Tokens may go negative ("debt"): the caller sleeps for the returned time, and oversleeping
    is paid back by the refill, so the long-run rate stays exact despite timer slack.
    """

    def __init__(self) -> None:
        self.tokens: float | None = None
        self.stamp = 0.0

    def take(self, n: int, shape: LinkShape, now: float) -> float:
        if shape.rate_bps is None:
            return 0.0
        rate, cap = shape.rate_bps / 8, shape.burst
        if self.tokens is None:
            self.tokens = float(cap)
        self.tokens = min(cap, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / rate


class _Direction:
    """One direction of one connection: read, pace, delay, write, then pass on EOF."""

    def __init__(self, proxy: NetemProxy, name: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proxy, self.name, self.reader, self.writer = proxy, name, reader, writer
        self.bucket = _TokenBucket()
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0
        self.cv = asyncio.Condition()
        self.last_due = 0.0

    async def pump_in(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.proxy._flowing.wait()
            data = await self.reader.read(_CHUNK)
            if not data:
                await self._put(loop.time(), None)
                return
            for i in range(0, len(data), self.proxy.shapes[self.name].burst):
                shape = self.proxy.shapes[self.name]
                piece = data[i:i + shape.burst]
                wait = self.bucket.take(len(piece), shape, loop.time())
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._put(self._due(shape, loop.time()), piece)

    def _due(self, shape: LinkShape, now: float) -> float:
        jitter = 0.0
        if shape.jitter_s:
            rng = self.proxy._rng
            jitter = (rng.uniform(-shape.jitter_s, shape.jitter_s)
                      if shape.jitter_dist == "uniform" else rng.gauss(0.0, shape.jitter_s))
        # never before the piece ahead: bytes of one stream stay in order
        self.last_due = max(now + max(shape.delay_s + jitter, 0.0), self.last_due)
        return self.last_due

    async def _put(self, due: float, piece: bytes | None) -> None:
        async with self.cv:
            limit = self.proxy.shapes[self.name].queue_limit
            await self.cv.wait_for(lambda: self.queued == 0 or self.queued < limit)
            self.queue.append((due, piece))
            self.queued += len(piece or b"")
            self.cv.notify_all()

    async def pump_out(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self.cv:
                await self.cv.wait_for(lambda: bool(self.queue))
                due, piece = self.queue[0]
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            await self.proxy._flowing.wait()
            async with self.cv:
                self.queue.popleft()
                self.queued -= len(piece or b"")
                self.cv.notify_all()
            if piece is None:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return
            self.writer.write(piece)
            await self.writer.drain()
            self.proxy._count(self.name, len(piece))


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST (SO_LINGER 0), as a link that went down would look to the peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def _run_all(coros: list[Any]) -> None:
    """Run the pumps until all end; the first error cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(eq=False)
class _Conn:
    task: asyncio.Task[Any]
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class NetemProxy:
    """The asyncio link emulator. ``await start()`` (or ``async with``), then connect to
    ``port``. Shaping methods are synchronous and must be called on the proxy's loop."""

    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0), *,
                 shape: LinkShape | None = None, up: LinkShape | None = None,
                 down: LinkShape | None = None, seed: int = 0) -> None:
        self.target, self.listen = target, listen
        self.shapes: dict[str, LinkShape] = {}
        self.set_shape(shape or LinkShape(), up=up, down=down)
        self._rng = random.Random(seed)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_Conn] = set()
        self._counts = {"up": 0, "down": 0, "accepted": 0, "refused": 0}
        self._dropped = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    async def start(self) -> NetemProxy:
        self._server = await asyncio.start_server(self._handle, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("netem listening on %s:%d -> %s:%d", self.listen[0], self.port, *self.target)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()
        tasks = [c.task for c in self._conns]
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> NetemProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def set_shape(self, shape: LinkShape | None = None, *, up: LinkShape | None = None,
                  down: LinkShape | None = None) -> None:
        """Give both directions ``shape``, or each its own (``up``/``down`` win over
        ``shape``). Takes effect at once, for open connections too."""
        for name, value in (("up", up or shape), ("down", down or shape)):
            if value is not None:
                if not isinstance(value, LinkShape):
                    raise TypeError(f"{name} shape is {type(value).__name__}: "
                                    "pass a LinkShape")
                self.shapes[name] = value

    def drop(self) -> None:
        """Reset every connection and refuse new ones until :meth:`restore`."""
        self._dropped = True
        self._reset_all()

    def blackhole(self) -> None:
        """Keep connections open, forward nothing (bytes are held) until :meth:`restore`."""
        self._flowing.clear()

    def restore(self) -> None:
        """Undo :meth:`drop` and :meth:`blackhole`."""
        self._dropped = False
        self._flowing.set()

    @property
    def stats(self) -> LinkStats:
        c = self._counts
        return LinkStats(up_bytes=c["up"], down_bytes=c["down"], accepted=c["accepted"],
                         active=len(self._conns), refused=c["refused"])

    def _count(self, name: str, n: int) -> None:
        self._counts[name] += n

    def _reset_all(self) -> None:
        for conn in list(self._conns):
            for w in conn.writers:
                _reset(w)
            conn.task.cancel()

    async def _handle(self, c_reader: asyncio.StreamReader,
                      c_writer: asyncio.StreamWriter) -> None:
        if self._dropped:
            self._counts["refused"] += 1
            _reset(c_writer)
            return
        self._counts["accepted"] += 1
        conn = _Conn(asyncio.current_task(), [c_writer])  # type: ignore[arg-type]
        self._conns.add(conn)
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
            conn.writers.append(t_writer)
            up = _Direction(self, "up", c_reader, t_writer)
            down = _Direction(self, "down", t_reader, c_writer)
            await _run_all([up.pump_in(), up.pump_out(), down.pump_in(), down.pump_out()])
            for w in conn.writers:
                w.close()
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("netem connection ended: %s", exc)
            for w in conn.writers:
                _reset(w)
        except asyncio.CancelledError:
            for w in conn.writers:
                _reset(w)
        finally:
            self._conns.discard(conn)


class LinkEmulator:
    """A :class:`NetemProxy` on its own thread and event loop, for synchronous code::

        with LinkEmulator(("127.0.0.1", port), shape=LinkShape(rate_bps=20e6)) as link:
            ...  # connect to ("127.0.0.1", link.port); link.drop(); link.restore()
    """

    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0),
                 **kwargs: Any) -> None:
        self._args = (target, listen)
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.proxy: NetemProxy | None = None

    @property
    def port(self) -> int:
        return self._proxy().port

    @property
    def stats(self) -> LinkStats:
        return self._proxy().stats

    def start(self) -> LinkEmulator:
        ready: list[Any] = []
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def boot() -> None:
            try:
                ready.append(await NetemProxy(*self._args, **self._kwargs).start())
            except BaseException as exc:  # handed to the caller's thread below
                ready.append(exc)
            started.set()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.create_task(boot())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="netem", daemon=True)
        self._thread.start()
        started.wait()
        if isinstance(ready[0], BaseException):
            self.stop()
            raise ready[0]
        self.proxy = ready[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self.proxy is not None:
            asyncio.run_coroutine_threadsafe(self.proxy.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = self.proxy = None

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_shape(self, shape: LinkShape | None = None, *, up: LinkShape | None = None,
                  down: LinkShape | None = None) -> None:
        self._call(lambda p: p.set_shape(shape, up=up, down=down))

    def drop(self) -> None:
        self._call(NetemProxy.drop)

    def blackhole(self) -> None:
        self._call(NetemProxy.blackhole)

    def restore(self) -> None:
        self._call(NetemProxy.restore)

    def _proxy(self) -> NetemProxy:
        if self.proxy is None:
            raise RuntimeError("LinkEmulator is not running: use it in a with block, "
                               "or call start() first")
        return self.proxy

    def _call(self, fn: Callable[[NetemProxy], None]) -> None:
        """Run ``fn(proxy)`` on the proxy's loop and wait for it (errors come back here)."""
        proxy = self._proxy()

        async def call() -> None:
            fn(proxy)

        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)
