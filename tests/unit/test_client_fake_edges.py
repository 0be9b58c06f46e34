"""The device client against fake edges (the ``Edge`` seam, no network): failover, circuit
breakers, refusals, fallback, re-planning, streams, per-request cuts and the background switch.

Every edge call of the client goes through ``Edge`` methods, so ``FakeEdge`` objects passed in
``edges=`` stand in for edge nodes: they run the real tails locally and misbehave on cue. The
device profile is made by hand (the whole model takes 100 ms on this "device", the edge 10 ms),
so the plans are known: on a fast link the input is sent (cut 0), on a 500 ms RTT the model
stays on the device.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import pytest
import torch
from fake_edge import FakeEdge

from device_client import AsyncSplitClient, BreakerPolicy, Edge
from device_client.request_path import SAME_EDGE_RETRIES
from splitinfer.core.errors import (
    CodecError,
    EdgeUnavailable,
    FingerprintMismatch,
    InvalidRequest,
    Unauthenticated,
)
from splitinfer.core.link import Link
from splitinfer.core.profiles import CodecCost, CutCost, DeviceProfile
from splitinfer.model.bundle import load_bundle, save_bundle
from splitinfer.model.split_model import SplitModel, partition
from tests.models import Chain

T = TypeVar("T")
SLOW_LINK = Link(rtt_s=0.5, bandwidth_bps=1e6)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SplitModel]:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bundles") / "chain" / "1"
    save_bundle(partition(Chain().eval(), (torch.randn(1, 16),), name="chain"), path)
    return path, load_bundle(path)


def device_profile(sm: SplitModel, total_s: float = 0.1) -> DeviceProfile:
    """A 100 ms device: head time grows evenly with the cut; fp32 and int8+zstd cost 0.1 ms."""
    n = len(sm.cuts)
    cuts = tuple(CutCost(cut_id=c.id, name=c.name, head_s=total_s * c.id / (n - 1),
                         head_flops=0.0, head_memory_bytes=0, head_nodes=c.head_nodes,
                         codecs=tuple(CodecCost(k, c.nbytes_per_sample, 1e-4, 1e-4)
                                      for k in ("fp32", "int8+zstd")))
                 for c in sm.cuts)
    return DeviceProfile(model=sm.name, fingerprint=sm.fingerprint, threads=1, cuts=cuts,
                         response_bytes=64)


def make(chain: tuple[Path, SplitModel], edges: list[Any], **kw: Any) -> AsyncSplitClient:
    path, sm = chain
    options: dict[str, Any] = dict(device_profile=device_profile(sm), codecs=("fp32",),
                                   background=False, track_device_speed=False, deadline_s=2.0)
    options.update(kw)
    return AsyncSplitClient(path, edges, **options)


def with_client(chain: tuple[Path, SplitModel], edges: list[Any],
                body: Callable[[AsyncSplitClient], Awaitable[T]], **kw: Any) -> T:
    async def go() -> T:
        async with make(chain, edges, **kw) as client:
            return await body(client)
    return run(go())


def test_a_fake_edge_is_an_edge(chain):
    assert isinstance(FakeEdge("a", chain[1]), Edge)


def test_plans_and_answers_through_the_seam(chain):
    sm = chain[1]
    a = FakeEdge("a", sm)
    x = torch.randn(1, 16)

    async def body(client: AsyncSplitClient) -> Any:
        assert client.plan.reason == "planner" and client.plan.cut_id == 0
        return await client.infer_result(x)

    r = with_client(chain, [a], body)
    assert torch.equal(r.outputs, sm(x))  # fp32 all the way: bit for bit
    assert r.answered_by == "edge a" and r.cut_id == 0 and r.codec == "fp32"
    assert r.edge_timing is not None and r.edge_timing.compute_s == a.tail_s[0]
    assert r.bytes_sent > 16 * 4 and r.bytes_received > 8 * 4 and r.device_s > 0
    assert a.calls["model_info"] >= 1 and a.calls["probe"] >= 5 and a.cuts_seen == [0]


def test_a_transient_error_fails_over_to_the_next_edge(chain):
    a, b = FakeEdge("a", chain[1]), FakeEdge("b", chain[1])
    a.errors.append("UNAVAILABLE")

    async def body(client: AsyncSplitClient) -> Any:
        return await client.infer_result(torch.randn(1, 16)), client.stats

    r, stats = with_client(chain, [a, b], body)
    assert r.answered_by == "edge b"
    assert stats.retries == 1 and stats.answered_by_edge == 1 and stats.errors == 0
    assert stats.edges[0].failures == 1 and "UNAVAILABLE" in stats.edges[0].last_error


def test_a_draining_replica_is_retried_on_the_same_address(chain):
    # one address, a fleet behind it: a draining replica's refusal goes back to the same
    # address (round_robin picks another replica) and is no fault of the edge
    a = FakeEdge("a", chain[1])
    a.errors.extend(["DRAINING", "DRAINING"])

    async def body(client: AsyncSplitClient) -> Any:
        return await client.infer_result(torch.randn(1, 16)), client.stats

    r, stats = with_client(chain, [a], body, fallback="error")
    assert r.answered_by == "edge a" and a.calls["infer"] == 3
    assert stats.retries == 2 and stats.errors == 0 and stats.local_fallbacks == 0
    assert stats.edges[0].failures == 0 and stats.edges[0].breaker == "closed"
    assert "shutting down" in stats.edges[0].last_error


def test_unavailable_goes_to_the_other_edges_first_then_the_same_one_twice(chain):
    a, b = FakeEdge("a", chain[1]), FakeEdge("b", chain[1])

    async def body(client: AsyncSplitClient) -> Any:
        a.always = b.always = "UNAVAILABLE"
        return await client.infer_result(torch.randn(1, 16)), client.stats

    r, stats = with_client(chain, [a, b], body, breaker=BreakerPolicy(failures=100))
    assert r.answered_by == "local fallback"  # after 1 + SAME_EDGE_RETRIES tries each
    assert a.calls["infer"] == b.calls["infer"] == 1 + SAME_EDGE_RETRIES
    assert stats.retries == 2 * (1 + SAME_EDGE_RETRIES) - 1
    assert stats.edges[0].failures == stats.edges[1].failures == 1 + SAME_EDGE_RETRIES


def test_a_stream_on_a_draining_replica_moves_to_another_on_the_same_address(chain):
    a = FakeEdge("a", chain[1])
    a.errors.extend([""] * 3 + ["DRAINING"])  # the fourth frame meets a draining replica
    xs = [torch.randn(1, 16) for _ in range(8)]

    async def body(client: AsyncSplitClient) -> Any:
        return [out async for out in client.stream(xs)], client.stats

    outs, stats = with_client(chain, [a], body, fallback="error", window=1)
    assert all(torch.allclose(o, chain[1](x)) for o, x in zip(outs, xs)) and len(outs) == 8
    assert a.calls["infer_stream"] == 2  # a new stream after the refusal
    assert stats.answered_by_edge == 8 and stats.errors == 0 and stats.retries == 1
    assert stats.edges[0].failures == 0


def test_the_breaker_opens_and_requests_skip_the_failing_edge(chain):
    a, b = FakeEdge("a", chain[1]), FakeEdge("b", chain[1])

    async def body(client: AsyncSplitClient) -> Any:
        a.always = "UNAVAILABLE"
        answered = [(await client.infer_result(torch.randn(1, 16))).answered_by
                    for _ in range(6)]
        return answered, client.stats

    answered, stats = with_client(chain, [a, b], body,
                                  breaker=BreakerPolicy(failures=2, reset_s=30.0))
    assert answered == ["edge b"] * 6
    assert a.calls["infer"] == 2  # two failures opened it; then nothing more went there
    assert stats.edges[0].breaker == "open" and stats.edges[0].breaker_opened == 1
    assert stats.edges[1].breaker == "closed" and stats.edges[1].ok == 6


def test_an_answer_that_does_not_decode_counts_against_that_edge(chain):
    sm = chain[1]
    a, b = FakeEdge("a", sm), FakeEdge("b", sm)
    a.garbled = 1
    x = torch.randn(1, 16)

    async def body(client: AsyncSplitClient) -> Any:
        return await client.infer_result(x), client.stats

    r, stats = with_client(chain, [a, b], body)
    assert r.answered_by == "edge b" and torch.equal(r.outputs, sm(x))
    assert stats.edges[0].ok == 0 and stats.edges[0].failures == 1
    assert "does not decode" in stats.edges[0].last_error


def test_an_edge_that_refuses_the_model_is_set_aside(chain):
    a, b = FakeEdge("a", chain[1]), FakeEdge("b", chain[1])
    a.errors.append("FAILED_PRECONDITION")

    async def body(client: AsyncSplitClient) -> Any:
        return [(await client.infer_result(torch.randn(1, 16))).answered_by
                for _ in range(4)], client.stats

    answered, stats = with_client(chain, [a, b], body)
    assert answered == ["edge b"] * 4 and a.calls["infer"] == 1
    assert "FAILED_PRECONDITION" in stats.edges[0].incompatible


def test_a_request_the_edge_calls_invalid_is_not_tried_elsewhere(chain):
    a, b = FakeEdge("a", chain[1]), FakeEdge("b", chain[1])
    a.errors.append("INVALID_ARGUMENT")

    async def body(client: AsyncSplitClient) -> Any:
        with pytest.raises(InvalidRequest, match="INVALID_ARGUMENT"):
            await client.infer(torch.randn(1, 16))
        return client.stats

    stats = with_client(chain, [a, b], body, fallback="error")
    assert b.calls["infer"] == 0 and stats.errors == 1 and stats.retries == 0


def test_no_edge_answers_local_fallback_gives_the_exact_answer(chain):
    sm = chain[1]
    a, b = FakeEdge("a", sm), FakeEdge("b", sm)
    x = torch.randn(2, 16)

    async def body(client: AsyncSplitClient) -> Any:
        a.always = b.always = "UNAVAILABLE"
        return await client.infer_result(x), client.stats

    r, stats = with_client(chain, [a, b], body)
    assert r.answered_by == "local fallback" and r.fallback_reason == "UNAVAILABLE"
    assert torch.equal(r.outputs, sm(x))
    assert stats.local_fallbacks == 1 and stats.fallback_reasons == {"UNAVAILABLE": 1}

    async def strict(client: AsyncSplitClient) -> None:
        a2.always = b2.always = "UNAVAILABLE"
        with pytest.raises(EdgeUnavailable, match="no edge answered.*fallback is 'error'"):
            await client.infer(x)

    a2, b2 = FakeEdge("a", sm), FakeEdge("b", sm)
    with_client(chain, [a2, b2], strict, fallback="error")


def test_a_hung_edge_gets_a_share_of_the_deadline_not_all_of_it(chain):
    a, b = FakeEdge("a", chain[1]), FakeEdge("b", chain[1])

    async def body(client: AsyncSplitClient) -> Any:
        a.hang = True  # after connect: it measured the link and planned, then hangs
        return await client.infer_result(torch.randn(1, 16))

    r = with_client(chain, [a, b], body, deadline_s=5.0)
    # had the hung edge kept the whole deadline, b could not have answered in time
    assert r.answered_by == "edge b" and a.calls["infer"] == 1


def test_the_plan_follows_the_link(chain):
    a = FakeEdge("a", chain[1])

    async def body(client: AsyncSplitClient) -> Any:
        fast = client.plan
        a.link = SLOW_LINK
        link, samples = await client.measure_link()
        r = await client.infer_result(torch.randn(1, 16))
        return fast, link, samples, client.plan, r, client.stats

    fast, link, samples, slow, r, stats = with_client(chain, [a], body)
    assert fast.cut_id == 0 and fast.codec == "fp32"
    assert link.rtt_s == pytest.approx(0.5, rel=1e-6) and len(samples) >= 4
    assert slow.codec is None and "device" in slow.describe()  # 500 ms RTT: stay here
    assert r.answered_by == "device" and stats.plan_switches == 1 and stats.device_only == 1


def test_an_edge_that_fails_its_probes_at_connect_is_passed_over(chain):
    a, b = FakeEdge("a", chain[1]), FakeEdge("b", chain[1])
    a.always = "UNAVAILABLE"  # GetModelInfo answers, the link probes do not

    async def body(client: AsyncSplitClient) -> Any:
        return client.plan, await client.infer_result(torch.randn(1, 16)), client.stats

    plan, r, stats = with_client(chain, [a, b], body)
    assert plan.reason == "planner" and r.answered_by == "edge b"
    assert stats.edges[0].breaker == "open" and a.calls["infer"] == 0

    c = FakeEdge("c", chain[1])
    c.always = "UNAVAILABLE"
    with pytest.raises(EdgeUnavailable, match="no edge answered its link probes.*c: "
                                              "UNAVAILABLE"):
        run(make(chain, [c], fallback="error").connect())

    async def alone(client: AsyncSplitClient) -> Any:
        return client.plan

    d = FakeEdge("d", chain[1])
    d.always = "UNAVAILABLE"
    assert with_client(chain, [d], alone).codec is None  # fallback local: device only


def test_connect_refusals_name_the_edge_and_the_fix(chain):
    sm = chain[1]
    a = FakeEdge("a", sm)
    a.info_error = "UNAUTHENTICATED"
    with pytest.raises(Unauthenticated, match="edge a refused GetModelInfo.*token="):
        run(make(chain, [a]).connect())
    other = FakeEdge("b", sm, fingerprint="f" * 64)
    with pytest.raises(FingerprintMismatch, match="edge b serves chain.*none with this bundle"):
        run(make(chain, [other]).connect())


def test_stream_answers_in_order_and_survives_a_broken_stream(chain):
    sm = chain[1]
    a, b = FakeEdge("a", sm), FakeEdge("b", sm)
    a.stream_fails_after = 2
    frames = [torch.randn(1, 16) for _ in range(7)]

    async def body(client: AsyncSplitClient) -> Any:
        outs = [y async for y in client.stream(frames)]
        return outs, client.stats

    outs, stats = with_client(chain, [a, b], body, window=3)
    assert len(outs) == 7
    for x, y in zip(frames, outs):
        assert torch.equal(y, sm(x))
    assert stats.requests == 7 and stats.answered_by_edge == 7 and stats.in_flight == 0
    assert stats.retries >= 1 and b.calls["infer_stream"] >= 1


def test_a_bad_stream_item_is_retried_on_another_edge(chain):
    sm = chain[1]
    a, b = FakeEdge("a", sm), FakeEdge("b", sm)
    a.errors.append("RESOURCE_EXHAUSTED")
    frames = [torch.randn(1, 16) for _ in range(3)]

    async def body(client: AsyncSplitClient) -> Any:
        return [y async for y in client.stream(frames)], client.stats

    outs, stats = with_client(chain, [a, b], body, window=1)
    assert all(torch.equal(y, sm(x)) for x, y in zip(frames, outs))
    assert stats.answered_by_edge == 3 and stats.retries == 1


def test_one_request_can_name_its_own_cut_and_codec(chain):
    sm = chain[1]
    a = FakeEdge("a", sm)
    last = len(sm.cuts) - 1
    x = torch.randn(1, 16)

    async def body(client: AsyncSplitClient) -> Any:
        here = await client.infer_result(x, cut=last)
        mid = await client.infer_result(x, cut=1, codec="int8+zstd")
        with pytest.raises(ValueError, match="give codec= too"):
            await client.infer_result(x, cut=1)
        with pytest.raises(CodecError, match="unknown codec 'zip'"):
            await client.infer_result(x, cut=1, codec="zip")
        with pytest.raises(ValueError, match="needs cut= too"):
            await client.infer_result(x, codec="fp32")
        return here, mid, client.plan

    here, mid, plan = with_client(chain, [a], body)
    assert here.answered_by == "device" and here.codec is None and torch.equal(here.outputs,
                                                                                sm(x))
    assert mid.answered_by == "edge a" and (mid.cut_id, mid.codec) == (1, "int8+zstd")
    assert a.cuts_seen == [1] and plan.cut_id == 0  # the plan itself did not move


def test_background_duties_only_when_asked(chain):
    async def probes_after(background: bool) -> int:
        a = FakeEdge("a", chain[1])
        async with make(chain, [a], background=background, probe_interval_s=0.02):
            at_connect = a.calls["probe"]
            deadline = time.monotonic() + 10
            while background and a.calls["probe"] == at_connect \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # a few intervals: a quiet client stays quiet
            return a.calls["probe"] - at_connect

    assert run(probes_after(True)) > 0
    assert run(probes_after(False)) == 0


def test_bad_edges_argument_is_refused_before_connecting(chain):
    path = chain[0]
    with pytest.raises(ValueError, match="edges is empty"):
        AsyncSplitClient(path, [])
    with pytest.raises(ValueError, match="edge address 42"):
        AsyncSplitClient(path, [42])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="lists an address twice"):
        AsyncSplitClient(path, [FakeEdge("a", chain[1]), "a"])
    with pytest.raises(ValueError, match="window is 0"):
        AsyncSplitClient(path, ["a:1"], window=0)
