"""``OipEdge``: any Open Inference Protocol server (KServe, Triton, a splitinfer node) as the edge.

``SplitClient(..., protocol="oip")`` makes one per address. It speaks KServe v2 gRPC
(``inference.GRPCInferenceService``) behind the same ``Edge`` seam as ``GrpcEdge``, so planning,
failover, breakers and local fallback work as with our own protocol. The server must serve the
bundle's tails under the OIP names of :mod:`splitinfer.wire.oip_convert` (``<bundle>`` for the
whole model, ``<bundle>.cut<ID>`` for the tail after a cut): a splitinfer edge node does, and
``deploy/kserve/splitinfer_tails.py`` serves the ONNX tails ``splitinfer export --onnx`` writes
on KServe's ModelServer.

What differs from our protocol, and how this edge makes up for it:

- **Which cuts, which version**: ``GetModelInfo`` is the server's RepositoryIndex (Triton's
  extension; a splitinfer node has it), or, where that is UNIMPLEMENTED (KServe), a
  ModelMetadata per cut of the bundle. A cut counts as served only when the server's metadata
  lists exactly the tensors that cross it (names, datatypes, shapes).
- **Fingerprint**: OIP metadata has none. Each request carries the bundle's fingerprint as a
  parameter, which a splitinfer node checks; another server is trusted on the names and tensor
  specs above, and the ``ModelInfo`` this edge reports carries the bundle's own fingerprint.
- **Tail times**: measured here, once per model version, with one zero-filled request of batch
  1 per served cut (dynamic dims taken as 1): the server's own compute time when it reports one
  (a splitinfer node does, in response parameters), else the round trip minus the RTT of a
  ServerLive just before (an upper bound: it includes moving the request's bytes).
- **Probe**: a ServerLive request, its payload carried as an unknown field that every protobuf
  parser skips (so the upload of ``size`` bytes is timed against any OIP server).
- **Codecs**: FP32, FP16, BF16 and UINT8 (int8 codes with scale and zero point); zstd and the
  image codecs have no OIP form (``ClientOptions`` refuses them with ``protocol="oip"``).
- **Streams**: ``infer_stream`` runs unary ModelInfer calls in order (KServe has no stream).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from splitinfer import transport
from splitinfer.codec import EncodedTensor
from splitinfer.core.errors import NotFound, ServingError, WireError
from splitinfer.core.spec import DTYPES, DYNAMIC
from splitinfer.wire import convert
from splitinfer.wire import oip_convert as oip
from splitinfer.wire.oip import grpc_service_pb2 as pb
from splitinfer.wire.oip import grpc_service_pb2_grpc
from splitinfer.wire.v1 import inference_pb2

from .edges import EdgeStream, edge_error

if TYPE_CHECKING:
    from splitinfer.core.spec import Cut, TensorSpec
    from splitinfer.model.manifest import Manifest
    from splitinfer.transport import TLS

__all__ = ["OipEdge", "probe_request"]

log = logging.getLogger(__name__)

#: the ServerLive field number that carries a probe's payload (unknown to every server)
_PROBE_FIELD = 1000
#: most cuts whose tail time is measured concurrently
_MEASURE_CONCURRENCY = 4


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def probe_request(size: int) -> bytes:
    """A serialized ServerLiveRequest carrying ``size`` bytes in an unknown field."""
    if size == 0:
        return b""
    return _varint((_PROBE_FIELD << 3) | 2) + _varint(size) + bytes(size)


def _same_specs(served: tuple[TensorSpec, ...], ours: tuple[TensorSpec, ...]) -> bool:
    return len(served) == len(ours) and all(
        a.name == b.name and a.dtype == b.dtype and a.shape == b.shape
        for a, b in zip(served, ours))


class OipEdge:
    """An ``Edge`` over the Open Inference Protocol (see the module docstring)."""

    def __init__(self, address: str, manifest: Manifest, *, tls: TLS | None = None,
                 token: str | None = None,
                 max_message_bytes: int = transport.MAX_MESSAGE_BYTES) -> None:
        self.address = address
        self.manifest = manifest
        self._conn = transport.open_channel(address, tls=tls, token=token,
                                            max_message_bytes=max_message_bytes)
        self._stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._conn.channel)
        self._live = self._conn.channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=lambda raw: raw,
            response_deserializer=pb.ServerLiveResponse.FromString)
        #: measured tail seconds per (version, cut id): measured once per version
        self._tail_s: dict[str, dict[int, float]] = {}
        #: the server lists no model versions (KServe): requests name none
        self._versionless = False

    # -- the Edge seam ------------------------------------------------------------------------
    async def infer(self, request: inference_pb2.InferRequest, timeout: float
                    ) -> inference_pb2.InferResponse:
        call = convert.parse_infer_request(request)
        message = oip.build_infer_request(oip.model_name(call.model, call.cut_id), call.tensors,
                                          version="" if self._versionless else call.version,
                                          request_id=call.request_id,
                                          fingerprint=call.fingerprint)
        reply = await self._call(self._stub.ModelInfer, message, timeout)
        outputs, timing = oip.parse_infer_response(reply)
        return convert.build_infer_response(request_id=call.request_id, outputs=outputs,
                                            timing=timing,
                                            version=reply.model_version or call.version)

    def infer_stream(self) -> EdgeStream:
        return _UnaryStream(self)

    async def model_info(self, model: str, version: str, timeout: float) -> convert.ModelInfo:
        m = self.manifest
        if model != m.name:
            raise NotFound(f"this OIP edge was made for {m.name}, not {model!r}")
        # a versionless server is asked for no version (ours, by name, is the one it serves)
        ask = "" if self._versionless else version
        served = await self._served_cuts(ask, timeout)
        if not served:
            raise NotFound(
                f"edge {self.address} serves none of {m.name}'s cuts (OIP names {m.name} for "
                f"the whole model, {m.name}.cut<ID> for the tail after a cut, with the tensors "
                f"that cross it{f', version {version}' if version else ''})")
        meta = await self._call(self._stub.ModelMetadata, pb.ModelMetadataRequest(
            name=oip.model_name(m.name, min(served)), version=ask), timeout)
        try:
            _, outputs = oip.parse_model_metadata(meta)
        except WireError as exc:
            raise ServingError(f"edge {self.address}: {exc}", code="FAILED_PRECONDITION"
                               ) from None
        versions = tuple(meta.versions)
        # a server without versions (KServe's ModelServer) serves "the" model: ours, by name
        self._versionless = not versions
        if self._versionless:
            versions = (m.version,)
        chosen = version or max(versions, key=_version_key)
        if chosen not in self._tail_s:
            self._tail_s[chosen] = await self._measure_tails(chosen, sorted(served), timeout)
        return convert.ModelInfo(
            model=m.name, version=chosen, fingerprint=m.fingerprint, cuts=tuple(m.cuts),
            inputs=tuple(m.cuts[0].tensors), outputs=tuple(outputs), versions=versions,
            tail_latency_s=dict(self._tail_s[chosen]), codecs=oip.OIP_CODECS)

    async def probe(self, size: int, timeout: float) -> float:
        start = time.perf_counter()
        await self._call(self._live, probe_request(size), timeout)
        return time.perf_counter() - start

    async def close(self) -> None:
        await self._conn.channel.close(grace=None)

    def __repr__(self) -> str:
        return f"OipEdge({self.address!r})"

    # -- helpers ------------------------------------------------------------------------------
    async def _call(self, method: Any, message: Any, timeout: float) -> Any:
        try:
            return await method(message, timeout=timeout, metadata=self._conn.metadata)
        except grpc.aio.AioRpcError as exc:
            raise edge_error(exc) from None

    async def _served_cuts(self, version: str, timeout: float) -> set[int]:
        """Ids of the bundle's cuts the server serves at ``version`` with our tensor specs."""
        cuts = self.manifest.cuts
        try:
            index = await self._call(self._stub.RepositoryIndex,
                                     pb.RepositoryIndexRequest(ready=True), timeout)
            names = {e.name for e in index.models if not version or e.version == version}
            candidates = [c for c in cuts if oip.model_name(self.manifest.name, c.id) in names]
        except ServingError as exc:
            if exc.code != "UNIMPLEMENTED":
                raise
            candidates = list(cuts)  # KServe: no index; ask each cut's metadata
        checks = await asyncio.gather(*(self._serves(c, version, timeout) for c in candidates))
        return {c.id for c, ok in zip(candidates, checks) if ok}

    async def _serves(self, cut: Cut, version: str, timeout: float) -> bool:
        name = oip.model_name(self.manifest.name, cut.id)
        try:
            meta = await self._call(self._stub.ModelMetadata,
                                    pb.ModelMetadataRequest(name=name, version=version), timeout)
            inputs, _ = oip.parse_model_metadata(meta)
        except NotFound:
            return False
        except WireError as exc:
            log.warning("edge %s: %s: %s", self.address, name, exc)
            return False
        except ServingError as exc:
            if exc.code in ("NOT_FOUND", "UNAVAILABLE") and "not found" in str(exc).lower():
                return False
            raise
        if not _same_specs(inputs, tuple(cut.tensors)):
            log.warning("edge %s serves %s with inputs %s; the bundle's cut %d sends %s: not "
                        "used", self.address, name, [s.to_json() for s in inputs], cut.id,
                        [s.to_json() for s in cut.tensors])
            return False
        return True

    async def _measure_tails(self, version: str, cut_ids: list[int], timeout: float
                             ) -> dict[int, float]:
        """Seconds of each served cut's tail for one zero-filled sample (see the module doc)."""
        if not cut_ids:
            return {}
        limit = asyncio.Semaphore(_MEASURE_CONCURRENCY)
        rtt = await self.probe(0, timeout)

        async def one(cut: Cut) -> float | None:
            tensors = [_zeros(spec) for spec in cut.tensors]
            message = oip.build_infer_request(oip.model_name(self.manifest.name, cut.id),
                                              tensors,
                                              version="" if self._versionless else version,
                                              request_id=uuid.uuid4().hex,
                                              fingerprint=self.manifest.fingerprint)
            best: float | None = None
            async with limit:
                for _ in range(2):  # the first may pay for loading or warming the tail
                    start = time.perf_counter()
                    try:
                        reply = await self._call(self._stub.ModelInfer, message, timeout)
                    except ServingError as exc:
                        log.warning("edge %s: timing cut %d failed: %s", self.address, cut.id,
                                    exc)
                        return None
                    took = time.perf_counter() - start
                    _, timing = oip.parse_infer_response(reply)
                    t = timing.compute_s if timing is not None else max(took - rtt, 0.0)
                    best = t if best is None else min(best, t)
            return best

        cuts = self.manifest.cuts
        times = await asyncio.gather(*(one(cuts[i]) for i in cut_ids))
        return {i: t for i, t in zip(cut_ids, times) if t is not None}


def _zeros(spec: TensorSpec) -> EncodedTensor:
    shape = tuple(1 if d == DYNAMIC else d for d in spec.shape)
    size = math.prod(shape) * DTYPES[spec.dtype]
    return EncodedTensor(name=spec.name, dtype=spec.dtype, shape=shape, codec="raw",
                         payload=bytes(size))


def _version_key(version: str) -> tuple[int, int, str]:
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


class _UnaryStream:
    """``EdgeStream`` as ordered unary ModelInfer calls (OIP servers need not stream)."""

    def __init__(self, edge: OipEdge) -> None:
        self._edge = edge
        self._calls: asyncio.Queue[asyncio.Future[inference_pb2.InferResponse] | None] = \
            asyncio.Queue()
        self._tasks: list[asyncio.Future[Any]] = []

    async def write(self, request: inference_pb2.InferRequest) -> None:
        task = asyncio.ensure_future(self._one(request))
        self._tasks = [t for t in self._tasks if not t.done()] + [task]
        await self._calls.put(task)

    async def _one(self, request: inference_pb2.InferRequest) -> inference_pb2.InferResponse:
        try:
            return await self._edge.infer(request, timeout=3600.0)
        except ServingError as exc:
            if exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"):
                raise  # the call failed: the stream breaks, as a stream call's would
            # the request's own fault: one item's error, the stream goes on
            code = grpc.StatusCode[exc.code].value[0] if exc.code in \
                grpc.StatusCode.__members__ else grpc.StatusCode.UNKNOWN.value[0]
            return convert.build_error_response(request_id=request.request_id, code=code,
                                                message=str(exc))

    async def read(self) -> inference_pb2.InferResponse | None:
        task = await self._calls.get()
        if task is None:
            return None
        return await task

    async def done_writing(self) -> None:
        await self._calls.put(None)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
