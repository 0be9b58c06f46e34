"""The client's one I/O seam, ``Edge``, its gRPC implementation, and what the client knows of
each edge (circuit breaker, counters, the model version it serves us).

``Edge`` is everything the client asks of an edge node: ``infer``, ``infer_stream``,
``model_info``, ``probe``. Each call carries the edge's metadata (the bearer token) and a
deadline, and failures come back as our exceptions (``splitinfer.transport.error_for``: a
``ServingError`` whose ``code`` names the gRPC status), never as gRPC errors. Nothing else in
the client touches a stub or grpc, so a fake edge with the same four methods (a test's
``MockTransport``) drives failover, breakers and re-planning without a network: pass it in
``edges=`` instead of an address.

``GrpcEdge`` is the real one: one ``grpc.aio`` channel per address from
``splitinfer.transport.open_channel`` (TLS, token, message limits, ``round_robin`` with
client-side health checking over every address a name resolves to). ``EdgeState`` wraps an
``Edge`` with its breaker and counters; ``EdgePool`` rotates requests over the usable ones.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import grpc
import grpc.aio

from splitinfer import transport
from splitinfer.core.errors import ServingError
from splitinfer.wire import convert
from splitinfer.wire.v1 import inference_pb2, model_pb2, probe_pb2, service_pb2_grpc

from .breaker import CLOSED, OPEN, BreakerPolicy, CircuitBreaker

if TYPE_CHECKING:
    from splitinfer.transport import TLS

__all__ = ["Edge", "EdgeStream", "GrpcEdge", "EdgeState", "EdgePool", "edge_error"]


class EdgeStream(Protocol):
    """One ``InferStream`` call: requests go in, answers come back in request order."""

    async def write(self, request: inference_pb2.InferRequest) -> None:
        """Send one request; raises ``ServingError`` when the stream is broken."""

    async def read(self) -> inference_pb2.InferResponse | None:
        """The next answer, or None when the edge ended the stream; ``ServingError`` when the
        call failed."""

    async def done_writing(self) -> None:
        """No more requests (the edge ends the stream after the last answer)."""

    def cancel(self) -> None:
        """Abandon the call now."""


@runtime_checkable
class Edge(Protocol):
    """An edge node as the client sees it. ``address`` names it in stats and messages."""

    address: str

    async def infer(self, request: inference_pb2.InferRequest, timeout: float
                    ) -> inference_pb2.InferResponse:
        """One ``Infer`` within ``timeout`` seconds."""

    def infer_stream(self) -> EdgeStream:
        """Open one ``InferStream`` call."""

    async def model_info(self, model: str, version: str, timeout: float) -> convert.ModelInfo:
        """``GetModelInfo`` for ``model`` (``version=""``: the newest it serves)."""

    async def probe(self, size: int, timeout: float) -> float:
        """Network seconds of one ``Probe`` echo of ``size`` bytes (the round trip minus the
        edge's own time)."""

    async def close(self) -> None:
        """Release the connection."""


def edge_error(exc: grpc.aio.AioRpcError) -> ServingError:
    """A gRPC failure as our exception (the status table's client side)."""
    return transport.error_for(exc.code(), exc.details() or exc.code().name)


class GrpcEdge:
    """An ``Edge`` over gRPC: one channel to ``address`` (made on the running event loop)."""

    def __init__(self, address: str, *, tls: TLS | None = None, token: str | None = None,
                 max_message_bytes: int = transport.MAX_MESSAGE_BYTES) -> None:
        self.address = address
        self._conn = transport.open_channel(address, tls=tls, token=token,
                                            max_message_bytes=max_message_bytes)
        self._stub = service_pb2_grpc.EdgeInferenceStub(self._conn.channel)

    async def infer(self, request: inference_pb2.InferRequest, timeout: float
                    ) -> inference_pb2.InferResponse:
        try:
            reply: inference_pb2.InferResponse = await self._stub.Infer(
                request, timeout=timeout, metadata=self._conn.metadata)
        except grpc.aio.AioRpcError as exc:
            raise edge_error(exc) from None
        return reply

    def infer_stream(self) -> EdgeStream:
        return _GrpcStream(self._stub.InferStream(metadata=self._conn.metadata))

    async def model_info(self, model: str, version: str, timeout: float) -> convert.ModelInfo:
        try:
            reply = await self._stub.GetModelInfo(
                model_pb2.ModelInfoRequest(model=model, version=version), timeout=timeout,
                metadata=self._conn.metadata)
        except grpc.aio.AioRpcError as exc:
            raise edge_error(exc) from None
        return convert.parse_model_info(reply)

    async def probe(self, size: int, timeout: float) -> float:
        request = probe_pb2.ProbeRequest(probe_id=uuid.uuid4().hex, payload=bytes(size),
                                         response_bytes=0)
        start = time.perf_counter()
        try:
            reply = await self._stub.Probe(request, timeout=timeout, metadata=self._conn.metadata)
        except grpc.aio.AioRpcError as exc:
            raise edge_error(exc) from None
        return max(time.perf_counter() - start - float(reply.server_s), 0.0)

    async def close(self) -> None:
        await self._conn.channel.close(grace=None)

    def __repr__(self) -> str:
        return f"GrpcEdge({self.address!r})"


class _GrpcStream:
    """``EdgeStream`` over one grpc.aio stream-stream call."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def write(self, request: inference_pb2.InferRequest) -> None:
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as exc:
            raise edge_error(exc) from None
        except (RuntimeError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            # written after the call ended (the replica drained, the connection aged out)
            raise ServingError(f"stream write failed ({exc})", code="UNAVAILABLE") from None

    async def read(self) -> inference_pb2.InferResponse | None:
        try:
            reply = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise edge_error(exc) from None
        return None if reply is grpc.aio.EOF else reply

    async def done_writing(self) -> None:
        try:
            await self._call.done_writing()
        except grpc.aio.AioRpcError as exc:
            raise edge_error(exc) from None

    def cancel(self) -> None:
        self._call.cancel()


class EdgeState:
    """One edge, as the client tracks it: the ``Edge``, its breaker and its counters."""

    def __init__(self, edge: Edge, breaker: BreakerPolicy) -> None:
        self.edge = edge
        self.address = edge.address
        self.breaker = CircuitBreaker(breaker)
        self.version = ""             # the model version whose fingerprint matches ours
        self.requests = self.ok = self.failures = 0
        self.last_error = ""
        self.incompatible = ""        # set when the edge refused our model (re-checked later)
        self.info: convert.ModelInfo | None = None  # its last GetModelInfo for our version

    def usable(self) -> bool:
        """May a request go here now? (Takes the half-open trial slot when it says yes.)"""
        return not self.incompatible and self.breaker.allow()

    def usable_soon(self) -> bool:
        """Would ``usable`` say yes, without taking a trial slot?"""
        return not self.incompatible and bool(self.version) and self.breaker.state == CLOSED

    def failed(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        self.breaker.record_failure()

    def set_aside(self, why: str) -> None:
        """The edge refuses our model (fingerprint, version, token): no more requests until
        the client re-checks it with GetModelInfo."""
        self.incompatible = self.last_error = why
        self.failures += 1

    def serves(self, info: convert.ModelInfo) -> None:
        """The edge serves our model as ``info``: use that version, take it back in."""
        self.version, self.incompatible, self.info = info.version, "", info

    def succeeded(self) -> None:
        self.ok += 1
        self.breaker.record_success()

    def sending(self) -> None:
        """A request goes to this edge now."""
        self.requests += 1

    def refused_request(self, why: str) -> None:
        """The edge refused the request itself (INVALID_ARGUMENT...): nothing wrong with the
        edge, but say what happened."""
        self.last_error = why

    def __repr__(self) -> str:
        return f"EdgeState({self.address!r}, breaker={self.breaker.state})"


class EdgePool:
    """The edges given, in order; ``pick`` rotates over the usable ones."""

    def __init__(self, edges: Sequence[Edge], breaker: BreakerPolicy) -> None:
        # the clients check the list (options.edge_list: no address twice) before they connect
        self.states = [EdgeState(e, breaker) for e in edges]
        self._next = 0

    def pick(self, exclude: set[EdgeState] | frozenset[EdgeState] = frozenset()
             ) -> EdgeState | None:
        """The next usable edge not in ``exclude`` (round robin), or None."""
        n = len(self.states)
        for i in range(n):
            state = self.states[(self._next + i) % n]
            if state not in exclude and state.usable():
                self._next = (self._next + i + 1) % n
                return state
        return None

    def primary(self) -> EdgeState | None:
        """The first edge that serves our model (its profile drives planning)."""
        return next((s for s in self.states if not s.incompatible and s.version), None)

    def reachable(self) -> EdgeState | None:
        """The first edge that serves our model and whose circuit is not open."""
        return next((s for s in self.states if not s.incompatible and s.version
                     and s.breaker.state != OPEN), None)

    def any_usable_soon(self, exclude: set[EdgeState]) -> bool:
        return any(s not in exclude and s.usable_soon() for s in self.states)

    async def close(self) -> None:
        for state in self.states:
            await state.edge.close()

