"""How the client judges an edge's gRPC error: try another edge, set the edge aside, or stop.

Transient codes (the edge is down, slow, overloaded, restarting) count against the edge's
circuit breaker and the request may go elsewhere. Codes that say the edge will never serve us
(our model's fingerprint, version or token) set the edge aside until it is re-checked. Codes
about the request itself (INVALID_ARGUMENT) would be the same on any edge: stop trying.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from splitinfer import errors

log = logging.getLogger(__name__)

TRANSIENT = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED,
})
REFUSES_US = frozenset({
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
})

_BY_CODE: dict[str, type[errors.SplitInferError]] = {
    "INVALID_ARGUMENT": errors.InvalidRequest, "OUT_OF_RANGE": errors.InvalidRequest,
    "NOT_FOUND": errors.NotFound, "FAILED_PRECONDITION": errors.FingerprintMismatch,
    "RESOURCE_EXHAUSTED": errors.Overloaded, "UNAUTHENTICATED": errors.Unauthenticated,
    "PERMISSION_DENIED": errors.Unauthenticated,
}


def record(edge: Any, code: grpc.StatusCode, why: str) -> bool:
    """Count ``code`` on ``edge`` (breaker, set aside, last error); True when no other edge
    would answer differently. Unary calls, streams and stream items all judge here."""
    if code in TRANSIENT:
        edge.failed(why)
        return False
    edge.breaker.release_trial()
    if code in REFUSES_US:
        edge.set_aside(why)
        return False
    edge.last_error = why
    return True


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode with this number (a stream item's ``Status.code``); UNKNOWN if none."""
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


def judge(edge: Any, exc: grpc.aio.AioRpcError, rid: str) -> tuple[str, str, bool]:
    """Record ``exc`` on ``edge``; return (code name, why, True when no other edge would help)."""
    code = exc.code()
    why = f"{code.name}: {exc.details()}"
    final = record(edge, code, why)
    if code in TRANSIENT:
        log.info("request %s: %s failed (%s)", rid, edge.address, why)
    elif code in REFUSES_US:
        log.error("request %s: %s refuses this model, set aside: %s", rid, edge.address, why)
    return code.name, why, final


def unanswered(code: str, message: str) -> errors.SplitInferError:
    """The error a request raises when nothing answered it: the edge's refusal as our
    exception, or ``EdgeUnavailable`` when the edges were down, hung or set aside."""
    return _BY_CODE.get(code, errors.EdgeUnavailable)(message)


def connect_error(address: str, exc: grpc.aio.AioRpcError) -> errors.SplitInferError:
    """A connect-time refusal (wrong token, unknown model) as our exception, naming the edge."""
    code = exc.code()
    cls = _BY_CODE.get(code.name, errors.EdgeUnavailable)
    hint = {"UNAUTHENTICATED": "; pass token= with the edge node's --token-file contents",
            "NOT_FOUND": "; put the bundle in the edge node's model repository"}.get(code.name, "")
    return cls(f"edge {address} refused GetModelInfo: {code.name}: {exc.details()}{hint}")
