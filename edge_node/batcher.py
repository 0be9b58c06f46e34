"""Dynamic batching: stack concurrent requests for the same tail into one batch.

Requests are grouped by key (model, version, cut, and the non-batch shapes of their tensors:
only those can be stacked). A group is dispatched when it holds ``max_batch_size`` rows or its
oldest request has waited ``max_queue_delay``, and only when a worker is free: while every
worker is busy, requests keep arriving and the next batch grows — this is what turns load into
throughput. Compute runs on a thread pool, off the gRPC event loop; results come back through
``concurrent.futures.Future`` objects that the servicer awaits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import torch

from splitinfer.core.errors import DeadlinePassed, Overloaded, ShuttingDown

log = logging.getLogger(__name__)

RunFn = Callable[[Hashable, Sequence[torch.Tensor]], Sequence[torch.Tensor]]


@dataclass(frozen=True)
class BatchResult:
    """What one request gets back: its outputs and how its batch went."""

    outputs: tuple[torch.Tensor, ...]
    queue_s: float
    compute_s: float
    batch_rows: int


@dataclass
class _Item:
    tensors: Sequence[torch.Tensor]
    rows: int
    future: Future[BatchResult]
    enqueued: float
    deadline: float | None


class Batcher:
    """Groups requests per key, dispatches batches to ``workers`` threads."""

    def __init__(self, run: RunFn, *, workers: int = 2, max_batch_size: int = 8,
                 max_queue_delay_s: float = 0.002, max_queue: int = 256,
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
        self._cv = threading.Condition()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="edge-worker")
        self._thread = threading.Thread(target=self._dispatch_loop, name="edge-batcher",
                                        daemon=True)
        self._thread.start()

    # -- public -------------------------------------------------------------------------------
    def submit(self, key: Hashable, tensors: Sequence[torch.Tensor], rows: int,
               deadline: float | None = None) -> Future[BatchResult]:
        """Queue one request (``rows`` = its batch size); ``deadline`` is time.monotonic()."""
        future: Future[BatchResult] = Future()
        with self._cv:
            if self._closed:
                raise ShuttingDown(f"{ShuttingDown.PREFIX} and takes no new requests; retry on "
                                   "another node")
            if self._queued >= self.max_queue:
                raise Overloaded(f"queue full: {self._queued} requests waiting (--max-queue "
                                 f"{self.max_queue}); retry later or add edge capacity")
            self._pending.setdefault(key, deque()).append(
                _Item(tensors, rows, future, time.monotonic(), deadline))
            self._queued += 1
            self._cv.notify_all()
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
        """Refuse new requests; with ``wait``, finish what is queued and running first."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if wait:
            self._thread.join()
        self._pool.shutdown(wait=wait)

    # -- dispatching --------------------------------------------------------------------------
    def _ready_key(self, now: float) -> tuple[Hashable | None, float | None]:
        """A key whose batch should go now, else how long until the next one is due."""
        next_due = None
        for key, items in self._pending.items():
            rows = sum(i.rows for i in items)
            due = items[0].enqueued + self.max_queue_delay_s
            if rows >= self.max_batch_size or due <= now or self._closed:
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

    def _dispatch_loop(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._closed and not self._pending:
                        return
                    key, next_due = (None, None)
                    if self._busy < self.workers and self._pending:
                        key, next_due = self._ready_key(time.monotonic())
                        if key is not None:
                            break
                    timeout = None if next_due is None else max(0.0, next_due -
                                                                time.monotonic())
                    self._cv.wait(timeout)
                batch = self._take(key)
                self._busy += 1
            self._pool.submit(self._run_batch, key, batch)

    def _run_batch(self, key: Hashable, items: list[_Item]) -> None:
        try:
            start = time.monotonic()
            live = []
            for item in items:
                if item.deadline is not None and item.deadline <= start:
                    item.future.set_exception(DeadlinePassed(
                        f"deadline passed {start - item.deadline:.3f}s before compute began "
                        f"(queued {start - item.enqueued:.3f}s); give the request more time"))
                elif item.future.set_running_or_notify_cancel():
                    live.append(item)
            if live:
                self._compute(key, live, start)
        finally:
            with self._cv:
                self._busy -= 1
                self._cv.notify_all()

    def _compute(self, key: Hashable, items: list[_Item], start: float) -> None:
        rows = sum(i.rows for i in items)
        try:
            if len(items) == 1:
                outputs = [tuple(self._run(key, items[0].tensors))]
            else:
                stacked = [torch.cat(parts) for parts in zip(*(i.tensors for i in items))]
                joined = tuple(self._run(key, stacked))
                sizes = [i.rows for i in items]
                if any(o.dim() == 0 or o.shape[0] != rows for o in joined):
                    raise RuntimeError(f"a batched output lost the batch dim ({rows} rows)")
                outputs = list(zip(*(torch.split(o, sizes) for o in joined)))
        except Exception as exc:
            for item in items:
                item.future.set_exception(exc)
            return
        compute_s = time.monotonic() - start
        if self._on_batch is not None:
            self._on_batch(key, rows, compute_s)
        for item, out in zip(items, outputs):
            queue_s = start - item.enqueued
            self._delay_ewma = 0.9 * self._delay_ewma + 0.1 * queue_s
            item.future.set_result(BatchResult(tuple(o.contiguous() for o in out), queue_s,
                                               compute_s, rows))
