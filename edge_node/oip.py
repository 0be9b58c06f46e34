"""The Open Inference Protocol on the edge node: ``inference.GRPCInferenceService`` on its port.

KServe's v2 gRPC protocol and Triton's extensions of it (the repository index, the stream), so
tritonclient, KServe's client, perf_analyzer and their dashboards work with the node unchanged.
Every cut of every bundle is an OIP model (``splitinfer.wire.oip_convert`` has the naming and the
tensor forms): the bundle's name serves the whole model, ``<bundle>.cut<ID>`` the tail after cut
ID. A request goes through :meth:`EdgeServicer.infer_call`, the same path as our own protocol's:
the same checks and limits, batching, metrics, drain; the server's interceptor checks the bearer
token, and TLS is the port's.
"""

from __future__ import annotations

import logging
import uuid
from importlib import metadata
from typing import TYPE_CHECKING, AsyncIterator, Callable

import grpc

from splitinfer.core.errors import InvalidRequest, NotFound, SplitInferError
from splitinfer.wire import convert
from splitinfer.wire import oip_convert as oip
from splitinfer.wire.oip import grpc_service_pb2 as pb
from splitinfer.wire.oip import grpc_service_pb2_grpc

from .runtime import LoadedModel, ModelRepository
from .servicer import EdgeServicer, ordered_stream, status_of

if TYPE_CHECKING:
    from typing import Any, TypeAlias

    _Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

#: ServerMetadata.extensions: the KServe v2 / Triton extensions this node implements
EXTENSIONS = ("model_repository", "parameters", "binary_tensor_data", "streaming")
SERVICE_NAME = "inference.GRPCInferenceService"


def _version() -> str:
    try:
        return metadata.version("splitinfer")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


class OipServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """ServerLive/Ready/Metadata, ModelReady/Metadata, ModelInfer, ModelStreamInfer and
    RepositoryIndex over the node's repository and its ``EdgeServicer``."""

    def __init__(self, repo: ModelRepository, core: EdgeServicer,
                 server_ready: Callable[[], bool]) -> None:
        self.repo = repo
        self.core = core
        self.server_ready = server_ready
        self.version = _version()

    # -- names --------------------------------------------------------------------------------
    def resolve(self, name: str, version: str) -> tuple[LoadedModel, int]:
        """The bundle and cut an OIP model name stands for (NotFound names what exists)."""
        if not name:
            raise InvalidRequest("the model name is empty; name a bundle (the whole model) or "
                                 "<bundle>.cut<ID> (the tail after cut ID)")
        bundle, cut_id = name, 0
        if not self.repo.versions(name):  # a bundle's own name is never read as a cut
            bundle, cut_id = oip.parse_model_name(name)
        if not self.repo.versions(bundle):
            served = sorted({m.name for m in self.repo.all()})
            raise NotFound(f"unknown model {name!r}: this node serves the bundles "
                           f"{served or 'none'}; OIP names are <bundle> for the whole model and "
                           "<bundle>.cut<ID> for the tail after cut ID (RepositoryIndex lists "
                           "them all)")
        try:
            model = self.repo.get(bundle, version)
            model.cut(cut_id)
        except NotFound as exc:  # no such version, or no such cut: the repository says which
            raise NotFound(f"model {name!r}: {exc}") from None
        return model, cut_id

    def _model_ready(self, model: LoadedModel) -> bool:
        return not self.core.draining and (model.profiled.is_set()
                                           or not self.core.config.wait_for_profile)

    # -- health and metadata ------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: _Context
                         ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: _Context
                          ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server_ready() and not self.core.draining)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: _Context
                             ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="splitinfer", version=self.version,
                                         extensions=list(EXTENSIONS))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: _Context
                         ) -> pb.ModelReadyResponse:
        try:
            model, _ = self.resolve(request.name, request.version)
        except NotFound:  # as Triton and KServe answer: not ready, not an error
            return pb.ModelReadyResponse(ready=False)
        except SplitInferError as exc:
            await context.abort(*status_of(exc))
            raise
        return pb.ModelReadyResponse(ready=self._model_ready(model))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: _Context
                            ) -> pb.ModelMetadataResponse:
        try:
            model, cut_id = self.resolve(request.name, request.version)
        except Exception as exc:
            await context.abort(*status_of(exc))
            raise
        cut = model.cut(cut_id)
        return oip.build_model_metadata(request.name, self.repo.versions(model.name),
                                        cut.tensors, model.split.output_specs)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: _Context
                              ) -> pb.RepositoryIndexResponse:
        reply = pb.RepositoryIndexResponse()
        for model in sorted(self.repo.all(), key=lambda m: (m.name, m.version)):
            ready = self._model_ready(model)
            if request.ready and not ready:
                continue
            reason = "" if ready else ("draining" if self.core.draining
                                       else "profiling its tails")
            for cut in model.cuts:
                reply.models.add(name=oip.model_name(model.name, cut.id), version=model.version,
                                 state="READY" if ready else "UNAVAILABLE", reason=reason)
        return reply

    # -- inference ----------------------------------------------------------------------------
    async def _infer(self, request: pb.ModelInferRequest, context: _Context
                     ) -> pb.ModelInferResponse:
        self.core.check_open()
        try:
            model, cut_id = self.resolve(request.model_name, request.model_version)
        except NotFound:  # counted as our protocol counts it: one label for unknown names
            self.core.metrics.observe_request("(unknown)", "", 0, "NOT_FOUND")
            raise
        cut = model.cut(cut_id)
        specs = {t.name: t for t in cut.tensors}
        call = oip.parse_infer_request(request, specs, [t.name for t in cut.tensors])
        outputs = model.split.output_specs
        known = {s.name for s in outputs}
        unknown = [n for n in call.outputs if n not in known]
        if unknown:
            raise InvalidRequest(f"model {request.model_name!r} has no output(s) {unknown}; "
                                 f"its outputs are {[s.name for s in outputs]}")
        answer = await self.core.infer_call(
            convert.InferCall(request_id=call.request_id, model=model.name,
                              version=model.version, fingerprint=call.fingerprint,
                              cut_id=cut_id, tensors=call.tensors, output_codec="raw"),
            context.time_remaining(), fingerprint_required=False)
        chosen = answer.outputs if not call.outputs else \
            tuple(e for e in answer.outputs if e.name in call.outputs)
        return oip.build_infer_response(request.model_name, answer.version,
                                        call.request_id or uuid.uuid4().hex, chosen,
                                        answer.timing)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: _Context
                         ) -> pb.ModelInferResponse:
        self.core.metrics.in_flight.inc()
        try:
            return await self._infer(request, context)
        except Exception as exc:
            code, message = status_of(exc)
            log.info("OIP infer refused: %s", message,
                     extra={"request_id": request.id, "model": request.model_name,
                            "model_version": request.model_version, "status": code.name})
            await context.abort(code, message)
            raise  # abort raises; this line is for type checkers
        finally:
            self.core.metrics.in_flight.dec()

    async def _stream_item(self, request: pb.ModelInferRequest, context: _Context
                           ) -> pb.ModelStreamInferResponse:
        self.core.metrics.in_flight.inc()
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
        except Exception as exc:  # Triton's convention: the error in the item, the stream on
            code, message = status_of(exc)
            log.info("OIP stream item refused: %s", message,
                     extra={"request_id": request.id, "model": request.model_name,
                            "status": code.name})
            return pb.ModelStreamInferResponse(
                error_message=f"[{code.name}] {message}",
                infer_response=pb.ModelInferResponse(model_name=request.model_name,
                                                     model_version=request.model_version,
                                                     id=request.id))
        finally:
            self.core.metrics.in_flight.dec()

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context: _Context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answers in request order (up to ``STREAM_WINDOW`` at once), a failed request as its
        ``error_message`` ("[CODE] message"); the stream goes on."""
        async for reply in ordered_stream(request_iterator,
                                          lambda r: self._stream_item(r, context)):
            yield reply
