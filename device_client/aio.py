"""The device client, asyncio edition: run the head, send what crosses the cut, always answer.

``AsyncSplitClient`` is the whole client; ``device_client.SplitClient`` runs one on a private
event loop for synchronous code. Its parts, each owning one thing:

- ``Device`` (``device``): the device thread, where all model work runs;
- ``EdgePool`` of ``EdgeState`` (``edges``): the ``Edge`` seam to each edge node, its breaker;
- ``Session`` (``session``): the plan in force, the link estimate, the device's speed, the
  profiles — changed only through its methods;
- ``RequestPath`` (``request_path``): building, sending and judging a request, for ``infer``
  and ``stream`` alike; ``Maintenance`` (``maintenance``): connect-time checks and background
  duties.

A request: check the inputs, run the head for the plan's cut, encode, ``Infer`` on the next
usable edge with the time left before the deadline (minus what a local tail would need), fail
over on transient errors, and when no edge answers run the tail on the device
(``fallback="local"``) or raise ``EdgeUnavailable``. Each answer's network time feeds the link
estimate; the device's own work feeds its speed estimate; either may re-plan.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterable, AsyncIterator, Iterable, Sequence

from splitinfer.codec import get_codec
from splitinfer.core.errors import InvalidRequest
from splitinfer.core.link import Link
from splitinfer.core.timing import StageTiming

from .device import Device
from .edges import Edge, EdgePool, EdgeState, GrpcEdge
from .maintenance import Maintenance
from .oip_edge import OipEdge
from .options import ClientArgs, ClientOptions, EdgeSpec, edge_list
from .planning import ClientPlan, load_device_profile
from .request_path import RequestPath
from .runners import make_runner
from .session import Session
from .stats import ClientStats, EdgeStats, StatsRecorder

if TYPE_CHECKING:
    from splitinfer.core.profiles import DeviceProfile, EdgeProfile
    from splitinfer.model.manifest import Manifest

    from .runners import Runner

__all__ = ["AsyncSplitClient", "InferOutcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferOutcome:
    """One answered request: the outputs and how they were obtained."""

    outputs: Any              # one tensor/array, or a tuple for several outputs
    request_id: str
    answered_by: str          # "edge <address>", "local fallback" or "device"
    cut_id: int
    codec: str | None
    latency_s: float
    fallback_reason: str = ""
    #: the device's own work for this request: head + encode + building it and decoding the
    #: answer (or the whole model, or the local tail), as the device thread timed it
    device_s: float = 0.0
    #: the edge's time per stage (queue, decode, compute, encode) as it reported it
    edge_timing: StageTiming | None = None
    bytes_sent: int = 0
    bytes_received: int = 0


class AsyncSplitClient(ClientArgs):
    """Split inference from a bundle to one or more edge nodes (see ``ClientArgs`` for every
    argument, and the module docstring for how a request goes)."""

    @classmethod
    def from_options(cls, bundle: str | Path, edges: Sequence[EdgeSpec] | EdgeSpec,
                     options: ClientOptions) -> AsyncSplitClient:
        """A client from ``ClientOptions`` made beforehand (one set of options, many
        clients)."""
        client = cls.__new__(cls)
        client._configure(Path(bundle), edge_list(edges), options)
        return client

    def _configure(self, bundle: Path, edges: list[EdgeSpec], options: ClientOptions) -> None:
        self.bundle, self.options = bundle, options
        self._edge_specs = edges  # channels are made in connect(), on the loop that uses them
        self._stats = StatsRecorder()
        self._device: Device | None = None
        self._pool: EdgePool | None = None
        self._session: Session | None = None
        self._path: RequestPath | None = None
        self._maintenance: Maintenance | None = None
        self._connected = self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> AsyncSplitClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> AsyncSplitClient:
        """Load the head, check every edge serves this bundle, measure the link, plan."""
        if self._connected:
            return self
        if self._closed:
            raise RuntimeError("this client is closed; make a new one")
        o = self.options
        self._device = device = Device(o.device_slowdown)
        try:
            runner = await device.run(make_runner, self.bundle, o.head, o.threads)
            cut_id = _resolve_cut(o.cut, runner)
            if runner.kind == "onnx" and o.codec == "auto":
                raise ValueError("head='onnx' has no profile to choose a codec from: give "
                                 "codec= explicitly (e.g. codec='int8+zstd')")
            profile = load_device_profile(o.device_profile, runner.manifest.fingerprint)
            self._pool = pool = EdgePool([_as_edge(e, o, runner.manifest)
                                          for e in self._edge_specs], o.breaker)
            self._session = session = Session(o, runner.manifest, runner, cut_id, profile,
                                              self._stats)
            self._path = RequestPath(session, pool, device, self._stats)
            self._maintenance = Maintenance(session, pool, device)
            await self._maintenance.start()
        except BaseException:
            await self._shutdown()
            raise
        self._connected = True
        log.info("connected %s: %s", runner.manifest.name, session.plan.describe())
        return self

    async def close(self) -> None:
        """Stop background work and close the channels; in-flight calls are cancelled."""
        if not self._closed:
            self._closed = True
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self._maintenance is not None:
            await self._maintenance.stop()
        if self._path is not None:
            await self._path.close()
        if self._pool is not None:
            await self._pool.close()
        if self._device is not None:
            self._device.close()

    # -- what callers read --------------------------------------------------------------------
    @property
    def plan(self) -> ClientPlan:
        """The cut and codec in force (the planner's breakdown in ``plan.plan``)."""
        return self._connected_session().plan

    @property
    def stats(self) -> ClientStats:
        session = self._session
        plan = session.plan if session is not None and session.has_plan else None
        return self._stats.snapshot(
            link=session.link if session is not None else None,
            cut_id=plan.cut_id if plan else None, codec=plan.codec if plan else None,
            device_speed=self.device_speed,
            edges=tuple(EdgeStats(s.address, s.requests, s.ok, s.failures, s.breaker.state,
                                  s.breaker.opened, s.last_error, s.incompatible)
                        for s in (self._pool.states if self._pool is not None else ())))

    @property
    def device_speed(self) -> float:
        """How many times slower than its profile the device runs now (``DeviceSpeed``; 1.0
        when not tracked)."""
        return self._session.device_speed if self._session is not None else 1.0

    @property
    def edges(self) -> list[EdgeState]:
        """Each edge's state: address, breaker, counters, the version it serves us."""
        return list(self._pool.states) if self._pool is not None else []

    @property
    def runner(self) -> Runner:
        """The device's model runner (torch or ONNX)."""
        return self._connected_session().runner

    @property
    def manifest(self) -> Manifest:
        """The bundle's manifest: name, version, fingerprint, cuts."""
        return self._connected_session().manifest

    @property
    def device_profile(self) -> DeviceProfile | None:
        """The device profile plans are made from (measured at connect, or given)."""
        return self._connected_session().device_profile

    @property
    def edge_profile(self) -> EdgeProfile | None:
        """The edge's profile (its tail time per cut and queue delay, from GetModelInfo)."""
        return self._connected_session().edge_profile

    # -- requests -----------------------------------------------------------------------------
    async def infer(self, *inputs: Any, request_id: str | None = None) -> Any:
        """The model's output(s) for ``inputs`` (one tensor, or a tuple for several)."""
        return (await self.infer_result(*inputs, request_id=request_id)).outputs

    async def infer_result(self, *inputs: Any, request_id: str | None = None,
                           cut: int | str | None = None, codec: str | None = None
                           ) -> InferOutcome:
        """Like ``infer``, with where the answer came from, the request id, the latency and
        the time and bytes it took.

        ``cut`` and ``codec`` run this one request at a given cut (id or name) and codec
        instead of the plan's (side-by-side measurements, A/B checks); the last cut runs the
        whole model here and needs no codec."""
        session, path = self._connected_session(), self._request_path()
        start = time.monotonic()
        rid = _request_id(request_id)
        plan = session.plan if cut is None and codec is None else \
            self._plan_for(session, cut, codec)
        self._stats.started()
        outcome, reason = "error", ""
        try:
            x = session.runner.prepare(inputs)
            p = await path.prepare(plan, x, rid)
            if p.request is None:
                outcome = "device"
                return InferOutcome(_unwrap(p.outputs), rid, "device", plan.cut_id, None,
                                    time.monotonic() - start, device_s=p.device_s)
            answer = await path.send(p, start + self.options.deadline_s)
            outcome, reason = answer.outcome, answer.reason
            if outcome == "edge":
                path.maybe_shadow(p, answer.outputs)
            return InferOutcome(_unwrap(answer.outputs), rid, answer.answered_by, plan.cut_id,
                                plan.codec, time.monotonic() - start, reason, answer.device_s,
                                answer.edge_timing, answer.bytes_sent, answer.bytes_received)
        finally:
            self._stats.finished(outcome, time.monotonic() - start, reason)

    def stream(self, frames: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
        """Outputs for ``frames`` in order, pipelined over one InferStream call per edge: the
        head of a frame runs while earlier frames are on the wire or at the edge, with at most
        ``window`` frames in flight. A frame is one input, or a tuple of inputs."""
        from .streaming import stream_frames

        self._connected_session()
        if self._pool is None:
            raise RuntimeError("not connected")
        return stream_frames(self._request_path(), self._pool, frames)

    async def measure_link(self, rounds: int = 3, sizes: Sequence[int] | None = None
                           ) -> tuple[Link, list[tuple[int, float]]]:
        """Measure the link to the first edge that serves us, now (Probe echoes of several
        sizes, robust fit; ``sizes`` None: picked from a rough first estimate). The link
        estimate restarts from it and the plan follows. Returns the link and the samples
        (bytes, network seconds)."""
        self._connected_session()
        if self._maintenance is None:
            raise RuntimeError("not connected")
        return await self._maintenance.measure_link(rounds, None if sizes is None
                                                    else list(sizes))

    # -- helpers ------------------------------------------------------------------------------
    def _connected_session(self) -> Session:
        if self._closed:
            raise RuntimeError("this client is closed; make a new one")
        if self._session is None or not self._session.has_plan:
            raise RuntimeError("not connected: use `async with AsyncSplitClient(...)` or "
                               "`await client.connect()` first")
        return self._session

    def _request_path(self) -> RequestPath:
        if self._path is None:
            raise RuntimeError("not connected")
        return self._path

    def _plan_for(self, session: Session, cut: int | str | None, codec: str | None
                  ) -> ClientPlan:
        """The plan of a request that names its own cut and codec, checked."""
        if cut is None:
            raise ValueError("codec= for one request needs cut= too")
        cut_id = _resolve_cut(cut, session.runner)
        if cut_id is None:
            raise ValueError("cut='auto' is not a cut for one request: give an id or a name")
        if cut_id != session.runner.last_cut or session.runner.kind != "torch":
            if codec is None:
                raise ValueError(f"cut={cut!r} sends tensors to the edge: give codec= too "
                                 f"(e.g. codec='int8+zstd')")
            get_codec(codec)  # CodecError names the known codecs
        return session.plan_for(cut_id, codec)


def _as_edge(spec: EdgeSpec, options: ClientOptions, manifest: Manifest) -> Edge:
    if isinstance(spec, str):
        if options.protocol == "oip":
            return OipEdge(spec, manifest, tls=options.tls, token=options.token)
        return GrpcEdge(spec, tls=options.tls, token=options.token)
    return spec


def _request_id(given: str | None) -> str:
    if given is None:
        return uuid.uuid4().hex
    if not isinstance(given, str) or not 0 < len(given) <= 256:
        raise InvalidRequest(f"request_id {given!r}: expected a string of 1-256 characters")
    return given


def _resolve_cut(cut: int | str, runner: Runner) -> int | None:
    """None for "auto"; else the id of the cut given by id or name, checked."""
    cuts = runner.manifest.cuts
    if cut == "auto":
        if runner.kind == "onnx":
            raise ValueError("head='onnx' runs only the cuts exported as ONNX: give cut= one "
                             f"of {list(runner.cut_ids)} (cut='auto' needs the torch head)")
        return None
    if isinstance(cut, str):
        match = [c.id for c in cuts if c.name == cut]
        if not match:
            raise ValueError(f"cut {cut!r} is not a cut name of this bundle; see "
                             f"`splitinfer inspect BUNDLE` (or pass a cut id)")
        cut = match[0]
    if isinstance(cut, bool) or not isinstance(cut, int) or not 0 <= cut < len(cuts):
        raise ValueError(f"cut is {cut!r}; expected 'auto', a cut name, or an id "
                         f"0..{len(cuts) - 1}")
    if runner.kind == "onnx" and cut != 0 and cut not in runner.cut_ids:
        raise ValueError(f"cut {cut} has no ONNX head in {runner.manifest.name}'s onnx/ "
                         f"folder; exported: {list(runner.cut_ids)} (splitinfer export --onnx "
                         f"--cut {cut})")
    return cut


def _unwrap(outs: tuple[Any, ...]) -> Any:
    return outs[0] if len(outs) == 1 else outs
