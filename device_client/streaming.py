"""``stream()``: many frames, pipelined over one InferStream call per edge, answers in order.

A producer takes frames from the caller, runs each head on the device thread and writes the
request into the current edge's stream without waiting for its answer, so the head of frame
n+1 runs while frame n is on the wire or at the edge; at most ``window`` frames are in flight.
A reader per stream matches answers to frames (they come back in request order, with the
request id). A watchdog fails a stream whose oldest frame passed its deadline (a hung edge).
When a stream fails, its unanswered frames, in order, go to another edge where their deadline
allows, else to the local tail, else to an error: each frame is answered exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterable, AsyncIterator, Iterable

import grpc

from splitinfer.wire import convert

from . import _errors
from .breaker import OPEN
from .edges import Edge

__all__ = ["stream_frames"]

_END = object()


@dataclass(eq=False)
class _Frame:
    rid: str
    start: float
    deadline: float
    future: asyncio.Future[Any]
    cut_id: int = 0
    codec: str | None = None
    crossing: tuple[Any, ...] = ()
    request: Any = None
    tried: set[Edge] = field(default_factory=set)
    sent_at: float = 0.0
    alone: bool = False          # nothing else in flight when sent: its round trip is clean
    remote_deadline: float = 0.0


class _Session:
    """One InferStream call to one edge, its pending frames, reader and watchdog."""

    def __init__(self, run: _StreamRun, edge: Edge) -> None:
        self.run, self.edge = run, edge
        self.call = edge.stub.InferStream(metadata=edge.metadata)
        self.pending: deque[_Frame] = deque()
        self.dead = False
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._watch())]

    def usable(self) -> bool:
        return not self.dead and not self.edge.incompatible and self.edge.breaker.state != OPEN

    async def submit(self, frame: _Frame) -> None:
        frame.request.version = self.edge.version
        frame.sent_at, frame.alone = time.monotonic(), not self.pending
        self.edge.requests += 1
        self.pending.append(frame)
        self._wake.set()
        try:
            await self.call.write(frame.request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, RuntimeError) as exc:
            self.fail("UNAVAILABLE", f"UNAVAILABLE: stream write failed ({exc})")

    async def _read(self) -> None:
        try:
            while True:
                reply = await self.call.read()
                if reply is grpc.aio.EOF:
                    if self.pending:
                        self.fail("UNAVAILABLE", "UNAVAILABLE: the edge ended the stream early")
                    return
                if not self.pending or reply.request_id != self.pending[0].rid:
                    self.fail("INTERNAL", f"INTERNAL: answer {reply.request_id!r} matches no "
                                          f"frame in order")
                    return
                self.run.answered(self, self.pending.popleft(), reply)
        except grpc.aio.AioRpcError as exc:
            self.fail(exc.code().name, f"{exc.code().name}: {exc.details()}")

    async def _watch(self) -> None:
        while not self.dead:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            frame = self.pending[0]
            await asyncio.sleep(max(frame.remote_deadline - time.monotonic(), 0.0))
            if not self.dead and self.pending and self.pending[0] is frame:
                self.fail("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED: no answer before the deadline")

    def fail(self, code: str, why: str) -> None:
        """Stop this stream; hand its unanswered frames back to the run, in order."""
        if self.dead:
            return
        self.dead = True
        _errors.record(self.edge, grpc.StatusCode[code], why)
        self.call.cancel()
        frames, self.pending = list(self.pending), deque()
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self.run.redo(frames, code, f"{self.edge.address}: {why}")

    async def finish(self) -> None:
        """Normal end: no more writes; wait for the reader to see EOF, briefly."""
        if self.dead:
            return
        try:
            await self.call.done_writing()
            await asyncio.wait_for(asyncio.shield(self._tasks[0]), timeout=1.0)
        except (asyncio.TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
        self.dead = True
        self.call.cancel()
        for t in self._tasks:
            t.cancel()


class _StreamRun:
    """The state of one ``stream()`` call."""

    def __init__(self, client: Any) -> None:
        self.c = client
        self.session: _Session | None = None
        self.sessions: list[_Session] = []
        self.window = asyncio.Semaphore(client.window)
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self.frames: list[_Frame] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- producing ------------------------------------------------------------------------
    async def produce(self, frames: Iterable[Any] | AsyncIterable[Any]) -> None:
        c = self.c
        try:
            async for item in _aiter(frames):
                await self.window.acquire()
                now = time.monotonic()
                frame = _Frame(uuid.uuid4().hex, now, now + c.deadline_s,
                               asyncio.get_running_loop().create_future())
                c._stats.started()
                self.frames.append(frame)
                await self.out.put(frame)
                try:
                    await self._start(frame, item if isinstance(item, tuple) else (item,))
                except Exception as exc:  # this frame's input or head failed: its answer
                    self.reject(frame, exc)
        except Exception as exc:  # the caller's iterator failed: end the stream with it
            await self.out.put(exc)
        else:
            await self.out.put(_END)

    async def _start(self, frame: _Frame, inputs: tuple[Any, ...]) -> None:
        c = self.c
        x = c.runner.prepare(inputs)
        plan = c.plan
        frame.cut_id, frame.codec = plan.cut_id, plan.codec
        if plan.codec is None:
            self.resolve(frame, await c.on_device(c.run_full, plan.cut_id, x,
                                                  expect_s=c.expected_device_s(plan)), "device")
            return
        frame.crossing, frame.request = await c.on_device(c.head_request, plan, x, frame.rid,
                                                          expect_s=c.expected_device_s(plan))
        await self.dispatch(frame, "NO_EDGE", "no usable edge")

    async def dispatch(self, frame: _Frame, code: str, why: str) -> None:
        """Send ``frame`` on a stream to an edge it has not tried, else fall back."""
        c = self.c
        remaining = frame.deadline - time.monotonic() - c.local_reserve_s(frame.cut_id)
        session = self._session(frame) if remaining > 0.001 else None
        if session is None:
            await self.fall_back(frame, code, why)
            return
        if frame.tried:
            c._stats.add(retries=1)
        frame.tried.add(session.edge)
        frame.remote_deadline = time.monotonic() + remaining
        await session.submit(frame)

    def _session(self, frame: _Frame) -> _Session | None:
        s = self.session
        if s is not None and s.usable() and s.edge not in frame.tried:
            return s
        edge = self.c._pool.pick(frame.tried)
        if edge is None:
            return None
        s = self.session = _Session(self, edge)
        self.sessions.append(s)
        return s

    # -- answers --------------------------------------------------------------------------
    def answered(self, session: _Session, frame: _Frame, reply: Any) -> None:
        c = self.c
        result = convert.parse_infer_response(reply)
        if result.error is not None:
            code = _errors.status_code(result.error.code)
            why = f"{code.name}: {result.error.message}"
            final = _errors.record(session.edge, code, why)
            self.redo([frame], code.name, f"{session.edge.address}: {why}", final=final)
            return
        session.edge.succeeded()
        outs = tuple(c.runner.decode(o) for o in result.outputs)
        if frame.alone:
            c.observe(frame.request.ByteSize(), reply.ByteSize(),
                      time.monotonic() - frame.sent_at, result.timing)
        else:  # queued behind other frames: its round trip is not the network's
            c._stats.add(bytes_sent=frame.request.ByteSize(), bytes_received=reply.ByteSize())
        self.resolve(frame, outs, "edge")
        c.maybe_shadow(frame.cut_id, frame.crossing, outs)

    def redo(self, frames: list[_Frame], code: str, why: str, final: bool = False) -> None:
        """Frames a stream could not answer: elsewhere, in order (or fall back when final)."""
        async def again() -> None:
            for frame in frames:
                if final:
                    await self.fall_back(frame, code, why)
                else:
                    await self.dispatch(frame, code, why)

        task = asyncio.get_running_loop().create_task(again())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def fall_back(self, frame: _Frame, code: str, why: str) -> None:
        c = self.c
        try:
            outs = await c._fallback(frame.cut_id, frame.crossing, frame.rid, why, code)
        except Exception as exc:
            self.reject(frame, exc)
        else:
            self.resolve(frame, outs, "local", code)

    def resolve(self, frame: _Frame, outs: tuple[Any, ...], outcome: str,
                reason: str = "") -> None:
        if not frame.future.done():
            frame.future.set_result(outs)
            self.c._stats.finished(outcome, time.monotonic() - frame.start, reason)

    def reject(self, frame: _Frame, exc: BaseException) -> None:
        if not frame.future.done():
            frame.future.set_exception(exc)
            self.c._stats.finished("error", time.monotonic() - frame.start)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for s in self.sessions:
            await s.finish()
        for frame in self.frames:  # frames the caller will never read
            if not frame.future.done():
                frame.future.cancel()
                self.c._stats.finished("cancelled", None)
            elif not frame.future.cancelled():
                frame.future.exception()  # mark retrieved: no "never retrieved" warnings


async def stream_frames(client: Any, frames: Iterable[Any] | AsyncIterable[Any]
                        ) -> AsyncIterator[Any]:
    run = _StreamRun(client)
    producer = asyncio.get_running_loop().create_task(run.produce(frames))
    try:
        while True:
            item = await run.out.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            try:
                outs = await item.future
            finally:
                run.window.release()
            yield outs[0] if len(outs) == 1 else outs
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
        await run.close()


async def _aiter(frames: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    """The caller's frames as an async iterator; a blocking iterator is read in a thread."""
    if hasattr(frames, "__aiter__"):
        async for item in frames:  # type: ignore[union-attr]
            yield item
        return
    it = iter(frames)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    while True:
        item = await loop.run_in_executor(None, next, it, _END)
        if item is _END:
            return
        yield item

