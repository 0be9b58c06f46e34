"""Build, start and stop the edge node: gRPC server, health, reflection, auth, TLS, metrics.

``EdgeNode(config)`` owns the parts; ``await node.start()`` loads the model repository (a bad
bundle at start is fatal), binds the port and starts serving; ``await node.stop()`` drains:
health goes NOT_SERVING, new RPCs are refused, in-flight ones get ``grace_period_s`` to finish.
Flag parsing and signal handling live in ``__main__``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from splitinfer import transport
from splitinfer.core.errors import SplitInferError
from splitinfer.wire.oip import grpc_service_pb2_grpc as oip_pb2_grpc
from splitinfer.wire.v1 import service_pb2, service_pb2_grpc

from .batcher import Batcher
from .config import EdgeConfig
from .metrics import EdgeMetrics
from .oip import OipServicer
from .runtime import LoadedModel, ModelRepository
from .servicer import EdgeServicer, make_run

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_OPEN_METHODS = ("/grpc.health.v1.Health/",)


class StartupError(SplitInferError):
    """The node cannot start: bad flags' files, an unloadable model repository, a busy port."""


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read {what} {path}: {exc.strerror}") from exc


class TokenAuth(grpc.aio.ServerInterceptor):
    """Every RPC but health must carry ``authorization: Bearer <token>`` (constant-time check)."""

    def __init__(self, token: bytes) -> None:
        self._token = token

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_OPEN_METHODS):
            return handler
        given = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
        if given.startswith(b"Bearer ") and hmac.compare_digest(given[7:], self._token):
            return handler
        why = "missing bearer token" if not given else "wrong bearer token"
        return _deny(handler, f"{why}: send metadata 'authorization: Bearer <token>' with the "
                              "token from the edge node's --token-file")


def _deny(handler: Any, message: str) -> Any:
    """A handler of the same kind as ``handler`` that refuses with UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        # the yield only makes this an async generator (the kind a streaming handler needs)
        yield  # type: ignore[unreachable]  # pragma: no cover

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler,
             (True, True): grpc.stream_stream_rpc_method_handler}
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    body = refuse_stream if handler.response_streaming else refuse
    return make(body, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class EdgeNode:
    """The whole edge node process, minus flag parsing and signals."""

    def __init__(self, config: EdgeConfig, metrics: EdgeMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or EdgeMetrics()
        self.repo = ModelRepository(config.model_repository, device=config.device,
                                    cache_size=config.tail_cache_size)
        self.batcher = Batcher(make_run(self.repo, config.device), workers=config.workers,
                               max_batch_size=config.max_batch_size,
                               max_queue_delay_s=config.max_queue_delay_ms / 1000.0,
                               max_queue=config.max_queue, on_batch=self._on_batch)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = 0
        self.health_port = 0
        self._health_server: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.servicer: EdgeServicer | None = None
        #: every model loaded and (with --wait-for-profile) profiled: health "" is SERVING
        self.ready = False
        # gauges read live values at scrape time, so they are never stale between batches
        self.metrics.queue_depth.set_function(lambda: self.batcher.queue_depth)

    def _on_batch(self, key: Any, rows: int, compute_s: float) -> None:
        self.metrics.observe_batch(key[0], rows)

    # -- start --------------------------------------------------------------------------------
    def _credentials(self) -> grpc.ServerCredentials | None:
        cfg = self.config
        if not cfg.tls_cert:
            return None
        cert, key = _read(cfg.tls_cert, "--tls-cert"), _read(cfg.tls_key, "--tls-key")
        ca = _read(cfg.tls_client_ca, "--tls-client-ca")
        if cert is None or key is None:  # EdgeConfig refuses one without the other
            raise StartupError("--tls-cert and --tls-key go together: give both")
        return transport.server_credentials(cert, key, ca)

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        token = _read(self.config.token_file, "--token-file")
        if token is None:
            return []
        token = token.strip()
        if not token:
            raise StartupError(f"--token-file {self.config.token_file} is empty")
        return [TokenAuth(token)]

    async def start(self) -> int:
        """Load models (fatal on error), bind, serve. Returns the gRPC port."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        try:
            models = await loop.run_in_executor(None, self.repo.load_all)
        except SplitInferError as exc:
            raise StartupError(f"cannot load the model repository: {exc}") from exc
        server = grpc.aio.server(interceptors=self._interceptors(), options=transport.server_options(
            cfg.max_message_bytes, max_connection_age_s=cfg.max_connection_age_s,
            max_connection_age_grace_s=cfg.max_connection_age_grace_s,
            keepalive_time_s=cfg.keepalive_time_s, keepalive_timeout_s=cfg.keepalive_timeout_s))
        self.servicer = EdgeServicer(self.repo, self.batcher, cfg, self.metrics)
        service_pb2_grpc.add_EdgeInferenceServicer_to_server(self.servicer, server)
        # the Open Inference Protocol on the same port (same token, TLS, limits, batcher)
        oip_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            OipServicer(self.repo, self.servicer, lambda: self.ready), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (service_pb2.DESCRIPTOR.services_by_name["EdgeInference"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        creds = self._credentials()
        try:
            self.port = (server.add_secure_port(cfg.listen, creds) if creds
                         else server.add_insecure_port(cfg.listen))
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {cfg.listen}: {exc}") from exc
        await server.start()
        self.server = server
        if cfg.health_port:
            await self._start_health_server(cfg.listen.rpartition(":")[0], cfg.health_port)
        if cfg.metrics_port:
            try:
                self._metrics_http, self.metrics_port = self.metrics.serve(cfg.metrics_port)
            except OSError as exc:  # a busy port is a start failure, not a traceback
                raise StartupError(f"cannot serve metrics on --metrics-port {cfg.metrics_port}:"
                                   f" {exc.strerror or exc}; free the port or pick another"
                                   ) from exc
        await self.health.set("", NOT_SERVING)
        for model in models:
            await self._admit(model)
        if cfg.rescan_interval_s > 0:
            self._tasks.append(asyncio.ensure_future(self._rescan_loop()))
        self._tasks.append(asyncio.ensure_future(self._ready_when_profiled(models)))
        log.info("edge node listening on port %d (%s), %d model version(s)", self.port,
                 "TLS" if creds else "plaintext", len(models))
        return self.port

    async def _start_health_server(self, host: str, port: int) -> None:
        """The probes' port: plaintext, no token, grpc.health.v1 only, the same statuses."""
        server = grpc.aio.server(options=transport.server_options())
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            self.health_port = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on --health-port {port} ({host}): {exc}; free "
                               f"the port or pick another") from exc
        await server.start()
        self._health_server = server

    async def _admit(self, model: LoadedModel) -> None:
        """Start serving a loaded model: metrics, profiling, per-model health."""
        self.metrics.model_load_seconds.labels(model.name, model.version).set(model.load_time_s)
        self.metrics.models_loaded.set(len(self.repo.all()))
        if self.config.profile_tails:
            threading.Thread(target=self.repo.profile,
                             args=(model, self.config.profile_repeats),
                             name=f"profile-{model.name}", daemon=True).start()
        else:
            model.profiled.set()
        if not self.config.wait_for_profile:
            await self.health.set(model.name, SERVING)
        else:
            self._tasks.append(asyncio.ensure_future(self._serve_when_profiled(model)))

    async def _serve_when_profiled(self, model: LoadedModel) -> None:
        await asyncio.get_running_loop().run_in_executor(None, model.profiled.wait)
        if not self._stopping:
            await self.health.set(model.name, SERVING)

    async def _ready_when_profiled(self, models: list[LoadedModel]) -> None:
        if self.config.wait_for_profile:
            loop = asyncio.get_running_loop()
            for model in models:
                await loop.run_in_executor(None, model.profiled.wait)
        if not self._stopping:
            self.ready = True
            await self.health.set("", SERVING)
            log.info("edge node ready")

    async def _rescan_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await asyncio.sleep(self.config.rescan_interval_s)
            try:
                new = await loop.run_in_executor(None, self.repo.rescan)
            except Exception as exc:  # e.g. the repository is being swapped: try next time
                log.warning("rescanning %s failed: %s", self.config.model_repository, exc)
                continue
            for model in new:
                log.info("loaded new bundle %s v%s", model.name, model.version,
                         extra={"model": model.name, "model_version": model.version})
                await self._admit(model)

    # -- stop ---------------------------------------------------------------------------------
    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new RPCs, let in-flight ones finish within the grace."""
        if self._stopping:
            return
        self._stopping = True
        if self.servicer is not None:
            self.servicer.draining = True
        grace = self.config.grace_period_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        if self.server is not None:
            await self.server.stop(grace)
        await asyncio.get_running_loop().run_in_executor(None, self.batcher.close)
        if self._health_server is not None:  # the last to go: probes see NOT_SERVING till then
            await self._health_server.stop(0)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        log.info("edge node stopped")

    async def wait_for_termination(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()
