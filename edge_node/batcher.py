"""Dynamic batching: stack concurrent requests for the same tail into one batch.

Requests are grouped by key (model, version, cut, and the non-batch shapes of their tensors:
only those can be stacked). The ``workers`` compute threads take work straight from the queue:

- an idle worker takes a request the moment it arrives: a lone request never waits for
  company (``max_queue_delay_s`` = 0, the default);
- while every worker is busy, requests keep arriving and queue; the next worker to come free
  takes up to ``max_batch_size`` rows of one key at once. This is what turns load into
  throughput, with no waiting added (Triton's dynamic batcher with zero delay works so);
- ``max_queue_delay_s`` > 0 is an opt-in: a worker holds a key's first request up to that long
  for more rows to arrive (fuller batches at low load, for tails whose cost hardly grows with
  rows).

One request crosses two threads: the event loop hands it to a worker (a condition variable;
the most recently idle worker first, whose core's caches are still warm), the worker hands the
answer back (``concurrent.futures.Future``, which the servicer awaits).
A request may carry its tensors still encoded (``tensors`` a callable that decodes them) and a
``finish`` callable (its answer's encoder): both then run on the worker, so a large payload's
decode and encode never hold up the event loop, and a bad payload fails only its own request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence, Union

import torch

from splitinfer.core.errors import DeadlinePassed, Overloaded, ShuttingDown

log = logging.getLogger(__name__)

RunFn = Callable[[Hashable, Sequence[torch.Tensor]], Sequence[torch.Tensor]]
#: a request's tensors, or a callable that decodes them (run on the worker)
Tensors = Union[Sequence[torch.Tensor], Callable[[], Sequence[torch.Tensor]]]
#: turns one request's outputs into its answer (run on the worker; e.g. the output codec)
FinishFn = Callable[[tuple[torch.Tensor, ...]], Any]


@dataclass(frozen=True)
class BatchResult:
    """What one request gets back: its outputs, its ``finish``'s answer, how its batch went.

    ``decode_s`` and ``encode_s`` are this request's own decode and finish on the worker (0
    when it came decoded / had no ``finish``); ``compute_s`` is its batch's tail.
    """

    outputs: tuple[torch.Tensor, ...]
    queue_s: float
    compute_s: float
    batch_rows: int
    answer: Any = None
    decode_s: float = 0.0
    encode_s: float = 0.0


@dataclass
class _Item:
    tensors: Tensors
    rows: int
    future: Future[BatchResult]
    enqueued: float
    deadline: float | None
    finish: FinishFn | None
    decode_s: float = 0.0


class Batcher:
    """Groups requests per key; ``workers`` threads take batches straight from the queue."""

    def __init__(self, run: RunFn, *, workers: int = 2, max_batch_size: int = 8,
                 max_queue_delay_s: float = 0.0, max_queue: int = 256,
                 on_batch: Callable[[Hashable, int, float], None] | None = None) -> None:
        self._run = run
        self._on_batch = on_batch
        self.workers = workers
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue = max_queue
        self._pending: OrderedDict[Hashable, deque[_Item]] = OrderedDict()
        self._queued = 0
        self._busy = 0
        self._closed = False
        self._delay_ewma = 0.0
        self._lock = threading.Lock()
        # idle workers, each waiting on its own condition (of the one lock); the most recently
        # idle is woken first: its core's caches still hold the tail's weights
        self._idle: list[threading.Condition] = []
        self._threads = [threading.Thread(target=self._work, name=f"edge-worker-{i}",
                                          daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # -- public -------------------------------------------------------------------------------
    def submit(self, key: Hashable, tensors: Tensors, rows: int,
               deadline: float | None = None, finish: FinishFn | None = None
               ) -> Future[BatchResult]:
        """Queue one request (``rows`` = its batch size); ``deadline`` is time.monotonic()."""
        future: Future[BatchResult] = Future()
        with self._lock:
            if self._closed:
                raise ShuttingDown(f"{ShuttingDown.PREFIX} and takes no new requests; retry on "
                                   "another node")
            if self._queued >= self.max_queue:
                raise Overloaded(f"queue full: {self._queued} requests waiting (--max-queue "
                                 f"{self.max_queue}); retry later or add edge capacity")
            self._pending.setdefault(key, deque()).append(
                _Item(tensors, rows, future, time.monotonic(), deadline, finish))
            self._queued += 1
            self._wake_one()
        return future

    @property
    def queue_depth(self) -> int:
        return self._queued

    @property
    def in_flight(self) -> int:
        return self._busy

    @property
    def queue_delay_s(self) -> float:
        """Recent time requests spend waiting for compute (EWMA), for planners to read."""
        return self._delay_ewma

    def close(self, wait: bool = True) -> None:
        """Refuse new requests; queued ones still run. ``wait``: until they all have."""
        with self._lock:
            self._closed = True
            while self._idle:
                self._idle.pop().notify()
        if wait:
            for thread in self._threads:
                thread.join()

    # -- the workers --------------------------------------------------------------------------
    def _ready_key(self, now: float) -> tuple[Hashable | None, float | None]:
        """A key whose batch should go now, else when the next one is due (None: none pending).

        With no delay (the default) that is the first key in round-robin order.
        """
        next_due = None
        for key, items in self._pending.items():
            due = items[0].enqueued + self.max_queue_delay_s
            if due <= now or self._closed or \
                    sum(i.rows for i in items) >= self.max_batch_size:
                return key, None
            next_due = due if next_due is None else min(next_due, due)
        return None, next_due

    def _take(self, key: Hashable) -> list[_Item]:
        items = self._pending[key]
        batch = [items.popleft()]
        rows = batch[0].rows
        while items and rows + items[0].rows <= self.max_batch_size:
            rows += items[0].rows
            batch.append(items.popleft())
        if not items:
            del self._pending[key]
        else:
            self._pending.move_to_end(key)  # round robin between keys
        self._queued -= len(batch)
        return batch

    def _wake_one(self) -> None:
        """Wake the most recently idle worker, if any (the lock is held)."""
        if self._idle:
            self._idle.pop().notify()

    def _next_batch(self, me: threading.Condition) -> tuple[Hashable, list[_Item]] | None:
        """Block until a batch is due and take it; None once closed and drained."""
        with self._lock:
            while True:
                timeout = None
                if self._pending:
                    key, next_due = self._ready_key(time.monotonic())
                    if key is not None:
                        batch = self._take(key)
                        self._busy += 1
                        if self._pending:
                            self._wake_one()  # more is queued: another idle worker looks
                        return key, batch
                    if next_due is not None:
                        timeout = max(0.0, next_due - time.monotonic())
                elif self._closed:
                    return None
                self._idle.append(me)
                me.wait(timeout)
                if me in self._idle:  # woke by its timeout, not by a submit
                    self._idle.remove(me)

    def _work(self) -> None:
        me = threading.Condition(self._lock)
        while (taken := self._next_batch(me)) is not None:
            try:
                self._run_batch(*taken)
            except BaseException:  # pragma: no cover - _run_batch answers every future
                log.exception("batch failed outside its requests")
            finally:
                with self._lock:
                    self._busy -= 1

    def _run_batch(self, key: Hashable, items: list[_Item]) -> None:
        start = time.monotonic()
        live: list[tuple[_Item, Sequence[torch.Tensor]]] = []
        for item in items:
            if item.deadline is not None and item.deadline <= start:
                item.future.set_exception(DeadlinePassed(
                    f"deadline passed {start - item.deadline:.3f}s before compute began "
                    f"(queued {start - item.enqueued:.3f}s); give the request more time"))
                continue
            if not item.future.set_running_or_notify_cancel():
                continue  # the caller gave up
            tensors = item.tensors
            if callable(tensors):
                t0 = time.perf_counter()
                try:
                    tensors = tensors()
                except Exception as exc:  # a bad payload fails its own request only
                    item.future.set_exception(exc)
                    continue
                item.decode_s = time.perf_counter() - t0
            live.append((item, tensors))
        if live:
            self._compute(key, live, start)

    def _compute(self, key: Hashable, live: list[tuple[_Item, Sequence[torch.Tensor]]],
                 start: float) -> None:
        rows = sum(item.rows for item, _ in live)
        t0 = time.perf_counter()
        try:
            if len(live) == 1:
                outputs = [tuple(self._run(key, live[0][1]))]
            else:
                stacked = [torch.cat(parts) for parts in zip(*(t for _, t in live))]
                joined = tuple(self._run(key, stacked))
                sizes = [item.rows for item, _ in live]
                if any(o.dim() == 0 or o.shape[0] != rows for o in joined):
                    raise RuntimeError(f"a batched output lost the batch dim ({rows} rows)")
                outputs = list(zip(*(torch.split(o, sizes) for o in joined)))
        except Exception as exc:
            for item, _ in live:
                item.future.set_exception(exc)
            return
        compute_s = time.perf_counter() - t0
        if self._on_batch is not None:
            self._on_batch(key, rows, compute_s)
        for (item, _), out in zip(live, outputs):
            queue_s = start - item.enqueued
            self._delay_ewma = 0.9 * self._delay_ewma + 0.1 * queue_s
            own = tuple(o.contiguous() for o in out)
            answer, encode_s = None, 0.0
            if item.finish is not None:
                t1 = time.perf_counter()
                try:
                    answer = item.finish(own)
                except Exception as exc:
                    item.future.set_exception(exc)
                    continue
                encode_s = time.perf_counter() - t1
            item.future.set_result(BatchResult(own, queue_s, compute_s, rows, answer,
                                               item.decode_s, encode_s))
