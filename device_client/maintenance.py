"""The client's background duties: check edges, measure the link, plan and re-plan, probe back.

At connect: ``GetModelInfo`` on every edge (the version whose fingerprint is this bundle's; a
wrong token, an unknown model or no matching fingerprint raise here, not later), a link
measurement on the first edge that serves us, the profiles, the first plan. Then, every
``probe_interval_s``, a tiny Probe keeps the RTT estimate fresh; every ``refresh_s`` the edge's
tail times and queue delay are re-read; open circuit breakers are probed back; edges set aside
are re-checked. Re-planning has hysteresis twice over: the link (or the device's speed,
``DeviceSpeed``, fed by every request's device work) must move past the estimator's
thresholds, and a new (cut, codec) must beat the current one by ``SWITCH_MARGIN``. Plans are
made for the device profile scaled to the device's speed now.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from splitinfer.errors import EdgeUnavailable, FingerprintMismatch, PlanningError
from splitinfer.profiles import EdgeProfile
from splitinfer.wire import convert
from splitinfer.wire.v1 import model_pb2

from ._errors import TRANSIENT, connect_error
from .breaker import CLOSED
from .edges import Edge
from .estimator import LinkEstimator
from .link_probe import measure_link_async, probe_async
from .planning import ClientPlan, make_plan, objective_of, profile_cut_ids

__all__ = ["Maintenance", "SWITCH_MARGIN"]

log = logging.getLogger(__name__)

#: a re-plan switches cut/codec only when the new choice is this much better (relative)
SWITCH_MARGIN = 0.05
#: every how many link probes one also measures bandwidth
BANDWIDTH_PROBE_EVERY = 3
_TICK_S = 0.05


class Maintenance:
    """Owns the edge checks, the plan and the background task of one AsyncSplitClient."""

    def __init__(self, client: Any) -> None:
        self.c = client
        self.edge_profile: EdgeProfile | None = None
        self.plan_link = None
        self.plan_speed = 1.0  # the device speed factor the plan in force was made for
        self._last_replan = 0.0
        self._probes = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy: set[Edge] = set()
        self._loop_task: asyncio.Task[Any] | None = None

    def keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connect ------------------------------------------------------------------------------
    async def start(self) -> None:
        c = self.c
        results = await asyncio.gather(*(self.check_edge(e, at_connect=True) for e in c.edges),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        if not any(results) and c.fallback == "error":
            raise EdgeUnavailable("no edge reachable at connect: " + "; ".join(
                f"{e.address}: {e.last_error}" for e in c.edges) + " (fallback is 'error')")
        await self.prepare()
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _info(self, edge: Edge, version: str) -> convert.ModelInfo:
        reply = await edge.stub.GetModelInfo(
            model_pb2.ModelInfoRequest(model=self.c.manifest.name, version=version),
            timeout=self.c.connect_timeout_s, metadata=edge.metadata)
        return convert.parse_model_info(reply)

    async def check_edge(self, edge: Edge, *, at_connect: bool) -> bool:
        """Find the edge's version with our fingerprint; False when unreachable or set aside."""
        m = self.c.manifest
        try:
            info = await self._info(edge, "")
            tried = [info.version]
            order = ([m.version] if m.version in info.versions else []) + list(info.versions)
            for version in order:
                if info.fingerprint == m.fingerprint or version in tried:
                    continue
                tried.append(version)
                info = await self._info(edge, version)
            if info.fingerprint != m.fingerprint:
                raise FingerprintMismatch(
                    f"edge {edge.address} serves {m.name} versions {list(info.versions)}, none "
                    f"with this bundle's fingerprint {m.fingerprint[:16]}… (version "
                    f"{m.version}): put this bundle in the edge's model repository, or "
                    f"re-export the device's bundle from the model the edge serves")
        except grpc.aio.AioRpcError as exc:
            if exc.code() in TRANSIENT:
                edge.failed(f"{exc.code().name}: {exc.details()}")
                edge.breaker.force_open()
                log.warning("edge %s unreachable: %s", edge.address, edge.last_error)
                return False
            err = connect_error(edge.address, exc)
            if at_connect:
                raise err from None
            edge.set_aside(str(err))
            return False
        except FingerprintMismatch as err:
            if at_connect:
                raise
            edge.set_aside(str(err))
            return False
        edge.version, edge.incompatible, edge.info = info.version, "", info
        if edge.breaker.state != CLOSED:
            edge.breaker.probe_succeeded()
        return True

    async def prepare(self) -> None:
        """Link, profiles and the first plan, from the first edge that serves us."""
        c = self.c
        edge = c._pool.primary()
        if edge is None:
            c._plan = self.local_plan("no edge reachable at connect")
            return
        link, _ = await measure_link_async(edge.stub, timeout=c.connect_timeout_s,
                                           metadata=edge.metadata)
        c._estimator = LinkEstimator(link)
        self.plan_link = link
        if c.cut_id is None or c._codec_arg == "auto":
            self.edge_profile = await self._edge_profile(edge, wait=True)
            if c.device_profile is None:
                ids = profile_cut_ids(len(c.manifest.cuts), c.cut_id, c.max_profile_cuts)
                c.device_profile = await c.on_device_thread(c.runner.profile, ids, c.codecs,
                                                            3, c.device_slowdown)
        c._plan = self.make(link)

    async def _edge_profile(self, edge: Edge, *, wait: bool) -> EdgeProfile:
        """The edge's profile; with ``wait``, give its background tail profiling some time."""
        info = edge.info
        deadline = time.monotonic() + self.c.connect_timeout_s
        while wait and not info.tail_latency_s and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            info = await self._info(edge, edge.version)
        return EdgeProfile.from_model_info(info)

    # -- planning -----------------------------------------------------------------------------
    def local_plan(self, why: str) -> ClientPlan:
        c = self.c
        fixed = c.cut_id is not None and c._codec_arg != "auto" \
            and c.cut_id != c.runner.last_cut
        if c.runner.kind == "torch" and not fixed:
            last = c.runner.last_cut
            return ClientPlan(last, c.manifest.cuts[last].name, None, f"device only: {why}")
        return ClientPlan(c.cut_id, c.manifest.cuts[c.cut_id].name, c._codec_arg,
                          f"fixed; {why}")

    def make(self, link: Any) -> ClientPlan:
        c = self.c
        fixed = c.cut_id is not None and c._codec_arg != "auto"
        names = [cut.name for cut in c.manifest.cuts]
        if c.cut_id == c.runner.last_cut and c.runner.kind == "torch":
            return self.local_plan("the cut given is the model's output")
        if c.device_profile is None or self.edge_profile is None:
            if fixed:
                return ClientPlan(c.cut_id, names[c.cut_id], c._codec_arg, "fixed", link=link)
            return self.local_plan("no profiles to plan from")
        codec = None if c._codec_arg == "auto" else c._codec_arg
        self.plan_speed = c.device_speed
        device = c.device_profile if self.plan_speed == 1.0 else \
            c.device_profile.scaled(self.plan_speed)
        try:
            return make_plan(device, self.edge_profile, link, cut=c.cut_id,
                             codec=codec, objective=c.objective, constraints=c.constraints,
                             cut_names=names)
        except PlanningError as exc:
            log.warning("planner: %s", exc)
            if fixed:
                return ClientPlan(c.cut_id, names[c.cut_id], c._codec_arg, "fixed", link=link)
            return self.local_plan(f"planner found nothing: {exc}")

    def maybe_replan(self, force: bool = False) -> None:
        """Re-plan when the link or the device's speed moved past the hysteresis (or
        ``force``); switch cut/codec only when the new choice is clearly better now."""
        c, est = self.c, self.c._estimator
        if not c.replan_enabled or est is None or c._plan is None or self.plan_link is None:
            return
        if c.cut_id is not None and c._codec_arg != "auto":
            return  # nothing to choose
        speed = c._speed
        if not force and not est.moved(self.plan_link) \
                and (speed is None or not speed.moved(self.plan_speed)):
            return
        link = est.link
        self._last_replan, self.plan_link = time.monotonic(), link
        new, cur = self.make(link), c._plan
        c._stats.add(replans=1)
        if new.plan is None:
            return
        if (new.cut_id, new.codec) == (cur.cut_id, cur.codec):
            c._plan = new
            return
        now_value = objective_of(new.plan, cur.cut_id, cur.codec)
        new_value = objective_of(new.plan, new.cut_id, new.codec)
        if now_value is None or new_value is None or new_value < now_value * (1 - SWITCH_MARGIN):
            log.info("link now %.1f ms, %.2f Mbit/s, device %.2fx its profile: switching from "
                     "%s to %s", link.rtt_s * 1e3, link.bandwidth_bps / 1e6, self.plan_speed,
                     cur.describe(), new.describe())
            c._plan = new
            c._stats.add(plan_switches=1)

    # -- background ---------------------------------------------------------------------------
    async def _run(self) -> None:
        c = self.c
        next_probe = time.monotonic() + c.probe_interval_s
        next_refresh = time.monotonic() + c.refresh_s
        while True:
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            for edge in c.edges:
                recheck = edge.incompatible and now >= next_refresh
                if edge not in self._busy and (edge.breaker.probe_due() or recheck):
                    self._spawn(edge, self._probe_back(edge))
            if now >= next_probe:
                next_probe = now + c.probe_interval_s
                self.keep(asyncio.get_running_loop().create_task(self._link_probe()))
            if now >= next_refresh:
                next_refresh = now + c.refresh_s
                self.keep(asyncio.get_running_loop().create_task(self._refresh()))

    def _spawn(self, edge: Edge, coro: Any) -> None:
        self._busy.add(edge)
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(lambda _t: self._busy.discard(edge))
        self.keep(task)

    async def _probe_back(self, edge: Edge) -> None:
        c = self.c
        if not edge.version or edge.incompatible:
            had_primary = c._pool.primary() is not None
            if await self.check_edge(edge, at_connect=False) and not had_primary:
                await self.prepare()  # the first edge to serve us: measure and plan now
            return
        try:
            await probe_async(edge.stub, 0, min(1.0, c.deadline_s * 2), edge.metadata)
        except grpc.aio.AioRpcError:
            edge.breaker.probe_failed()
        else:
            edge.breaker.probe_succeeded()

    async def _link_probe(self) -> None:
        """A tiny Probe for the RTT; every BANDWIDTH_PROBE_EVERY-th time also one that takes
        ~50 ms at the estimated bandwidth: when the plan sends only small messages, nothing
        else would notice the link getting faster."""
        c = self.c
        edge = c._pool.primary()
        if edge is None or c._estimator is None or edge.breaker.state != CLOSED:
            return
        if c._stats.in_flight:
            return  # a probe queued behind a request's bytes would measure the queue
        self._probes += 1
        try:
            rtt = await probe_async(edge.stub, 0, min(1.0, c.probe_interval_s), edge.metadata)
            c._estimator.add_rtt(rtt)
            if self._probes % BANDWIDTH_PROBE_EVERY == 0:
                size = int(min(max(c._estimator.link.bandwidth_bps / 8 * 0.05, 16 << 10),
                               1 << 20))
                took = await probe_async(edge.stub, size, max(1.0, c.probe_interval_s),
                                         edge.metadata)
                c._estimator.add_transfer(size, took)
        except grpc.aio.AioRpcError:
            return  # requests, not probes, judge an edge's health
        self.maybe_replan()

    async def _refresh(self) -> None:
        edge = self.c._pool.primary()
        if edge is None or self.edge_profile is None:
            return
        try:
            info = await self._info(edge, edge.version)
        except grpc.aio.AioRpcError:
            return
        edge.info = info
        new = EdgeProfile.from_model_info(info)
        if new != self.edge_profile:
            self.edge_profile = new
            self.maybe_replan(force=True)
