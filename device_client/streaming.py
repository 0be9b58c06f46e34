"""``stream()``: many frames, pipelined over one InferStream call per edge, answers in order.

A producer takes frames from the caller, prepares each on the device thread (the request path's
``prepare``: head, encoding, the request) and writes it into the current edge's stream without
waiting for its answer, so the head of frame n+1 runs while frame n is on the wire or at the
edge; at most ``window`` frames are in flight. A reader per stream matches answers to frames
(they come back in request order, with the request id) and hands them to the request path
(``read``, ``judge``), as a unary answer would be. A watchdog fails a stream whose oldest frame
passed its deadline (a hung edge). When a stream fails, its unanswered frames, in order, go to
another edge where their deadline allows, else to the local tail, else to an error: each frame
is answered exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterable, AsyncIterator, Iterable

from splitinfer.core.errors import ServingError, ShuttingDown

from .breaker import OPEN
from .request_path import (
    SAME_EDGE_CODES,
    STREAM_BROKEN_CODES,
    Answer,
    Prepared,
    as_serving_error,
    retry_same,
)

if TYPE_CHECKING:
    from splitinfer.wire.v1 import inference_pb2

    from .edges import EdgePool, EdgeState, EdgeStream
    from .request_path import RequestPath
    from .session import Session
    from .stats import StatsRecorder

__all__ = ["stream_frames"]

_END = object()


@dataclass(eq=False)
class _Frame:
    rid: str
    start: float
    deadline: float
    future: asyncio.Future[Answer]
    prepared: Prepared | None = None
    tried: set[EdgeState] = field(default_factory=set)
    again: dict[EdgeState, int] = field(default_factory=dict)  # retry_same's count
    attempts: int = 0
    sent_at: float = 0.0
    alone: bool = False          # nothing else in flight when sent: its round trip is clean
    remote_deadline: float = 0.0


class _Lane:
    """One InferStream call to one edge, its pending frames, reader and watchdog."""

    def __init__(self, run: _StreamRun, state: EdgeState) -> None:
        self.run, self.state = run, state
        self.call: EdgeStream = state.edge.infer_stream()
        self.pending: deque[_Frame] = deque()
        self.dead = False
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._watch())]

    def usable(self) -> bool:
        return not self.dead and not self.state.incompatible \
            and self.state.breaker.state != OPEN

    async def submit(self, frame: _Frame, prepared: Prepared) -> None:
        request = self.run.path.sendable(self.state, prepared)
        frame.sent_at, frame.alone = time.monotonic(), not self.pending
        self.pending.append(frame)
        self._wake.set()
        try:
            await self.call.write(request)
        except Exception as exc:  # a broken stream: its frames go elsewhere
            self.fail(as_serving_error(exc, self.state))

    async def _read(self) -> None:
        try:
            while True:
                reply = await self.call.read()
                if reply is None:
                    if self.pending:
                        self.fail(ServingError("the edge ended the stream early",
                                               code="UNAVAILABLE"))
                    return
                if not self.pending or reply.request_id != self.pending[0].rid:
                    self.fail(ServingError(f"answer {reply.request_id!r} matches no frame in "
                                           f"order", code="INTERNAL"))
                    return
                await self.run.answered(self, self.pending.popleft(), reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(as_serving_error(exc, self.state))

    async def _watch(self) -> None:
        while not self.dead:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            frame = self.pending[0]
            await asyncio.sleep(max(frame.remote_deadline - time.monotonic(), 0.0))
            if not self.dead and self.pending and self.pending[0] is frame:
                self.fail(ServingError("no answer before the deadline",
                                       code="DEADLINE_EXCEEDED"))

    def fail(self, error: ServingError) -> None:
        """Stop this stream; hand its unanswered frames back to the run, in order."""
        if self.dead:
            return
        self.dead = True
        self.run.path.judge(self.state, error, "(stream)")
        self.call.cancel()
        frames, self.pending = list(self.pending), deque()
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self.run.redo(self.state, frames, error.code,
                      f"{self.state.address}: {error.code}: {error}", broken=True)

    async def finish(self) -> None:
        """Normal end: no more writes; wait for the reader to see the end, briefly."""
        if self.dead:
            return
        try:
            await self.call.done_writing()
            await asyncio.wait_for(asyncio.shield(self._tasks[0]), timeout=1.0)
        except (asyncio.TimeoutError, ServingError):
            pass
        self.dead = True
        self.call.cancel()
        for t in self._tasks:
            t.cancel()


class _StreamRun:
    """The state of one ``stream()`` call."""

    def __init__(self, path: RequestPath, pool: EdgePool) -> None:
        self.path, self.pool = path, pool
        self.session: Session = path.session
        self.stats: StatsRecorder = path.stats
        self.lane: _Lane | None = None
        self.lanes: list[_Lane] = []
        self.window = asyncio.Semaphore(path.options.window)
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self.frames: list[_Frame] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- producing ----------------------------------------------------------------------------
    async def produce(self, frames: Iterable[Any] | AsyncIterable[Any]) -> None:
        try:
            async for item in _aiter(frames):
                await self.window.acquire()
                now = time.monotonic()
                frame = _Frame(uuid.uuid4().hex, now, now + self.path.options.deadline_s,
                               asyncio.get_running_loop().create_future())
                self.stats.started()
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
        x = self.session.runner.prepare(inputs)
        p = frame.prepared = await self.path.prepare(self.session.plan, x, frame.rid)
        if p.request is None:
            self.resolve(frame, Answer(p.outputs, "device", "device", device_s=p.device_s))
            return
        await self.dispatch(frame, p, "NO_EDGE", "no usable edge")

    async def dispatch(self, frame: _Frame, p: Prepared, code: str, why: str) -> None:
        """Send ``frame`` on a stream to an edge it has not tried, else fall back."""
        remaining = frame.deadline - time.monotonic() - self.session.local_reserve_s(
            p.plan.cut_id)
        lane = self._lane(frame) if remaining > 0.001 else None
        if lane is None:
            await self.fall_back(frame, p, code, why)
            return
        if frame.attempts:
            self.stats.add(retries=1)
        frame.attempts += 1
        frame.tried.add(lane.state)
        frame.remote_deadline = time.monotonic() + remaining
        await lane.submit(frame, p)

    def _lane(self, frame: _Frame) -> _Lane | None:
        lane = self.lane
        if lane is not None and lane.usable() and lane.state not in frame.tried:
            return lane
        state = self.pool.pick(frame.tried)
        if state is None:
            return None
        lane = self.lane = _Lane(self, state)
        self.lanes.append(lane)
        return lane

    # -- answers ------------------------------------------------------------------------------
    async def answered(self, lane: _Lane, frame: _Frame,
                       reply: inference_pb2.InferResponse) -> None:
        p = frame.prepared
        if p is None:  # never sent without one; kept for the type checker's sake
            raise RuntimeError(f"frame {frame.rid} was answered before it was prepared")
        answer = await self.path.read(lane.state, p, reply, time.monotonic() - frame.sent_at,
                                      clean=frame.alone)  # queued frames: not the network's
        if isinstance(answer, ShuttingDown):
            # this stream's replica is draining: every frame on it would be refused too; a new
            # stream on the same address reaches another replica (round_robin)
            lane.pending.appendleft(frame)
            lane.fail(answer)
            return
        if isinstance(answer, ServingError):
            final = self.path.judge(lane.state, answer, frame.rid)
            self.redo(lane.state, [frame], answer.code,
                      f"{lane.state.address}: {answer.code}: {answer}", final=final)
            return
        self.resolve(frame, answer)
        self.path.maybe_shadow(p, answer.outputs)

    def redo(self, state: EdgeState, frames: list[_Frame], code: str, why: str,
             final: bool = False, broken: bool = False) -> None:
        """Frames ``state``'s stream could not answer: elsewhere (or on another replica behind
        the same address: ``retry_same``), in order; fall back when final. ``broken``: the
        stream call itself failed, not one frame's answer."""
        if not final:
            codes = STREAM_BROKEN_CODES if broken else SAME_EDGE_CODES
            for frame in frames:
                retry_same(state, code, frame.tried, frame.again, codes)

        async def again() -> None:
            for frame in frames:
                if frame.prepared is None:
                    continue
                if final:
                    await self.fall_back(frame, frame.prepared, code, why)
                else:
                    await self.dispatch(frame, frame.prepared, code, why)

        task = asyncio.get_running_loop().create_task(again())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def fall_back(self, frame: _Frame, p: Prepared, code: str, why: str) -> None:
        try:
            answer = await self.path.fall_back(p, why, code)
        except Exception as exc:
            self.reject(frame, exc)
        else:
            self.resolve(frame, answer)

    def resolve(self, frame: _Frame, answer: Answer) -> None:
        if not frame.future.done():
            frame.future.set_result(answer)
            self.stats.finished(answer.outcome, time.monotonic() - frame.start, answer.reason)

    def reject(self, frame: _Frame, exc: BaseException) -> None:
        if not frame.future.done():
            frame.future.set_exception(exc)
            self.stats.finished("error", time.monotonic() - frame.start)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for lane in self.lanes:
            await lane.finish()
        for frame in self.frames:  # frames the caller will never read
            if not frame.future.done():
                frame.future.cancel()
                self.stats.finished("cancelled", None)
            elif not frame.future.cancelled():
                frame.future.exception()  # mark retrieved: no "never retrieved" warnings


async def stream_frames(path: RequestPath, pool: EdgePool,
                        frames: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    """The outputs of ``frames``, in order (one output, or a tuple for several)."""
    run = _StreamRun(path, pool)
    producer = asyncio.get_running_loop().create_task(run.produce(frames))
    try:
        while True:
            item = await run.out.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            try:
                answer = await item.future
            finally:
                run.window.release()
            outs = answer.outputs
            yield outs[0] if len(outs) == 1 else outs
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
        await run.close()


async def _aiter(frames: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    """The caller's frames as an async iterator; a blocking iterator is read in a thread."""
    if isinstance(frames, AsyncIterable):
        async for item in frames:
            yield item
        return
    it = iter(frames)
    loop = asyncio.get_running_loop()
    while True:
        item = await loop.run_in_executor(None, next, it, _END)
        if item is _END:
            return
        yield item
