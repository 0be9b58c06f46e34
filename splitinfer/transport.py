"""gRPC for both ends: the one channel factory, server TLS, and the status table both ways.

grpc lives in this module and above (``edge_node``, ``device_client``, ``splitinfer.tools``);
nothing below it imports grpc (an import-linter contract checks it).

* :func:`open_channel` (asyncio) and :func:`open_blocking_channel` are the only places a client
  channel is made: TLS or mutual TLS (:class:`TLS`), the bearer token (as call metadata the
  connection carries: :attr:`Connection.metadata`), message limits, and the service config —
  gRPC's ``round_robin`` over every address a name resolves to, with client-side health
  checking so a draining backend (NOT_SERVING) is skipped, and gRPC's own retries off (retrying
  is the device client's deadline-aware decision).
* :func:`server_credentials` and :func:`server_options` are the edge node's side of the same.
* The status table: each :class:`~splitinfer.core.errors.ServingError` class names the gRPC
  status it is answered with (its ``code``). :func:`status_of` reads it one way (the edge: an
  exception to a code and message), :func:`error_for` the other (the client: a code and message
  back to our exception). Nowhere else maps the two.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from splitinfer.core.errors import (
    CodecError,
    FingerprintMismatch,
    InvalidRequest,
    NotFound,
    Overloaded,
    PartitionError,
    ServingError,
    ShuttingDown,
    Unauthenticated,
    WireError,
)

__all__ = ["TLS", "as_tls", "Connection", "open_channel", "open_blocking_channel",
           "bearer_metadata", "MAX_MESSAGE_BYTES", "server_credentials", "server_options",
           "status_of", "error_for", "status_code"]

#: the edge node's default --max-message-bytes, and the client's limit both ways
MAX_MESSAGE_BYTES = 64 << 20

Metadata = tuple[tuple[str, str], ...]
C = TypeVar("C", grpc.aio.Channel, grpc.Channel)

_BALANCED_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
})


#: a client channel's side of a fleet behind one name:
#: - keepalive pings find a dead connection while calls are on it (every 30 s, within the
#:   server's MIN_CLIENT_PING_INTERVAL_S). With client-side health checking, each replica's
#:   health watch is such a call, so in practice a ping every 30 s per replica: the price, on a
#:   phone's radio, of giving up a replica lost with its node in about 40 s rather than after
#:   TCP's many minutes. A connection without calls is not pinged.
#: - the name is re-resolved at most once a second (gRPC's default is 30 s: a rolling update
#:   that replaces every pod within 30 s would leave a client with only dead addresses);
#: - a lost replica is retried every 1-10 s rather than gRPC's backoff growing to 120 s.
_FLEET_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.dns_min_time_between_resolutions_ms", 1_000),
    ("grpc.initial_reconnect_backoff_ms", 1_000),
    ("grpc.min_reconnect_backoff_ms", 1_000),
    ("grpc.max_reconnect_backoff_ms", 10_000),
)


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


def as_tls(tls: object) -> TLS | None:
    """``tls`` as a caller gives it: None/False, True (system roots), a dict, or a TLS."""
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
    raise ValueError(f"tls is {tls!r}; expected None, True, a dict or a TLS")


def bearer_metadata(token: str | None) -> Metadata:
    """The call metadata that carries ``token`` (empty without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass(frozen=True)
class Connection(Generic[C]):
    """A channel and the metadata every call on it carries (the bearer token)."""

    target: str
    channel: C
    metadata: Metadata = ()


def _options(tls: TLS | None, max_message_bytes: int, balanced: bool) -> list[tuple[str, Any]]:
    if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) \
            or max_message_bytes < 1:
        raise ValueError(f"max_message_bytes is {max_message_bytes!r}; expected an int >= 1")
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 0),  # retries are the client's call (deadline aware)
        *_FLEET_OPTIONS]
    if balanced:
        options.append(("grpc.service_config", _BALANCED_SERVICE_CONFIG))
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def _check_target(target: object) -> str:
    if not isinstance(target, str) or not target.strip() or any(c.isspace() for c in target):
        raise ValueError(f"edge address {target!r}; expected 'host:port' (or a gRPC target "
                         f"such as 'dns:///edge.example:50051')")
    return target


def open_channel(target: str, *, tls: TLS | None = None, token: str | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, balanced: bool = True
                 ) -> Connection[grpc.aio.Channel]:
    """A ``grpc.aio`` channel to ``target`` (make it on the event loop that will use it).

    ``balanced``: round_robin with client-side health checking over every address ``target``
    resolves to (turn it off for a health check itself: it would hide NOT_SERVING)."""
    options = _options(tls, max_message_bytes, balanced)
    if tls is not None:
        channel = grpc.aio.secure_channel(_check_target(target), tls.credentials(),
                                          options=options)
    else:
        channel = grpc.aio.insecure_channel(_check_target(target), options=options)
    return Connection(target, channel, bearer_metadata(token))


def open_blocking_channel(target: str, *, tls: TLS | None = None, token: str | None = None,
                          max_message_bytes: int = MAX_MESSAGE_BYTES, balanced: bool = True
                          ) -> Connection[grpc.Channel]:
    """The blocking twin of :func:`open_channel` (command-line tools, health checks)."""
    options = _options(tls, max_message_bytes, balanced)
    if tls is not None:
        channel = grpc.secure_channel(_check_target(target), tls.credentials(), options=options)
    else:
        channel = grpc.insecure_channel(_check_target(target), options=options)
    return Connection(target, channel, bearer_metadata(token))


# ---- the server's side ----------------------------------------------------------------------

def server_credentials(cert: bytes, key: bytes, client_ca: bytes | None = None
                       ) -> grpc.ServerCredentials:
    """TLS for the edge node; with ``client_ca``, mutual TLS (clients must present a cert)."""
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


#: the fewest seconds between a client's keepalive pings the server accepts (even without
#: calls); a client pinging more often is sent GOAWAY (too_many_pings) by gRPC
MIN_CLIENT_PING_INTERVAL_S = 10.0


def server_options(max_message_bytes: int = MAX_MESSAGE_BYTES, *,
                   max_connection_age_s: float = 0.0, max_connection_age_grace_s: float = 30.0,
                   keepalive_time_s: float = 60.0, keepalive_timeout_s: float = 20.0
                   ) -> list[tuple[str, Any]]:
    """Channel arguments of the edge node's gRPC server.

    ``max_connection_age_s`` > 0: a connection older than that (gRPC adds +-10 % jitter) is
    sent GOAWAY; its calls get ``max_connection_age_grace_s`` to finish. Clients then reconnect
    and re-resolve their target, so devices connected before a scale-up reach new replicas.
    ``keepalive_time_s``: the server pings a connection idle that long and drops it when the
    ping is not acked within ``keepalive_timeout_s`` (a phone that lost coverage). Clients may
    ping every :data:`MIN_CLIENT_PING_INTERVAL_S` seconds, with or without calls.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", _ms(keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", _ms(keepalive_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(MIN_CLIENT_PING_INTERVAL_S)),
        ("grpc.http2.max_pings_without_data", 0)]  # 0: any number of pings between data
    if max_connection_age_s > 0:
        options += [("grpc.max_connection_age_ms", _ms(max_connection_age_s)),
                    ("grpc.max_connection_age_grace_ms", _ms(max_connection_age_grace_s))]
    return options


def _ms(seconds: float) -> int:
    return max(int(round(seconds * 1000)), 1)


# ---- the status table, both ways ----------------------------------------------------------------

#: our exceptions that are not ServingErrors but are still the request's fault
_REQUEST_FAULTS = (CodecError, WireError, PartitionError)
#: codes a client reads back as a specific exception; every other code comes back as a plain
#: ServingError carrying the code (UNAVAILABLE from a refused connection is not "draining")
_CLIENT_CLASSES: tuple[type[ServingError], ...] = (
    InvalidRequest, NotFound, FingerprintMismatch, Overloaded, Unauthenticated)
_ALIASES = {"OUT_OF_RANGE": "INVALID_ARGUMENT", "PERMISSION_DENIED": "UNAUTHENTICATED"}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The edge's answer to ``exc``: the status its class names, and a message saying why.
    Anything that is not one of ours is INTERNAL (the caller logs it)."""
    if isinstance(exc, ServingError):
        return grpc.StatusCode[exc.code], str(exc)
    if isinstance(exc, _REQUEST_FAULTS):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}: {exc})"


def error_for(code: grpc.StatusCode | str, message: str) -> ServingError:
    """The client's reading of an edge's status: our exception for ``code`` (its ``code``
    attribute is the status name either way)."""
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    if name == ShuttingDown.code and message.startswith(ShuttingDown.PREFIX):
        return ShuttingDown(message, code=name)  # a draining replica, not a lost connection
    wanted = _ALIASES.get(name, name)
    cls = next((c for c in _CLIENT_CLASSES if c.code == wanted), ServingError)
    return cls(message, code=name)


def status_code(value: int | str) -> grpc.StatusCode:
    """A status by number (a stream item's ``Status.code``) or name; UNKNOWN if none."""
    for code in grpc.StatusCode:
        if value in (code.value[0], code.name):
            return code
    return grpc.StatusCode.UNKNOWN

