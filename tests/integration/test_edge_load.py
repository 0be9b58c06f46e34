"""The edge node under load and while stopping: batching, queue full, deadlines, draining.

Each test starts its own small node (the Chain model) with a :class:`Gate` on its tails: the test
decides when the only worker is busy and when it is free again, so what piles up in the queue is
known exactly, never a matter of timing.
"""

from __future__ import annotations

import socket

import grpc
import torch
from grpc_health.v1 import health_pb2

from splitinfer.wire.v1 import probe_pb2

from .conftest import (
    NOT_SERVING,
    SERVING,
    Gate,
    edge_config,
    make_request,
    outputs_of,
    rpc_error,
    wait_until,
)


def chain_node(nodes, bundles, tmp_path, **config):
    gate = Gate()
    repo = bundles.repo(tmp_path / "repo", ("chain", "1"))
    return nodes(edge_config(repo, **config), gate=gate), gate


def inputs(n: int, seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [torch.randn(1, 16) for _ in range(n)]


def check_answer(bundles, x: torch.Tensor, response) -> None:
    with torch.no_grad():
        want = bundles.chain_eager(x)
    (out,) = outputs_of(response)
    # batched matmuls may round differently from one row alone, hence a (tight) tolerance
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def busy_worker(node, gate, bundles, x: torch.Tensor):
    """Send one request and wait until the only worker is stuck in the gate with it."""
    future = node.stub.Infer.future(make_request(bundles.chain, 0, [x], request_id="busy"),
                                    timeout=60)
    gate.wait_entered(1)
    return future


def batch_histogram(node) -> dict[str, float]:
    samples = {}
    for metric in node.node.metrics.registry.collect():
        for s in metric.samples:
            if s.name.startswith("splitinfer_edge_batch_size") and s.labels["model"] == "chain":
                samples[s.name.rsplit("_", 1)[1] + s.labels.get("le", "")] = s.value
    return samples


def test_concurrent_requests_are_batched(nodes, bundles, tmp_path):
    node, gate = chain_node(nodes, bundles, tmp_path, workers=1, max_batch_size=8,
                            max_queue_delay_ms=20, max_queue=64)
    xs = inputs(33)
    first = busy_worker(node, gate, bundles, xs[0])
    futures = [node.stub.Infer.future(make_request(bundles.chain, 0, [x], request_id=f"b{i}"),
                                      timeout=60) for i, x in enumerate(xs[1:])]
    wait_until(lambda: node.node.batcher.queue_depth == 32, what="32 queued requests")
    gate.open()

    check_answer(bundles, xs[0], first.result())
    for i, (x, future) in enumerate(zip(xs[1:], futures)):
        response = future.result()
        assert response.request_id == f"b{i}"
        check_answer(bundles, x, response)
    hist = batch_histogram(node)
    assert hist["sum"] == 33  # every request ran exactly once
    assert hist["count"] == 5  # the lone first one, then the 32 waiting ones as 4 batches of 8
    assert hist["bucket1.0"] == 1 and hist["bucket4.0"] == 1 and hist["bucket8.0"] == 5


def test_concurrent_requests_are_batched_without_a_gate(nodes, bundles, tmp_path):
    node, gate = chain_node(nodes, bundles, tmp_path, workers=1, max_batch_size=8,
                            max_queue_delay_ms=20, max_queue=64)
    gate.open()
    xs = inputs(32, seed=4)
    futures = [node.stub.Infer.future(make_request(bundles.chain, 0, [x]), timeout=60)
               for x in xs]
    for x, future in zip(xs, futures):
        check_answer(bundles, x, future.result())
    hist = batch_histogram(node)
    assert hist["sum"] == 32
    assert hist["count"] < 32  # some batch held more than one request
    assert hist["bucket1.0"] < hist["count"]


def test_queue_full_is_resource_exhausted(nodes, bundles, tmp_path):
    node, gate = chain_node(nodes, bundles, tmp_path, workers=1, max_batch_size=1, max_queue=1)
    xs = inputs(8, seed=1)
    first = busy_worker(node, gate, bundles, xs[0])
    queued = node.stub.Infer.future(make_request(bundles.chain, 0, [xs[1]]), timeout=60)
    wait_until(lambda: node.node.batcher.queue_depth == 1, what="one queued request")

    extra = [node.stub.Infer.future(make_request(bundles.chain, 0, [x]), timeout=60)
             for x in xs[2:]]
    for future in extra:
        err = rpc_error(future.result)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in err.details() and "--max-queue 1" in err.details()
    gate.open()
    check_answer(bundles, xs[0], first.result())
    check_answer(bundles, xs[1], queued.result())
    assert gate.entered == 2  # refused requests never reached compute


def test_deadline_passing_in_the_queue_is_deadline_exceeded(nodes, bundles, tmp_path):
    node, gate = chain_node(nodes, bundles, tmp_path, workers=1, max_batch_size=1)
    xs = inputs(2, seed=2)
    first = busy_worker(node, gate, bundles, xs[0])

    err = rpc_error(lambda: node.stub.Infer(make_request(bundles.chain, 0, [xs[1]]),
                                            timeout=0.3))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the server's copy of the deadline runs from when it got the call, a little later: once
    # it passes, the node gives up on the request (only the busy one is left in flight) ...
    registry = node.node.metrics.registry
    wait_until(lambda: registry.get_sample_value("splitinfer_edge_in_flight_requests") == 1,
               what="the expired request's handler to end")
    assert node.node.batcher.queue_depth == 1  # ... while it still sits in the queue
    gate.open()
    check_answer(bundles, xs[0], first.result())
    batcher = node.node.batcher
    wait_until(lambda: batcher.queue_depth == 0 and batcher.in_flight == 0, what="idle batcher")
    assert gate.entered == 1  # the expired request was dropped, not computed


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_stop_refuses_new_work_and_drains_in_flight(nodes, loop, bundles, tmp_path):
    node, gate = chain_node(nodes, bundles, tmp_path, workers=1, max_batch_size=1)
    xs = inputs(2, seed=3)
    in_flight = busy_worker(node, gate, bundles, xs[0])
    watch = node.health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert next(watch).status == SERVING

    stopping = loop.submit(node.node.stop(30.0))
    node.stopped = True
    assert next(watch).status == NOT_SERVING  # load balancers see the drain first
    watch.cancel()  # an open Watch is in flight too: it would hold the drain for the grace
    wait_until(lambda: not listening(node.node.port), what="the node to stop listening")
    err = rpc_error(lambda: node.stub.Infer(make_request(bundles.chain, 0, [xs[1]]), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    err = rpc_error(lambda: node.stub.Probe(probe_pb2.ProbeRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE

    gate.open()  # the in-flight request finishes within the grace period
    check_answer(bundles, xs[0], in_flight.result())
    stopping.result(30)
    gone = rpc_error(lambda: node.health.Check(health_pb2.HealthCheckRequest(), timeout=5))
    assert gone.code() == grpc.StatusCode.UNAVAILABLE


def test_closed_batcher_is_unavailable(nodes, bundles, tmp_path):
    node, gate = chain_node(nodes, bundles, tmp_path)
    gate.open()
    check_answer(bundles, inputs(1)[0], node.stub.Infer(
        make_request(bundles.chain, 0, inputs(1)), timeout=30))
    node.node.batcher.close()  # what stop() does once the server has drained

    err = rpc_error(lambda: node.stub.Infer(make_request(bundles.chain, 0, inputs(1)),
                                            timeout=30))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in err.details() and "another node" in err.details()
