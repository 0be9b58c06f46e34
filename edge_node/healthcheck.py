"""Container health probe: ask an edge node's grpc.health.v1 service whether it is SERVING.

``python -m edge_node.healthcheck [--address 127.0.0.1:50051] [--service NAME] [--timeout 3]
[--tls-ca F]`` exits 0 when the service (``""`` = the whole server, or a model name) answers
SERVING, and 1 otherwise, printing one line that says why. Health is unauthenticated by design,
so no token is sent. It imports grpc only (no torch): a Docker HEALTHCHECK runs it every few
seconds and must stay cheap.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitinfer import transport


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge_node.healthcheck",
        description="Exit 0 when the edge node's gRPC health service says SERVING, else 1.")
    p.add_argument("--address", default="127.0.0.1:50051",
                   help="edge node gRPC address HOST:PORT [default 127.0.0.1:50051]")
    p.add_argument("--service", default="",
                   help="health service: '' for the whole server, or a model name [default '']")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="seconds to wait for the answer [default 3]")
    p.add_argument("--tls-ca", default=None,
                   help="CA (PEM) to verify the server's certificate; enables TLS")
    return p


@dataclass(frozen=True)
class Health:
    """One Health/Check answer: the serving ``status``, or the ``error`` code of the failed
    call and its ``details``."""

    status: int | None
    error: grpc.StatusCode | None = None
    details: str = ""


def health_status(address: str, service: str = "", timeout: float = 3.0,
                  tls_ca: str | None = None) -> Health:
    """One Health/Check call on a fresh channel for ``service`` (``""``: the server)."""
    # not balanced: the health-checking service config would turn NOT_SERVING into UNAVAILABLE
    conn = transport.open_blocking_channel(
        address, tls=None if tls_ca is None else transport.TLS(ca=tls_ca), balanced=False)
    with conn.channel as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # types-grpcio-health-checking declares HealthStub without its methods
            reply: health_pb2.HealthCheckResponse = stub.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return Health(None, exc.code(), exc.details() or "")
    return Health(int(reply.status))


def check_health(address: str, service: str = "", timeout: float = 3.0,
                 tls_ca: str | None = None) -> tuple[bool, str]:
    """``health_status`` as (serving, a one-line reason)."""
    label = f"service {service!r}" if service else "server"
    h = health_status(address, service, timeout, tls_ca)
    if h.status is None:
        if h.error == grpc.StatusCode.NOT_FOUND:
            return False, f"{address}: {label} is UNKNOWN to the health service"
        if h.error == grpc.StatusCode.DEADLINE_EXCEEDED:
            return False, f"{address}: no answer within {timeout:g}s (timeout)"
        if h.error == grpc.StatusCode.UNAVAILABLE:
            return False, (f"{address}: cannot connect (connection refused or unreachable): "
                           f"{h.details}")
        name = h.error.name if h.error is not None else "UNKNOWN"
        return False, f"{address}: health check failed: {name}: {h.details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(h.status)
    return h.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {label} {status}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ok, reason = check_health(args.address, args.service, args.timeout, args.tls_ca)
    except (OSError, ValueError) as exc:  # unreadable --tls-ca
        ok, reason = False, f"cannot read --tls-ca {args.tls_ca!r}: {exc}"
    print(reason, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
