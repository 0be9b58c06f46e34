"""One request's path, for ``infer`` and ``stream`` alike: build it on the device, send it,
read and judge the answer, fail over, fall back.

``prepare`` runs on the device thread: the head for the plan's cut, encoding, the
``InferRequest`` (or the whole model, device-only). ``send`` is the unary path: ``Infer`` on the
next usable edge with the time left before the deadline minus what a local tail would need,
then the next edge, then ``fall_back``. The stream path (``streaming``) writes the same prepared
requests into ``InferStream`` calls and comes back here for everything else: ``read`` turns an
answer into outputs (decoded on the device thread), ``judge`` decides what an edge's error
means, ``fall_back`` answers locally or raises.

How an error is judged: transient codes (the edge is down, slow, overloaded, restarting) count
against the edge's circuit breaker and the request may go elsewhere; codes that say the edge
will never serve us (our model's fingerprint, version or token) set the edge aside until it is
re-checked; codes about the request itself (INVALID_ARGUMENT) would be the same on any edge, so
the request stops trying. When nothing answered, the edge's refusal is raised as our exception
(``splitinfer.transport.error_for``), or ``EdgeUnavailable`` when the edges were down, hung or
set aside.

One address can stand for a fleet (``dns:///edge.ns.svc.cluster.local:50051``: gRPC's
round_robin spreads calls over every replica the name resolves to), so an UNAVAILABLE answer
says one replica could not take the request (and CANCELLED that one closed the connection the
call was on), not that every one behind the address is gone:
the request may try the same address again (:func:`retry_same`), after the other edges. A
draining replica's refusal (``ShuttingDown``) never reached a model and is no fault of the edge:
it does not count against the breaker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from splitinfer import transport
from splitinfer.codec import get_codec
from splitinfer.core.errors import EdgeUnavailable, ServingError, ShuttingDown, SplitInferError
from splitinfer.core.timing import StageTiming
from splitinfer.wire import convert

if TYPE_CHECKING:
    from splitinfer.wire.v1 import inference_pb2

    from .device import Device
    from .edges import EdgePool, EdgeState
    from .options import ClientOptions
    from .planning import ClientPlan
    from .runners import Runner
    from .session import Session
    from .stats import StatsRecorder

__all__ = ["RequestPath", "Prepared", "Answer", "TRANSIENT", "REFUSES_US", "SAME_EDGE_RETRIES",
           "SAME_EDGE_CODES", "STREAM_BROKEN_CODES", "retry_same"]

log = logging.getLogger(__name__)

#: the edge is down, slow, overloaded or restarting: count it, try elsewhere
TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED",
                       "UNKNOWN", "INTERNAL", "ABORTED"})
#: the edge will not serve our model (or us): set it aside until it is re-checked
REFUSES_US = frozenset({"FAILED_PRECONDITION", "NOT_FOUND", "UNAUTHENTICATED",
                        "PERMISSION_DENIED", "UNIMPLEMENTED"})
#: how many more times one request may go to an address that answered UNAVAILABLE or
#: CANCELLED: another replica behind it may take it (a rolling update's draining pod; a
#: connection the server closed, by --max-connection-age-s or at the end of its drain, which
#: cuts the calls still on it)
SAME_EDGE_RETRIES = 2
SAME_EDGE_CODES = frozenset({"UNAVAILABLE", "CANCELLED"})
#: a stream call that broke (not one frame's error answer): gRPC also reports a connection
#: closed under a live stream as INTERNAL ("Internal error from Core") or UNKNOWN
STREAM_BROKEN_CODES = SAME_EDGE_CODES | {"INTERNAL", "UNKNOWN"}


def retry_same(state: EdgeState, code: str, tried: set[EdgeState],
               again: dict[EdgeState, int], codes: frozenset[str] = SAME_EDGE_CODES) -> bool:
    """After ``state`` answered ``code``: put it back among the edges the request may still
    try (``tried`` loses it) when the code is one of ``codes`` and the request has retries
    left for it (``again`` counts them). True when it did."""
    if code not in codes or again.get(state, 0) >= SAME_EDGE_RETRIES:
        return False
    again[state] = again.get(state, 0) + 1
    tried.discard(state)
    return True


@dataclass
class Prepared:
    """One request as the device built it. ``request`` is None when the plan ran the whole
    model here (``outputs`` then holds the answer)."""

    rid: str
    plan: ClientPlan
    crossing: tuple[Any, ...] = ()
    request: inference_pb2.InferRequest | None = None
    outputs: tuple[Any, ...] = ()
    device_s: float = 0.0


@dataclass(frozen=True)
class Answer:
    """What one request got back, and how."""

    outputs: tuple[Any, ...]
    outcome: str               # "edge", "local" (fallback) or "device" (device-only plan)
    answered_by: str           # "edge <address>", "local fallback" or "device"
    reason: str = ""           # why it fell back: a status code name, "NO_EDGE" or "NO_TIME"
    device_s: float = 0.0      # the device's work for it: head + encode (+ decode), or more
    edge_timing: StageTiming | None = None
    bytes_sent: int = 0
    bytes_received: int = 0


class RequestPath:
    """Builds, sends and judges requests for one client (see the module docstring)."""

    def __init__(self, session: Session, pool: EdgePool, device: Device,
                 stats: StatsRecorder) -> None:
        self.session, self.pool, self.device, self.stats = session, pool, device, stats
        self.options: ClientOptions = session.options
        self._shadow_credit = 0.0
        self._shadow_busy = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- building -----------------------------------------------------------------------------
    async def prepare(self, plan: ClientPlan, inputs: tuple[Any, ...], rid: str) -> Prepared:
        """Device thread: the head, encoding and the request (or the whole model)."""
        expect = self.session.expected_device_s(plan)
        runner = self.session.runner
        if plan.codec is None:
            outs, took = await self.device.step(_run_full, runner, plan.cut_id, inputs)
            self.session.observe_device(took, expect)
            return Prepared(rid, plan, outputs=outs, device_s=took)
        (crossing, request), took = await self.device.step(self._build, plan, plan.codec,
                                                           inputs, rid)
        self.session.observe_device(took, expect)
        return Prepared(rid, plan, crossing, request, device_s=took)

    def _build(self, plan: ClientPlan, codec_name: str, inputs: tuple[Any, ...], rid: str
               ) -> tuple[tuple[Any, ...], inference_pb2.InferRequest]:
        manifest = self.session.manifest
        cut = manifest.cuts[plan.cut_id]
        crossing = self.session.runner.run_head(plan.cut_id, inputs)
        codec = get_codec(codec_name)
        encoded = [codec.encode(t, name=spec.name) for t, spec in zip(crossing, cut.tensors)]
        request = convert.build_infer_request(
            model=manifest.name, version="",  # each edge's own version, set when sent
            fingerprint=manifest.fingerprint, cut_id=plan.cut_id, tensors=encoded,
            request_id=rid)
        return crossing, request

    # -- the unary path -----------------------------------------------------------------------
    async def send(self, p: Prepared, deadline: float) -> Answer:
        """``Infer`` on the edges (failover within the deadline), else the local fallback."""
        tried: set[EdgeState] = set()
        again: dict[EdgeState, int] = {}
        attempts = 0
        reserve = self.session.local_reserve_s(p.plan.cut_id)
        code, why = "NO_EDGE", "every edge is set aside (circuit breaker open or model refused)"
        while True:
            remaining = deadline - time.monotonic() - reserve
            if remaining <= 0.001:
                code = code if tried else "NO_TIME"
                why = f"{why}; no time left before the {self.options.deadline_s} s deadline"
                break
            state = self.pool.pick(tried)
            if state is None:
                break
            if attempts:
                self.stats.add(retries=1)
            attempts += 1
            tried.add(state)
            timeout = self.session.attempt_timeout_s(remaining, self.pool.any_usable_soon(tried))
            result = await self._attempt(state, p, timeout)
            if isinstance(result, Answer):
                return result
            code, why, final = result
            if final:
                break
            retry_same(state, code, tried, again)
        return await self.fall_back(p, why, code)

    async def _attempt(self, state: EdgeState, p: Prepared, timeout: float
                       ) -> Answer | tuple[str, str, bool]:
        """One ``Infer``: the answer, or (code, why, no other edge would help)."""
        request = self.sendable(state, p)
        sent = time.monotonic()
        try:
            reply = await state.edge.infer(request, timeout)
        except asyncio.CancelledError:
            state.breaker.release_trial()
            raise
        except Exception as exc:  # the Edge seam raises ServingError; anything else is a bug
            error = as_serving_error(exc, state)
            return error.code, f"{state.address}: {error.code}: {error}", \
                self.judge(state, error, p.rid)
        answer = await self.read(state, p, reply, time.monotonic() - sent, clean=True)
        if isinstance(answer, ServingError):
            return answer.code, f"{state.address}: {answer.code}: {answer}", \
                self.judge(state, answer, p.rid)
        return answer

    # -- answers, errors, fallback: shared with the stream path --------------------------------
    def sendable(self, state: EdgeState, p: Prepared) -> inference_pb2.InferRequest:
        """``p``'s request for ``state``'s edge (edges may name the same bundle differently)."""
        if p.request is None:
            raise ValueError(f"request {p.rid} runs on the device: nothing to send")
        state.sending()
        p.request.version = state.version
        return p.request

    async def read(self, state: EdgeState, p: Prepared, reply: inference_pb2.InferResponse,
                   round_trip_s: float, clean: bool) -> Answer | ServingError:
        """An edge's answer to ``p``: decoded outputs, or the error it carries. ``clean``:
        nothing else was in flight, so the round trip is the network's and the edge's only."""
        try:
            result = convert.parse_infer_response(reply)
        except SplitInferError as exc:  # a malformed answer: the edge is broken, not us
            return ServingError(f"malformed answer: {exc}", code="INTERNAL")
        if result.error is not None:
            return transport.error_for(transport.status_code(result.error.code),
                                       result.error.message)
        try:
            outs, took = await self.device.step(_decode_all, self.session.runner,
                                                result.outputs)
        except SplitInferError as exc:  # an answer that does not decode: the edge is broken
            return ServingError(f"an answer that does not decode: {exc}", code="INTERNAL")
        state.succeeded()
        sent, received = p.request.ByteSize() if p.request else 0, reply.ByteSize()
        self.stats.add(bytes_sent=sent, bytes_received=received)
        if clean:
            server = result.timing.total_s if result.timing is not None else 0.0
            self.session.observe_transfer(sent + received, max(round_trip_s - server, 0.0))
        return Answer(outs, "edge", f"edge {state.address}", device_s=p.device_s + took,
                      edge_timing=result.timing, bytes_sent=sent, bytes_received=received)

    def judge(self, state: EdgeState, error: ServingError, rid: str) -> bool:
        """Count ``error`` on ``state``; True when no other edge would answer differently."""
        why = f"{error.code}: {error}"
        if isinstance(error, ShuttingDown):  # one replica is leaving: no fault of the edge's
            state.breaker.release_trial()
            state.last_error = why
            log.info("request %s: a replica behind %s is draining (%s)", rid, state.address, why)
            return False
        if error.code in TRANSIENT:
            state.failed(why)
            log.info("request %s: %s failed (%s)", rid, state.address, why)
            return False
        state.breaker.release_trial()
        if error.code in REFUSES_US:
            state.set_aside(why)
            log.error("request %s: %s refuses this model, set aside: %s", rid, state.address,
                      why)
            return False
        state.refused_request(why)
        return True

    async def fall_back(self, p: Prepared, why: str, code: str) -> Answer:
        """The local tail from the uncompressed crossing tensors (the exact full-model answer),
        or the error when fallback is off or impossible."""
        runner, cut_id = self.session.runner, p.plan.cut_id
        if self.options.fallback != "local" or not runner.can_run_tail(cut_id):
            off = "fallback is 'error'" if self.options.fallback != "local" else \
                f"no tail for cut {cut_id} on the device (export it with the ONNX head)"
            raise unanswered(code, f"request {p.rid}: no edge answered within the "
                                   f"{self.options.deadline_s} s deadline ({why}) and {off}")
        log.warning("request %s: running the tail on the device (%s)", p.rid, why)
        outs, took = await self.device.step(runner.run_tail, cut_id, p.crossing)
        self.session.note_local_tail(cut_id, took)
        return Answer(outs, "local", "local fallback", code, device_s=p.device_s + took)

    # -- shadow checks ------------------------------------------------------------------------
    def maybe_shadow(self, p: Prepared, outputs: tuple[Any, ...]) -> None:
        """Every 1/shadow_rate-th edge answer, also run the tail here and record divergence."""
        runner, cut_id = self.session.runner, p.plan.cut_id
        if self.options.shadow_rate <= 0 or not runner.can_run_tail(cut_id):
            return
        self._shadow_credit += self.options.shadow_rate
        if self._shadow_credit < 1.0:
            return
        self._shadow_credit -= 1.0
        if self._shadow_busy:
            self.stats.shadow_skipped()
            return
        self._shadow_busy = True
        task = asyncio.get_running_loop().create_task(self._shadow(cut_id, p.crossing, outputs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, cut_id: int, crossing: tuple[Any, ...],
                      outputs: tuple[Any, ...]) -> None:
        runner = self.session.runner
        try:
            local, _ = await self.device.step(runner.run_tail, cut_id, crossing)
            self.stats.shadow(tuple(runner.to_numpy(o) for o in outputs),
                              tuple(runner.to_numpy(o) for o in local))
        except Exception as exc:  # a shadow check must never hurt the request path
            log.warning("shadow check failed: %s", exc)
        finally:
            self._shadow_busy = False

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def as_serving_error(exc: BaseException, state: EdgeState) -> ServingError:
    """What an ``Edge`` raised, as a ``ServingError`` (anything else is that edge's bug:
    UNKNOWN, logged with its traceback)."""
    if isinstance(exc, ServingError):
        return exc
    log.error("edge %s raised %s; counted as UNKNOWN", state.address, type(exc).__name__,
              exc_info=exc)
    return ServingError(f"{type(exc).__name__}: {exc}", code="UNKNOWN")


def unanswered(code: str, message: str) -> SplitInferError:
    """The error a request raises when nothing answered it: the edge's refusal of the request
    as our exception (InvalidRequest, NotFound, ...), else ``EdgeUnavailable``."""
    error = transport.error_for(code, message)
    return EdgeUnavailable(message) if type(error) is ServingError else error


def _run_full(runner: Runner, cut_id: int, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """The whole model on the device (head and tail of ``cut_id``)."""
    return tuple(runner.run_tail(cut_id, runner.run_head(cut_id, inputs)))


def _decode_all(runner: Runner, outputs: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(runner.decode(o) for o in outputs)
