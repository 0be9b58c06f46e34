"""The device client, asyncio edition: run the head, send what crosses the cut, always answer.

``AsyncSplitClient`` is the whole client; ``device_client.SplitClient`` runs one on a private
event loop for synchronous code. Model compute (head, local tail, shadow checks) runs on one
device thread, so the event loop stays free to move bytes while the device computes.

A request: check the inputs, run the head for the plan's cut, encode, ``Infer`` on the next
usable edge with the time left before the deadline (minus what a local tail would need). A
transient failure (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...) counts against that
edge's circuit breaker and the request goes to another edge while time allows; an edge that
refuses our model (fingerprint, auth) is set aside. When no edge answers, ``fallback="local"``
runs the tail on the device from the same (uncompressed) crossing tensors, else the request
raises ``EdgeUnavailable``. Each answer's network time (round trip minus the edge's reported
time) feeds the link estimator; when the link moves past the hysteresis the plan is remade.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterable, AsyncIterator, Callable, Iterable, Sequence

import grpc

from splitinfer.codec import get_codec
from splitinfer.errors import InvalidRequest
from splitinfer.planner import OBJECTIVES, Constraints
from splitinfer.slowdown import SlowDevice
from splitinfer.wire import convert

from . import _errors
from .breaker import BreakerPolicy
from .edges import Edge, EdgePool, as_tls
from .estimator import DeviceSpeed, LinkEstimator
from .maintenance import Maintenance
from .planning import DEFAULT_CLIENT_CODECS, ClientPlan, device_work_s, load_device_profile
from .runners import make_runner
from .stats import ClientStats, EdgeStats, StatsRecorder

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


class AsyncSplitClient:
    """Split inference from a bundle to one or more edge nodes. See the module docstring.

    ``cut``: "auto" (planned) or a cut id / name; ``codec``: "auto" or a codec name;
    ``deadline_s``: per request, from the call; ``fallback``: "local" or "error";
    ``tls``: None, True, a dict(ca=, cert=, key=, server_name=) or ``TLS``; ``token``: the
    edge's bearer token; ``head``: "auto", "torch" or "onnx"; ``window``: frames in flight in
    ``stream``; ``shadow_rate``: fraction of requests also run fully on the device to measure
    divergence; ``device_profile``: a DeviceProfile or its JSON path (else measured at connect
    when planning needs it); ``device_slowdown``: emulate a device that many times slower than
    this machine, for demos and what-if runs (``splitinfer.slowdown.SlowDevice``: every piece
    of work on the device thread idles ``device_slowdown - 1`` times the CPU time it used, and
    the profile measured at connect is that device's); 1 = off. ``track_device_speed``: time
    the device's work on every request against its profile and re-plan when the device runs
    more than 1.25x slower or faster than the plan assumed (``DeviceSpeed``; a thermal limit,
    another app); turn it off when ``device_profile`` is a what-if for another device.
    """

    def __init__(self, bundle: str | Path, edges: Sequence[str] | str, *,
                 cut: int | str = "auto", codec: str = "auto", deadline_s: float = 1.0,
                 fallback: str = "local", tls: Any = None, token: str | None = None,
                 head: str = "auto", window: int = 4, shadow_rate: float = 0.0,
                 device_profile: Any = None, objective: str = "latency",
                 constraints: Constraints | None = None,
                 codecs: Sequence[str] = DEFAULT_CLIENT_CODECS, replan: bool = True,
                 probe_interval_s: float = 2.0, refresh_s: float = 10.0,
                 breaker: BreakerPolicy = BreakerPolicy(), connect_timeout_s: float = 10.0,
                 max_profile_cuts: int = 24, threads: int | None = None,
                 device_slowdown: float = 1.0, track_device_speed: bool = True) -> None:
        _check_number("deadline_s", deadline_s, low=0.0)
        _check_number("connect_timeout_s", connect_timeout_s, low=0.0)
        _check_number("probe_interval_s", probe_interval_s, low=0.0)
        _check_number("refresh_s", refresh_s, low=0.0)
        if fallback not in ("local", "error"):
            raise ValueError(f"fallback is {fallback!r}; expected 'local' or 'error'")
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 1024:
            raise ValueError(f"window is {window!r}; expected an int from 1 to 1024")
        if not (isinstance(shadow_rate, (int, float)) and 0.0 <= shadow_rate <= 1.0):
            raise ValueError(f"shadow_rate is {shadow_rate!r}; expected a fraction 0..1")
        if (isinstance(device_slowdown, bool) or not isinstance(device_slowdown, (int, float))
                or not 1 <= device_slowdown < math.inf):
            raise ValueError(f"device_slowdown is {device_slowdown!r}; expected a number >= 1 "
                             f"(1 = this machine's speed)")
        if not isinstance(track_device_speed, bool):
            raise ValueError(f"track_device_speed is {track_device_speed!r}; expected True or "
                             f"False")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective is {objective!r}; expected one of {list(OBJECTIVES)}")
        if codec != "auto":
            get_codec(codec)  # CodecError names the known codecs
        for name in codecs:
            get_codec(name)
        self.bundle, self.deadline_s, self.fallback = Path(bundle), float(deadline_s), fallback
        self.window, self.shadow_rate, self.objective = window, float(shadow_rate), objective
        self.constraints = constraints or Constraints()
        self.codecs = tuple(codecs) if codec == "auto" else (codec,)
        self.replan_enabled, self.probe_interval_s, self.refresh_s = (
            replan, probe_interval_s, refresh_s)
        self.connect_timeout_s, self.max_profile_cuts = connect_timeout_s, max_profile_cuts
        self._cut_arg, self._codec_arg, self._head_arg = cut, codec, head
        self._threads, self._profile_arg = threads, device_profile
        self.device_slowdown = float(device_slowdown)
        # the device thread's own: SlowDevice keeps per-thread accounts
        self._slow = SlowDevice(device_slowdown) if device_slowdown > 1 else None
        # channels are made in connect(), on the loop that will use them
        self._pool_args = dict(addresses=[edges] if isinstance(edges, str) else list(edges),
                               tls=as_tls(tls), token=token, breaker=breaker)
        EdgePool.check(self._pool_args["addresses"])
        self._pool: EdgePool | None = None
        self._stats = StatsRecorder()
        self._device_pool: ThreadPoolExecutor | None = None
        self._plan: ClientPlan | None = None
        self._estimator: LinkEstimator | None = None
        self._speed = DeviceSpeed() if track_device_speed else None
        self._shadow_credit = 0.0
        self._shadow_busy = False
        self._tail_s: dict[int, float] = {}   # measured local tail time per cut, for reserves
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
        self._device_pool = ThreadPoolExecutor(1, thread_name_prefix="splitinfer-device")
        self._pool = EdgePool(**self._pool_args)
        try:
            self.runner = await self.on_device_thread(make_runner, self.bundle, self._head_arg,
                                               self._threads)
            self.manifest = self.runner.manifest
            self.cut_id = _resolve_cut(self._cut_arg, self.manifest.cuts, self.runner)
            if self.runner.kind == "onnx" and self._codec_arg == "auto":
                raise ValueError("head='onnx' has no profile to choose a codec from: give "
                                 "codec= explicitly (e.g. codec='int8+zstd')")
            self.device_profile = load_device_profile(self._profile_arg,
                                                      self.manifest.fingerprint)
            self._maintenance = Maintenance(self)
            await self._maintenance.start()
        except BaseException:
            await self._shutdown()
            raise
        self._connected = True
        log.info("connected %s: %s", self.manifest.name, self._plan.describe() if self._plan
                 else "no plan")
        return self

    async def close(self) -> None:
        """Stop background work and close the channels; in-flight calls are cancelled."""
        if not self._closed:
            self._closed = True
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self._maintenance is not None:
            await self._maintenance.stop()
        if self._pool is not None:
            await self._pool.close()
        if self._device_pool is not None:
            self._device_pool.shutdown(wait=False, cancel_futures=True)

    # -- what callers read --------------------------------------------------------------------
    @property
    def plan(self) -> ClientPlan:
        """The cut and codec in force (the planner's breakdown in ``plan.plan``)."""
        self._check_open()
        assert self._plan is not None  # set by connect
        return self._plan

    @property
    def stats(self) -> ClientStats:
        plan = self._plan
        link = self._estimator.link if self._estimator is not None else None
        return self._stats.snapshot(
            link=link, cut_id=plan.cut_id if plan else None, codec=plan.codec if plan else None,
            device_speed=self.device_speed,
            edges=tuple(EdgeStats(e.address, e.requests, e.ok, e.failures, e.breaker.state,
                                  e.breaker.opened, e.last_error, e.incompatible)
                        for e in self.edges))

    @property
    def device_speed(self) -> float:
        """How many times slower than its profile the device runs now (``DeviceSpeed``; 1.0
        when not tracked)."""
        return self._speed.factor if self._speed is not None else 1.0

    @property
    def edges(self) -> list[Edge]:
        return self._pool.edges if self._pool is not None else []

    # -- requests -----------------------------------------------------------------------------
    async def infer(self, *inputs: Any, request_id: str | None = None) -> Any:
        """The model's output(s) for ``inputs`` (one tensor, or a tuple for several)."""
        return (await self.infer_result(*inputs, request_id=request_id)).outputs

    async def infer_result(self, *inputs: Any, request_id: str | None = None) -> InferOutcome:
        """Like ``infer``, with where the answer came from, the request id and the latency."""
        self._check_open()
        start = time.monotonic()
        rid = _request_id(request_id)
        self._stats.started()
        outcome, reason = "error", ""
        try:
            x = self.runner.prepare(inputs)
            plan = self.plan
            if plan.codec is None:
                outs = await self.on_device(self.run_full, plan.cut_id, x,
                                            expect_s=self.expected_device_s(plan))
                outcome = "device"
                return InferOutcome(_unwrap(outs), rid, "device", plan.cut_id, None,
                                    time.monotonic() - start)
            crossing, request = await self.on_device(self.head_request, plan, x, rid,
                                                     expect_s=self.expected_device_s(plan))
            outs, by, reason = await self.send(request, crossing, plan.cut_id,
                                               start + self.deadline_s, rid)
            outcome = "local" if by == "local fallback" else "edge"
            if outcome == "edge":
                self.maybe_shadow(plan.cut_id, crossing, outs)
            return InferOutcome(_unwrap(outs), rid, by, plan.cut_id, plan.codec,
                                time.monotonic() - start, reason)
        finally:
            self._stats.finished(outcome, time.monotonic() - start, reason)

    def stream(self, frames: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
        """Outputs for ``frames`` in order, pipelined over one InferStream call per edge: the
        head of a frame runs while earlier frames are on the wire or at the edge, with at most
        ``window`` frames in flight. A frame is one input, or a tuple of inputs."""
        from .streaming import stream_frames

        self._check_open()
        return stream_frames(self, frames)

    # -- pieces used by infer and stream ------------------------------------------------------
    async def on_device(self, fn: Callable[..., Any], *args: Any,
                        expect_s: float | None = None) -> Any:
        """Run ``fn`` on the device thread (one at a time, like a device's compute), as one
        step of the emulated slower device when ``device_slowdown`` > 1. With ``expect_s``
        (what the device profile predicts for it) the time it took feeds the device's speed
        estimate, which may re-plan."""
        out, took = await self.on_device_thread(self._device_step, fn, *args)
        if expect_s is not None and self._speed is not None:
            self._speed.add(took, expect_s)
            if self._maintenance is not None:
                self._maintenance.maybe_replan()
        return out

    def _device_step(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        """Device thread: ``fn`` (dilated when emulating a slower device) and its seconds."""
        start = time.perf_counter()
        out = fn(*args) if self._slow is None else self._slow.run(fn, *args)
        return out, time.perf_counter() - start

    def expected_device_s(self, plan: ClientPlan) -> float | None:
        """The device profile's prediction for ``plan``'s device work (its head and encoding,
        or the whole model): the yardstick of the speed estimate (None when not tracked)."""
        if self._speed is None:
            return None
        return device_work_s(self.device_profile, plan.cut_id, plan.codec)

    async def on_device_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the device thread, never slowed: loading, profiling."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._device_pool, fn, *args)

    def head_request(self, plan: ClientPlan, x: Sequence[Any], rid: str
                     ) -> tuple[tuple[Any, ...], Any]:
        """Device thread: head, encode, build the InferRequest."""
        cut = self.manifest.cuts[plan.cut_id]
        crossing = self.runner.run_head(plan.cut_id, x)
        codec = get_codec(plan.codec)
        encoded = [codec.encode(t, name=spec.name) for t, spec in zip(crossing, cut.tensors)]
        request = convert.build_infer_request(
            model=self.manifest.name, version="",  # set per edge when sent
            fingerprint=self.manifest.fingerprint, cut_id=plan.cut_id, tensors=encoded,
            request_id=rid)
        return crossing, request

    def run_full(self, cut_id: int, x: Sequence[Any]) -> tuple[Any, ...]:
        """Device thread: the whole model here (head and tail of ``cut_id``)."""
        return self.runner.run_tail(cut_id, self.runner.run_head(cut_id, x))

    def local_reserve_s(self, cut_id: int) -> float:
        """Time to keep for a local tail before the deadline (0 when fallback is off)."""
        if self.fallback != "local" or not self.runner.can_run_tail(cut_id):
            return 0.0
        if cut_id in self._tail_s:
            return 1.5 * self._tail_s[cut_id] + 0.002
        prof = self.device_profile
        if prof is not None:
            heads = {c.cut_id: c.head_s for c in prof.cuts}
            if cut_id in heads:
                return 1.5 * self.device_speed \
                    * max(heads[prof.cuts[-1].cut_id] - heads[cut_id], 0.0) + 0.002
        return 0.0

    async def send(self, request: Any, crossing: tuple[Any, ...], cut_id: int,
                   deadline: float, rid: str) -> tuple[tuple[Any, ...], str, str]:
        """Infer on the edges (failover within the deadline), else local fallback or error.

        Returns (outputs, who answered, why it fell back: a status code name or "no edge")."""
        tried: set[Edge] = set()
        reserve = self.local_reserve_s(cut_id)
        code, why = "NO_EDGE", "every edge is set aside (circuit breaker open or model refused)"
        while True:
            timeout = deadline - time.monotonic() - reserve
            if timeout <= 0.001:
                if not tried:
                    code = "NO_TIME"
                why = f"{why}; no time left before the {self.deadline_s} s deadline"
                break
            edge = self._pool.pick(tried)
            if edge is None:
                break
            if tried:
                self._stats.add(retries=1)
            tried.add(edge)
            timeout = self.attempt_timeout_s(timeout, tried)
            outs, code_now, why_now, final = await self._attempt(edge, request, timeout, rid)
            if outs is not None:
                return outs, f"edge {edge.address}", ""
            code, why = code_now, f"{edge.address}: {why_now}"
            if final:
                break
        outs = await self._fallback(cut_id, crossing, rid, why, code)
        return outs, "local fallback", code

    def attempt_timeout_s(self, remaining: float, tried: set[Edge]) -> float:
        """How long one edge gets. With another usable edge still untried, a hung edge must
        not eat the whole deadline: it gets 3x the predicted latency (at least 50 ms), or
        half the time left when there is no prediction; the last edge gets all that is left."""
        if not any(e not in tried and e.usable_soon() for e in self.edges):
            return remaining
        predicted = self._plan.predicted_s if self._plan is not None else None
        share = remaining / 2 if predicted is None else max(3 * predicted, 0.05)
        return min(remaining, share)

    async def _attempt(self, edge: Edge, request: Any, timeout: float, rid: str
                       ) -> tuple[tuple[Any, ...] | None, str, str, bool]:
        """One Infer on ``edge``: (outputs, ...) or (None, code, why, no-other-edge-helps)."""
        edge.requests += 1
        request.version = edge.version  # edges may name the same bundle differently
        sent = time.monotonic()
        try:
            reply = await edge.stub.Infer(request, timeout=timeout, metadata=edge.metadata)
        except grpc.aio.AioRpcError as exc:
            code, why, final = _errors.judge(edge, exc, rid)
            return None, code, why, final
        except asyncio.CancelledError:
            edge.breaker.release_trial()
            raise
        received = time.monotonic()
        edge.succeeded()
        result = convert.parse_infer_response(reply)
        outs = tuple(self.runner.decode(o) for o in result.outputs)
        self.observe(request.ByteSize(), reply.ByteSize(), received - sent, result.timing)
        return outs, "", "", False

    def observe(self, sent_bytes: int, received_bytes: int, round_trip_s: float,
                timing: Any) -> None:
        """One answered request: count bytes, feed the link estimator, maybe re-plan."""
        self._stats.add(bytes_sent=sent_bytes, bytes_received=received_bytes)
        if self._estimator is not None:
            server = timing.total_s if timing is not None else 0.0
            self._estimator.add_transfer(sent_bytes + received_bytes,
                                         max(round_trip_s - server, 0.0))
            if self._maintenance is not None:
                self._maintenance.maybe_replan()

    async def _fallback(self, cut_id: int, crossing: tuple[Any, ...], rid: str,
                        why: str, code: str) -> tuple[Any, ...]:
        if self.fallback != "local" or not self.runner.can_run_tail(cut_id):
            off = "fallback is 'error'" if self.fallback != "local" else \
                f"no tail for cut {cut_id} on the device (export it with the ONNX head)"
            raise _errors.unanswered(code, f"request {rid}: no edge answered within the "
                                           f"{self.deadline_s} s deadline ({why}) and {off}")
        log.warning("request %s: running the tail on the device (%s)", rid, why)
        start = time.monotonic()
        outs = await self.on_device(self.runner.run_tail, cut_id, crossing)
        took = time.monotonic() - start
        self._tail_s[cut_id] = took if cut_id not in self._tail_s else \
            0.7 * self._tail_s[cut_id] + 0.3 * took
        return outs

    def maybe_shadow(self, cut_id: int, crossing: tuple[Any, ...],
                     outputs: tuple[Any, ...]) -> None:
        """Every 1/shadow_rate-th edge answer, also run the tail here and record divergence."""
        if self.shadow_rate <= 0 or not self.runner.can_run_tail(cut_id):
            return
        self._shadow_credit += self.shadow_rate
        if self._shadow_credit < 1.0:
            return
        self._shadow_credit -= 1.0
        if self._shadow_busy:
            self._stats.shadow_skipped()
            return
        self._shadow_busy = True

        async def check() -> None:
            try:
                local = await self.on_device(self.runner.run_tail, cut_id, crossing)
                self._stats.shadow(tuple(self.runner.to_numpy(o) for o in outputs),
                                   tuple(self.runner.to_numpy(o) for o in local))
            except Exception as exc:  # a shadow check must never hurt the request path
                log.warning("shadow check failed: %s", exc)
            finally:
                self._shadow_busy = False

        task = asyncio.get_running_loop().create_task(check())
        self._maintenance.keep(task) if self._maintenance else None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this client is closed; make a new one")
        if not self._connected and self._plan is None:
            raise RuntimeError("not connected: use `async with AsyncSplitClient(...)` or "
                               "`await client.connect()` first")


# ---- helpers ------------------------------------------------------------------------------------

def _check_number(name: str, value: Any, *, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= low:
        raise ValueError(f"{name} is {value!r}; expected a finite number of seconds > {low}")


def _request_id(given: str | None) -> str:
    if given is None:
        return uuid.uuid4().hex
    if not isinstance(given, str) or not 0 < len(given) <= 256:
        raise InvalidRequest(f"request_id {given!r}: expected a string of 1-256 characters")
    return given


def _resolve_cut(cut: int | str, cuts: Sequence[Any], runner: Any) -> int | None:
    """None for "auto"; else the id of the cut given by id or name, checked."""
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
        raise ValueError(f"cut is {cut!r}; expected 'auto', a cut name, or an id 0..{len(cuts) - 1}")
    if runner.kind == "onnx" and cut != 0 and cut not in runner.cut_ids:
        raise ValueError(f"cut {cut} has no ONNX head in {runner.manifest.name}'s onnx/ folder; "
                         f"exported: {list(runner.cut_ids)} (splitinfer export --onnx --cut {cut})")
    return cut


def _unwrap(outs: tuple[Any, ...]) -> Any:
    return outs[0] if len(outs) == 1 else outs
