"""The client's duties besides requests: check edges at connect, measure the link, make the first
plan, and in the background keep the link estimate fresh, re-read the edge's profile, probe
open circuit breakers back and re-check edges that were set aside.

At connect: ``GetModelInfo`` on every edge (the version whose fingerprint is this bundle's; a
wrong token, an unknown model or no matching fingerprint raise here, not later), a link
measurement on the first edge that serves us, the profiles, the first plan (``Session.start``).
Then, with ``background`` on: every ``probe_interval_s`` a tiny Probe for the RTT (every
``BANDWIDTH_PROBE_EVERY``-th time also one for the bandwidth), every ``refresh_s`` the edge's
tail times and queue delay. Every edge call goes through the ``Edge`` seam; every finding goes
to the ``Session``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Coroutine

from splitinfer.core.errors import (
    EdgeUnavailable,
    FingerprintMismatch,
    ServingError,
    SplitInferError,
)
from splitinfer.core.link import Link
from splitinfer.core.profiles import EdgeProfile

from .breaker import CLOSED
from .link_probe import measure_link
from .planning import profile_cut_ids
from .request_path import TRANSIENT

if TYPE_CHECKING:
    from splitinfer.wire.convert import ModelInfo

    from .device import Device
    from .edges import EdgePool, EdgeState
    from .session import Session

__all__ = ["Maintenance", "BANDWIDTH_PROBE_EVERY"]

log = logging.getLogger(__name__)

#: every how many link probes one also measures bandwidth
BANDWIDTH_PROBE_EVERY = 3
_TICK_S = 0.05
_HINTS = {"UNAUTHENTICATED": "; pass token= with the edge node's --token-file contents",
          "NOT_FOUND": "; put the bundle in the edge node's model repository"}


class Maintenance:
    """Connect-time checks and the background task of one client."""

    def __init__(self, session: Session, pool: EdgePool, device: Device) -> None:
        self.session, self.pool, self.device = session, pool, device
        self.options = session.options
        self._probes = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy: set[EdgeState] = set()
        self._loop_task: asyncio.Task[Any] | None = None

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a reference to a background task until it ends (and cancel it at stop)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connect ------------------------------------------------------------------------------
    async def start(self) -> None:
        results = await asyncio.gather(
            *(self.check_edge(s, at_connect=True) for s in self.pool.states),
            return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        if not any(results) and self.options.fallback == "error":
            raise EdgeUnavailable("no edge reachable at connect: " + "; ".join(
                f"{s.address}: {s.last_error}" for s in self.pool.states)
                + " (fallback is 'error')")
        await self.prepare()
        if self.options.background:
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _info(self, state: EdgeState, version: str) -> ModelInfo:
        return await state.edge.model_info(self.session.manifest.name, version,
                                           self.options.connect_timeout_s)

    async def check_edge(self, state: EdgeState, *, at_connect: bool) -> bool:
        """Find the edge's version with our fingerprint; False when unreachable or set aside."""
        m = self.session.manifest
        try:
            info = await self._info(state, "")
            tried = [info.version]
            order = ([m.version] if m.version in info.versions else []) + list(info.versions)
            for version in order:
                if info.fingerprint == m.fingerprint or version in tried:
                    continue
                tried.append(version)
                info = await self._info(state, version)
            if info.fingerprint != m.fingerprint:
                raise FingerprintMismatch(
                    f"edge {state.address} serves {m.name} versions {list(info.versions)}, none "
                    f"with this bundle's fingerprint {m.fingerprint[:16]}… (version "
                    f"{m.version}): put this bundle in the edge's model repository, or "
                    f"re-export the device's bundle from the model the edge serves")
        except FingerprintMismatch as mismatch:
            if at_connect:
                raise
            state.set_aside(str(mismatch))
            return False
        except ServingError as exc:
            if exc.code in TRANSIENT:
                state.failed(f"{exc.code}: {exc}")
                state.breaker.force_open()
                log.warning("edge %s unreachable: %s", state.address, state.last_error)
                return False
            err = _connect_error(state.address, exc)
            if at_connect:
                raise err from None
            state.set_aside(str(err))
            return False
        state.serves(info)
        if state.breaker.state != CLOSED:
            state.breaker.probe_succeeded()
        return True

    async def prepare(self) -> None:
        """Link, profiles and the first plan, from the first edge that serves us and answers
        its probes (one that fails them now is counted down and the next one measured)."""
        s = self.session
        while (state := self.pool.reachable()) is not None:
            try:
                link, _ = await measure_link(state.edge, timeout=self.options.connect_timeout_s)
                break
            except ServingError as exc:
                if exc.code not in TRANSIENT:
                    raise
                state.failed(f"{exc.code}: {exc}")
                state.breaker.force_open()
                log.warning("edge %s failed its link probes: %s", state.address,
                            state.last_error)
        else:
            if self.options.fallback == "error":
                raise EdgeUnavailable("no edge answered its link probes at connect: " + "; ".join(
                    f"{st.address}: {st.last_error}" for st in self.pool.states)
                    + " (fallback is 'error')")
            s.start(None, None)
            return
        edge_profile = None
        if s.cut_id is None or self.options.codec == "auto":
            edge_profile = await self._edge_profile(state, wait=True)
            if s.device_profile is None:
                ids = profile_cut_ids(len(s.manifest.cuts), s.cut_id,
                                      self.options.max_profile_cuts)
                profile = await self.device.run(s.runner.profile, ids,
                                                self.options.planned_codecs, 3,
                                                self.device.slowdown)
                if profile is not None:
                    s.set_device_profile(profile)
        s.start(link, edge_profile)

    async def measure_link(self, rounds: int = 3, sizes: list[int] | None = None
                           ) -> tuple[Link, list[tuple[int, float]]]:
        """Measure the link to the first edge that serves us now; the estimate restarts
        from it."""
        state = self.pool.primary()
        if state is None:
            raise EdgeUnavailable("no edge serves this bundle now: nothing to measure the "
                                  "link to")
        link, samples = await measure_link(state.edge, rounds, sizes=sizes,
                                           timeout=max(self.options.connect_timeout_s, 30.0))
        self.session.reset_link(link)
        return link, samples

    async def _edge_profile(self, state: EdgeState, *, wait: bool) -> EdgeProfile:
        """The edge's profile; with ``wait``, give its background tail profiling some time."""
        info = state.info if state.info is not None else await self._info(state, state.version)
        deadline = time.monotonic() + self.options.connect_timeout_s
        while wait and not info.tail_latency_s and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            info = await self._info(state, state.version)
        return EdgeProfile.from_model_info(info)

    # -- background ---------------------------------------------------------------------------
    async def _run(self) -> None:
        interval, refresh = self.options.probe_interval_s, self.options.refresh_s
        next_probe = time.monotonic() + interval
        next_refresh = time.monotonic() + refresh
        while True:
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            for state in self.pool.states:
                recheck = bool(state.incompatible) and now >= next_refresh
                if state not in self._busy and (state.breaker.probe_due() or recheck):
                    self._spawn(state, self._probe_back(state))
            if now >= next_probe:
                next_probe = now + interval
                self.keep(asyncio.get_running_loop().create_task(self._link_probe()))
            if now >= next_refresh:
                next_refresh = now + refresh
                self.keep(asyncio.get_running_loop().create_task(self._refresh()))

    def _spawn(self, state: EdgeState, coro: Coroutine[Any, Any, None]) -> None:
        self._busy.add(state)
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(lambda _t: self._busy.discard(state))
        self.keep(task)

    async def _probe_back(self, state: EdgeState) -> None:
        if not state.version or state.incompatible:
            had_primary = self.pool.primary() is not None
            if await self.check_edge(state, at_connect=False) and not had_primary:
                await self.prepare()  # the first edge to serve us: measure and plan now
            return
        try:
            await state.edge.probe(0, min(1.0, self.options.deadline_s * 2))
        except SplitInferError:
            state.breaker.probe_failed()
            return
        state.breaker.probe_succeeded()
        if self.session.link is None:  # no edge could be measured at connect: now one can
            await self.prepare()

    async def _link_probe(self) -> None:
        """A tiny Probe for the RTT; every BANDWIDTH_PROBE_EVERY-th time also one that takes
        ~50 ms at the estimated bandwidth: when the plan sends only small messages, nothing
        else would notice the link getting faster."""
        state = self.pool.primary()
        if state is None or self.session.link is None or state.breaker.state != CLOSED:
            return
        if self.session.stats.in_flight:
            return  # a probe queued behind a request's bytes would measure the queue
        self._probes += 1
        interval = self.options.probe_interval_s
        try:
            self.session.observe_rtt(await state.edge.probe(0, min(1.0, interval)))
            if self._probes % BANDWIDTH_PROBE_EVERY == 0:
                size = self.session.bandwidth_probe_bytes()
                took = await state.edge.probe(size, max(1.0, interval))
                self.session.observe_transfer(size, took)
        except SplitInferError:
            return  # requests, not probes, judge an edge's health

    async def _refresh(self) -> None:
        state = self.pool.primary()
        if state is None or self.session.edge_profile is None:
            return
        try:
            info = await self._info(state, state.version)
        except SplitInferError:
            return
        state.serves(info)
        self.session.set_edge_profile(EdgeProfile.from_model_info(info))


def _connect_error(address: str, exc: ServingError) -> SplitInferError:
    """A connect-time refusal (wrong token, unknown model) as our exception, naming the edge;
    codes without a class of their own become ``EdgeUnavailable``."""
    message = f"edge {address} refused GetModelInfo: {exc.code}: {exc}{_HINTS.get(exc.code, '')}"
    if type(exc) is ServingError:
        return EdgeUnavailable(message)
    return type(exc)(message, code=exc.code)
