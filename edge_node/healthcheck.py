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
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


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


def _open_channel(address: str, tls_ca: str | None) -> grpc.Channel:
    if tls_ca is None:
        return grpc.insecure_channel(address)
    with open(tls_ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(address, creds)


def check_health(address: str, service: str = "", timeout: float = 3.0,
                 tls_ca: str | None = None) -> tuple[bool, str]:
    """One Health/Check call: (serving, a one-line reason)."""
    label = f"service {service!r}" if service else "server"
    with _open_channel(address, tls_ca) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return False, f"{address}: {label} is UNKNOWN to the health service"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return False, f"{address}: no answer within {timeout:g}s (timeout)"
            if code == grpc.StatusCode.UNAVAILABLE:
                return False, (f"{address}: cannot connect (connection refused or "
                               f"unreachable): {exc.details()}")
            return False, f"{address}: health check failed: {code.name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {label} {status}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ok, reason = check_health(args.address, args.service, args.timeout, args.tls_ca)
    except OSError as exc:  # unreadable --tls-ca
        ok, reason = False, f"cannot read --tls-ca {args.tls_ca!r}: {exc}"
    print(reason, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
