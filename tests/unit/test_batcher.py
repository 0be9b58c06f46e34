"""The batcher on its own: grouping, limits, deadlines, draining — no network, no model."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from edge_node.batcher import Batcher
from splitinfer.core.errors import DeadlinePassed, Overloaded, ShuttingDown


class _Gate:
    """A run function that blocks until released and records every batch it sees."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.batches: list[tuple[object, int]] = []

    def __call__(self, key, tensors):
        self.open.wait(10)
        self.batches.append((key, tensors[0].shape[0]))
        return (tensors[0] * 2, tensors[0].sum(dim=1))


def _wait_until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.001)


def test_requests_queued_while_busy_are_stacked_and_split_back():
    gate = _Gate()
    b = Batcher(gate, workers=1, max_batch_size=8, max_queue_delay_s=0.0, max_queue=100)
    try:
        first = b.submit("k", [torch.zeros(1, 3)], 1)  # occupies the only worker
        _wait_until(lambda: b.in_flight == 1)
        xs = [torch.full((1, 3), float(i)) for i in range(6)]
        futures = [b.submit("k", [x], 1) for x in xs]
        gate.open.set()
        assert torch.equal(first.result(10).outputs[0], torch.zeros(1, 3))
        for x, f in zip(xs, futures):
            res = f.result(10)
            assert torch.equal(res.outputs[0], x * 2)
            assert torch.equal(res.outputs[1], x.sum(dim=1))
            assert res.batch_rows == 6 and res.queue_s >= 0 and res.compute_s >= 0
        assert [rows for _, rows in gate.batches] == [1, 6]
    finally:
        gate.open.set()
        b.close()


def test_batches_respect_max_rows_and_keys_never_mix():
    gate = _Gate()
    b = Batcher(gate, workers=1, max_batch_size=4, max_queue_delay_s=0.0, max_queue=100)
    try:
        b.submit("busy", [torch.zeros(1, 2)], 1)
        _wait_until(lambda: b.in_flight == 1)
        futures = [b.submit(k, [torch.ones(r, 2)], r)
                   for k, r in [("a", 3), ("b", 1), ("a", 2), ("a", 1), ("b", 2)]]
        gate.open.set()
        for f in futures:
            f.result(10)
        rows = {}
        for key, n in gate.batches[1:]:
            assert n <= 4
            rows.setdefault(key, []).append(n)
        assert sum(rows["a"]) == 6 and sum(rows["b"]) == 3
    finally:
        gate.open.set()
        b.close()


def test_batching_off_runs_one_request_per_batch():
    gate = _Gate()
    gate.open.set()
    b = Batcher(gate, workers=2, max_batch_size=1, max_queue_delay_s=0.05, max_queue=100)
    try:
        for f in [b.submit("k", [torch.ones(1, 2)], 1) for _ in range(5)]:
            assert f.result(10).batch_rows == 1
    finally:
        b.close()


def test_queue_full_is_overloaded_with_the_limit_in_the_message():
    gate = _Gate()
    b = Batcher(gate, workers=1, max_batch_size=1, max_queue_delay_s=0.0, max_queue=2)
    try:
        b.submit("k", [torch.ones(1, 1)], 1)
        _wait_until(lambda: b.in_flight == 1)
        b.submit("k", [torch.ones(1, 1)], 1)
        b.submit("k", [torch.ones(1, 1)], 1)
        with pytest.raises(Overloaded, match="queue full: 2 requests waiting .*--max-queue 2"):
            b.submit("k", [torch.ones(1, 1)], 1)
    finally:
        gate.open.set()
        b.close()


def test_expired_requests_are_dropped_before_compute():
    gate = _Gate()
    b = Batcher(gate, workers=1, max_batch_size=8, max_queue_delay_s=0.0, max_queue=10)
    try:
        b.submit("busy", [torch.ones(1, 1)], 1)
        _wait_until(lambda: b.in_flight == 1)
        late = b.submit("k", [torch.ones(1, 1)], 1, deadline=time.monotonic() + 0.01)
        fine = b.submit("k", [torch.ones(1, 1)], 1, deadline=time.monotonic() + 60)
        time.sleep(0.02)
        gate.open.set()
        with pytest.raises(DeadlinePassed, match="deadline passed"):
            late.result(10)
        assert fine.result(10).batch_rows == 1
        assert all(key != "k" or rows == 1 for key, rows in gate.batches)
    finally:
        gate.open.set()
        b.close()


def test_errors_reach_every_request_of_the_batch():
    def boom(key, tensors):
        raise ValueError("tail exploded")

    b = Batcher(boom, workers=1, max_batch_size=4, max_queue_delay_s=0.01, max_queue=10)
    try:
        futures = [b.submit("k", [torch.ones(1, 1)], 1) for _ in range(3)]
        for f in futures:
            with pytest.raises(ValueError, match="tail exploded"):
                f.result(10)
    finally:
        b.close()


def test_close_drains_queued_work_then_refuses_new():
    gate = _Gate()
    b = Batcher(gate, workers=1, max_batch_size=1, max_queue_delay_s=0.0, max_queue=10)
    futures = [b.submit("k", [torch.ones(1, 1)], 1) for _ in range(4)]
    gate.open.set()
    b.close(wait=True)
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(ShuttingDown, match="shutting down"):
        b.submit("k", [torch.ones(1, 1)], 1)


# -- no idle waits; work on the worker ------------------------------------------------------

def test_a_lone_request_never_waits_for_company_by_default():
    gate = _Gate()
    gate.open.set()
    b = Batcher(gate, workers=1, max_batch_size=8)  # the default: no batching delay
    try:
        assert b.max_queue_delay_s == 0.0
        res = b.submit("k", [torch.ones(1, 2)], 1).result(10)
        assert res.batch_rows == 1
    finally:
        b.close()


def test_an_opt_in_delay_holds_a_lone_request_until_the_batch_fills():
    gate = _Gate()
    gate.open.set()
    b = Batcher(gate, workers=1, max_batch_size=3, max_queue_delay_s=60.0)
    try:
        first = b.submit("k", [torch.ones(1, 2)], 1)
        time.sleep(0.2)
        assert not first.done() and b.queue_depth == 1  # held for company, worker idle
        rest = [b.submit("k", [torch.ones(1, 2)], 1) for _ in range(2)]
        assert all(f.result(10).batch_rows == 3 for f in [first, *rest])  # full: went at once
        assert [rows for _, rows in gate.batches] == [3]
    finally:
        b.close()


def test_an_idle_worker_takes_a_request_while_another_is_busy():
    gate = _Gate()
    seen = threading.Event()

    def run(key, tensors):
        if key == "slow":
            return gate(key, tensors)
        seen.set()
        return (tensors[0] + 1,)

    b = Batcher(run, workers=2, max_batch_size=8)
    try:
        slow = b.submit("slow", [torch.zeros(1, 1)], 1)
        _wait_until(lambda: b.in_flight == 1)
        fast = b.submit("fast", [torch.zeros(1, 1)], 1)
        assert torch.equal(fast.result(10).outputs[0], torch.ones(1, 1))
        assert not slow.done()  # the second worker ran it beside the busy one
        gate.open.set()
        slow.result(10)
    finally:
        gate.open.set()
        b.close()


def test_decode_and_finish_run_on_the_worker_and_fail_only_their_own_request():
    gate = _Gate()
    b = Batcher(gate, workers=1, max_batch_size=8)
    loop_thread = threading.get_ident()
    threads = []

    def decoder(x):
        def decode():
            threads.append(threading.get_ident())
            return [x]
        return decode

    def bad_decode():
        raise ValueError("payload is 3 bytes; codec 'fp32' needs 8")

    def finish(outputs):
        threads.append(threading.get_ident())
        return [float(o.sum()) for o in outputs]

    def bad_finish(outputs):
        raise RuntimeError("encode failed")

    try:
        b.submit("busy", [torch.zeros(1, 2)], 1)
        _wait_until(lambda: b.in_flight == 1)
        good = b.submit("k", decoder(torch.ones(1, 2)), 1, finish=finish)
        bad = b.submit("k", bad_decode, 1, finish=finish)
        other = b.submit("k", decoder(torch.full((1, 2), 3.0)), 1, finish=bad_finish)
        gate.open.set()
        res = good.result(10)
        assert res.answer == [4.0, 2.0] and res.batch_rows == 2  # bad never joined the batch
        assert res.decode_s >= 0 and res.encode_s >= 0
        with pytest.raises(ValueError, match="payload is 3 bytes"):
            bad.result(10)
        with pytest.raises(RuntimeError, match="encode failed"):
            other.result(10)
        assert other.exception(10) is not None and threads
        assert loop_thread not in threads  # decode and finish ran on the worker
    finally:
        gate.open.set()
        b.close()


def test_the_most_recently_idle_worker_takes_the_next_request():
    threads = []

    def run(key, tensors):
        threads.append(threading.get_ident())
        return tensors

    b = Batcher(run, workers=3, max_batch_size=8)
    try:
        for _ in range(20):  # one at a time, as from one client
            b.submit("k", [torch.ones(1, 1)], 1).result(10)
            _wait_until(lambda: b.in_flight == 0)
        assert len(set(threads[1:])) == 1  # its caches are warm: the same thread every time
    finally:
        b.close()
