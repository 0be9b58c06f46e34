"""Connections to edge nodes: one gRPC channel per address given, with TLS, token and breaker.

Each address gets its own ``grpc.aio`` channel whose load-balancing policy is gRPC's own
``round_robin`` with client-side health checking (``grpc.health.v1``): a DNS name with several
records is spread over all of them and a backend that reports NOT_SERVING (draining) is skipped
by gRPC itself. Across the addresses given, the client rotates requests over the edges whose
circuit breaker is closed (``EdgePool.pick``), so a dead or hung edge stops getting traffic.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import grpc

from splitinfer.wire.v1 import service_pb2_grpc

from .breaker import CLOSED, BreakerPolicy, CircuitBreaker

__all__ = ["TLS", "Edge", "EdgePool", "MAX_MESSAGE_BYTES"]

#: the edge node's default --max-message-bytes
MAX_MESSAGE_BYTES = 64 << 20

_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
})


@dataclass(frozen=True)
class TLS:
    """TLS to the edge: ``ca`` verifies the server (None: the system's roots); ``cert`` and
    ``key`` are the client's own certificate for mutual TLS (the edge's --tls-client-ca);
    ``server_name`` overrides the name checked against the server certificate."""

    ca: str | os.PathLike[str] | None = None
    cert: str | os.PathLike[str] | None = None
    key: str | os.PathLike[str] | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS: cert and key go together (mutual TLS): give both or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "ca"), private_key=_read(self.key, "key"),
            certificate_chain=_read(self.cert, "cert"))


def _read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"TLS {what} file {str(path)!r} cannot be read: {exc.strerror}") from exc


def as_tls(tls: Any) -> TLS | None:
    """``tls`` as given by the caller: None/False, True (system roots), a dict, or a TLS."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return TLS()
    if isinstance(tls, TLS):
        return tls
    if isinstance(tls, dict):
        unknown = set(tls) - {"ca", "cert", "key", "server_name"}
        if unknown:
            raise ValueError(f"tls has unknown keys {sorted(unknown)}; expected ca, cert, key, "
                             f"server_name")
        return TLS(**tls)
    raise ValueError(f"tls is {tls!r}; expected None, True, a dict or device_client.TLS")


class Edge:
    """One edge address: its channel, stub, breaker and counters."""

    def __init__(self, address: str, *, tls: TLS | None, token: str | None,
                 breaker: BreakerPolicy) -> None:
        self.address = address
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.service_config", _SERVICE_CONFIG),
                   ("grpc.enable_retries", 0)]  # retries are the client's call (deadline aware)
        if tls is not None:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self.channel = grpc.aio.secure_channel(address, tls.credentials(), options=options)
        else:
            self.channel = grpc.aio.insecure_channel(address, options=options)
        self.stub = service_pb2_grpc.EdgeInferenceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self.breaker = CircuitBreaker(breaker)
        self.version = ""             # the model version whose fingerprint matches ours
        self.requests = self.ok = self.failures = 0
        self.last_error = ""
        self.incompatible = ""        # set when the edge refused our model (re-checked later)
        self.info: Any = None         # its last GetModelInfo answer for our version

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

    def succeeded(self) -> None:
        self.ok += 1
        self.breaker.record_success()

    async def close(self) -> None:
        await self.channel.close(grace=None)


class EdgePool:
    """The edges given, in order; ``pick`` rotates over the usable ones."""

    def __init__(self, addresses: Sequence[str], **kwargs: Any) -> None:
        self.check(addresses)
        self.edges = [Edge(a, **kwargs) for a in addresses]
        self._next = 0

    @staticmethod
    def check(addresses: Sequence[str]) -> None:
        if not addresses:
            raise ValueError("edges is empty; give at least one 'host:port'")
        for a in addresses:
            if not isinstance(a, str) or not a.strip() or any(ch.isspace() for ch in a):
                raise ValueError(f"edge address {a!r}; expected 'host:port' (or a gRPC target "
                                 f"such as 'dns:///edge.example:50051')")
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"edges lists an address twice: {list(addresses)}")

    def pick(self, exclude: set[Edge] | frozenset[Edge] = frozenset()) -> Edge | None:
        """The next usable edge not in ``exclude`` (round robin), or None."""
        n = len(self.edges)
        for i in range(n):
            edge = self.edges[(self._next + i) % n]
            if edge not in exclude and edge.usable():
                self._next = (self._next + i + 1) % n
                return edge
        return None

    def primary(self) -> Edge | None:
        """The first edge that is not incompatible (its profile drives planning)."""
        return next((e for e in self.edges if not e.incompatible and e.version), None)

    async def close(self) -> None:
        for edge in self.edges:
            await edge.close()
