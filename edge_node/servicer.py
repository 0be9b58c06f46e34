"""The gRPC methods of the edge node: convert, check, call the core, convert back.

Each RPC does four things: parse the message (``splitinfer.wire.convert``), check it against
the served model, hand decoded tensors to the batcher, encode the answer. Errors become status
codes in exactly one place, :func:`status_of`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import grpc
import torch

from splitinfer import transport
from splitinfer.codec import EncodedTensor, Limits, get_codec, list_codecs
from splitinfer.codec import check as check_encoded
from splitinfer.core.errors import FingerprintMismatch, InvalidRequest, NotFound, ShuttingDown
from splitinfer.core.timing import StageTiming
from splitinfer.model.tensors import decode_torch
from splitinfer.wire import convert
from splitinfer.wire.v1 import inference_pb2, model_pb2, probe_pb2, service_pb2_grpc

from .batcher import Batcher, BatchResult, RunFn
from .config import EdgeConfig
from .metrics import EdgeMetrics
from .runtime import ModelRepository

log = logging.getLogger(__name__)

#: most requests one InferStream keeps in progress before it stops reading more
STREAM_WINDOW = 64

Req = TypeVar("Req")
Rep = TypeVar("Rep")


@dataclass(frozen=True)
class InferAnswer:
    """What one request got: the model version that ran, its encoded outputs, the stage times."""

    model: str
    version: str
    outputs: tuple[EncodedTensor, ...]
    timing: StageTiming

if TYPE_CHECKING:  # grpc's classes are not generic at run time
    from typing import TypeAlias

    _InferContext: TypeAlias = grpc.aio.ServicerContext[inference_pb2.InferRequest,
                                                        inference_pb2.InferResponse]


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """``splitinfer.transport.status_of`` (the one status table), logging what is not ours."""
    code, message = transport.status_of(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error: %s", exc, exc_info=exc)
    return code, message


class EdgeServicer(service_pb2_grpc.EdgeInferenceServicer):
    """Infer, InferStream, GetModelInfo and Probe over a model repository and a batcher."""

    def __init__(self, repo: ModelRepository, batcher: Batcher, config: EdgeConfig,
                 metrics: EdgeMetrics) -> None:
        self.repo = repo
        self.batcher = batcher
        self.config = config
        self.metrics = metrics
        self.limits = Limits(max_elements=config.max_tensor_elements,
                             max_bytes=config.max_tensor_bytes)
        get_codec(config.output_codec)  # fail at start on a bad --output-codec
        #: set when the node starts draining: new requests get UNAVAILABLE from here on, so a
        #: client never sees the CANCELLED that a call racing the server's own stop can get
        self.draining = False

    def check_open(self) -> None:
        """Raise ShuttingDown once the node drains (UNAVAILABLE: the client retries elsewhere)."""
        if self.draining:
            raise ShuttingDown(f"{ShuttingDown.PREFIX} and takes no new requests; retry on "
                               "another node")

    # -- Infer --------------------------------------------------------------------------------
    async def infer_call(self, call: convert.InferCall, time_remaining: float | None, *,
                         fingerprint_required: bool = True) -> InferAnswer:
        """One parsed request, from any protocol: check, batch, run, encode; counted in the
        metrics. ``fingerprint_required=False``: an empty ``call.fingerprint`` is not checked
        (the Open Inference Protocol's is optional)."""
        t0 = time.perf_counter()
        self.check_open()
        try:
            model = self.repo.get(call.model, call.version)
        except NotFound:
            # counted, but under one label: request-chosen names must not mint new series
            self.metrics.observe_request("(unknown)", "", call.cut_id, "NOT_FOUND")
            raise
        labels = (model.name, model.version, call.cut_id)
        try:
            if (fingerprint_required or call.fingerprint) \
                    and call.fingerprint != model.fingerprint:
                raise FingerprintMismatch(
                    f"request fingerprint {call.fingerprint[:16] or '(none)'}… is not the "
                    f"fingerprint of {model.name} v{model.version} ({model.fingerprint[:16]}…): "
                    "the head was built from another model; reload the bundle")
            cut = model.cut(call.cut_id)
            # checked against what the tensors declare; their payloads are decoded (and
            # checked against that) on the worker, off the event loop
            for e in call.tensors:
                check_encoded(e, self.limits)
            try:
                model.check_inputs(cut.id, call.tensors)
            except InvalidRequest:
                for e in call.tensors:  # a payload that cannot decode says so first, as it
                    decode_torch(e, self.limits)  # always has (an image's own size, ...)
                raise
            for e in call.tensors:
                self.metrics.bytes_in.labels(e.codec).inc(len(e.payload))
            codec = get_codec(call.output_codec or self.config.output_codec)
            specs = model.split.output_specs
            limits = self.limits

            def decode() -> list[torch.Tensor]:
                return [decode_torch(e, limits, copy=False) for e in call.tensors]

            def encode(outputs: tuple[torch.Tensor, ...]) -> list[EncodedTensor]:
                return [codec.encode(t, name=spec.name) for t, spec in zip(outputs, specs)]

            deadline = time.monotonic() + time_remaining if time_remaining is not None else None
            first = call.tensors[0].shape
            rows = int(first[0]) if first else 1
            key = (model.name, model.version, cut.id,
                   tuple((tuple(e.shape[1:]), e.dtype) for e in call.tensors))
            t1 = time.perf_counter()
            result: BatchResult = await asyncio.wrap_future(
                self.batcher.submit(key, decode, rows, deadline, finish=encode))
            outputs: list[EncodedTensor] = result.answer
            for e in outputs:
                self.metrics.bytes_out.labels(e.codec).inc(len(e.payload))
            timing = StageTiming(queue_s=result.queue_s,
                                 decode_s=(t1 - t0) + result.decode_s,
                                 compute_s=result.compute_s, encode_s=result.encode_s)
        except Exception as exc:
            self.metrics.observe_request(*labels, status_of(exc)[0].name)
            raise
        self.metrics.observe_request(*labels, "OK", timing)
        log.debug("infer ok", extra={"request_id": call.request_id, "model": model.name,
                                     "model_version": model.version, "cut": cut.id,
                                     "batch_rows": result.batch_rows})
        return InferAnswer(model.name, model.version, tuple(outputs), timing)

    async def _infer(self, request: inference_pb2.InferRequest,
                     context: _InferContext) -> inference_pb2.InferResponse:
        self.check_open()  # before parsing: a draining node refuses whatever it is sent
        call = convert.parse_infer_request(request)
        request_id = call.request_id or uuid.uuid4().hex
        answer = await self.infer_call(call, context.time_remaining())
        return convert.build_infer_response(request_id=request_id, outputs=answer.outputs,
                                            timing=answer.timing, version=answer.version)

    async def Infer(self, request: inference_pb2.InferRequest,
                    context: _InferContext) -> inference_pb2.InferResponse:
        self.metrics.in_flight.inc()
        try:
            return await self._infer(request, context)
        except Exception as exc:
            code, message = status_of(exc)
            log.info("infer refused: %s", message,
                     extra={"request_id": request.request_id, "model": request.model,
                            "model_version": request.version, "status": code.name})
            await context.abort(code, message)
            raise  # abort raises; this line is for type checkers
        finally:
            self.metrics.in_flight.dec()

    # -- InferStream --------------------------------------------------------------------------
    async def _stream_item(self, request: inference_pb2.InferRequest,
                           context: _InferContext) -> inference_pb2.InferResponse:
        self.metrics.in_flight.inc()
        try:
            return await self._infer(request, context)
        except Exception as exc:  # one bad frame answers with its error; the stream goes on
            code, message = status_of(exc)
            log.info("stream item refused: %s", message,
                     extra={"request_id": request.request_id, "model": request.model,
                            "status": code.name})
            return convert.build_error_response(request_id=request.request_id,
                                                code=code.value[0], message=message)
        finally:
            self.metrics.in_flight.dec()

    async def InferStream(self, request_iterator: AsyncIterator[inference_pb2.InferRequest],
                          context: _InferContext
                          ) -> AsyncIterator[inference_pb2.InferResponse]:
        """Answers in request order; up to STREAM_WINDOW requests are worked on at once."""
        async for reply in ordered_stream(request_iterator,
                                          lambda r: self._stream_item(r, context)):
            yield reply

    # -- GetModelInfo and Probe ---------------------------------------------------------------
    async def GetModelInfo(self, request: model_pb2.ModelInfoRequest,
                           context: grpc.aio.ServicerContext[model_pb2.ModelInfoRequest,
                                                             model_pb2.ModelInfoResponse]
                           ) -> model_pb2.ModelInfoResponse:
        try:
            model = self.repo.get(request.model, request.version)
            sm = model.split
            info = convert.ModelInfo(
                model=model.name, version=model.version, fingerprint=model.fingerprint,
                cuts=tuple(model.cuts), inputs=tuple(sm.input_specs),
                outputs=tuple(sm.output_specs), versions=tuple(self.repo.versions(model.name)),
                tail_latency_s=dict(model.tail_latency_s),
                queue_delay_s=self.batcher.queue_delay_s, codecs=tuple(list_codecs()))
            return convert.build_model_info(info)
        except Exception as exc:
            await context.abort(*status_of(exc))
            raise

    async def Probe(self, request: probe_pb2.ProbeRequest,
                    context: grpc.aio.ServicerContext[probe_pb2.ProbeRequest,
                                                      probe_pb2.ProbeResponse]
                    ) -> probe_pb2.ProbeResponse:
        start = time.perf_counter()
        if not 0 <= request.response_bytes <= self.config.max_probe_bytes:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Probe.response_bytes {request.response_bytes} is outside "
                                f"0..{self.config.max_probe_bytes} (--max-probe-bytes)")
        self.metrics.probe_bytes.inc(len(request.payload) + request.response_bytes)
        return probe_pb2.ProbeResponse(probe_id=request.probe_id,
                                       payload=bytes(request.response_bytes),
                                       received_bytes=len(request.payload),
                                       server_s=time.perf_counter() - start)


async def ordered_stream(requests: AsyncIterator[Req],
                         handle: Callable[[Req], Awaitable[Rep]]) -> AsyncIterator[Rep]:
    """``handle(request)`` for each request, answered in request order, up to STREAM_WINDOW of
    them at once (the reading stops while the window is full). ``handle`` never raises for one
    request's fault: it answers with the error (a stream goes on after a bad frame)."""
    pending: asyncio.Queue[Any] = asyncio.Queue(maxsize=STREAM_WINDOW)
    done = object()

    async def read() -> None:
        async for request in requests:
            await pending.put(asyncio.ensure_future(handle(request)))
        await pending.put(done)

    reader = asyncio.ensure_future(read())
    try:
        while True:
            getter = asyncio.ensure_future(pending.get())
            await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():  # the reader ended (or failed) with nothing queued
                getter.cancel()
                reader.result()
                if pending.empty():
                    return
                getter = asyncio.ensure_future(pending.get())
            item = await getter
            if item is done:
                return
            yield await item
    finally:
        reader.cancel()


def make_run(repo: ModelRepository, device: str) -> RunFn:
    """The batcher's compute function: look up the tail, run it (on ``device``), return CPU."""
    target = torch.device(device)

    def run(key: Any, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        name, version, cut_id = key[:3]
        model = repo.get(name, version)
        tail = repo.tails.get(model, cut_id)
        if target.type == "cpu":
            # a lone request's tensors are views of its payload: a tail that may write into
            # its inputs gets copies (a rare graph: torch.export tails never do)
            inputs = [t.clone() for t in tensors] if getattr(tail, "writes_inputs", True) \
                else list(tensors)
        else:
            inputs = [t.to(target, non_blocking=True) for t in tensors]
        with torch.inference_mode():
            out = tail(*inputs)
        out = out if isinstance(out, tuple) else (out,)
        return tuple(o.to("cpu") for o in out)

    return run


