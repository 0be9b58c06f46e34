"""One exception tree for everything splitinfer raises on purpose.

::

    SplitInferError                 base: catch this to catch all of ours
     ├── PartitionError             a model cannot be captured or cut (names the op and the way out)
     ├── BundleError                a bundle is missing, corrupt, truncated or mismatched
     ├── CodecError                 a tensor cannot be encoded, or an encoded tensor is refused
     │    └── LimitExceeded         ... because it is over a configured size limit
     ├── WireError                  a protobuf message is malformed (bad dtype, shape, field)
     ├── ServingError               a request the edge node refuses; ``code`` names the gRPC
     │    │                         status it maps to (splitinfer.transport reads it both ways)
     │    ├── InvalidRequest        INVALID_ARGUMENT: tensors do not match the cut's specs
     │    ├── NotFound              NOT_FOUND: unknown model, version or cut
     │    ├── FingerprintMismatch   FAILED_PRECONDITION: head and tail from different models
     │    ├── Overloaded            RESOURCE_EXHAUSTED: queue full
     │    ├── Unauthenticated       UNAUTHENTICATED: missing or wrong token
     │    ├── DeadlinePassed        DEADLINE_EXCEEDED: the deadline passed before compute
     │    └── ShuttingDown          UNAVAILABLE: the node is draining
     ├── PlanningError              the planner found no (cut, codec) within the constraints
     └── EdgeUnavailable            (device client) no edge answered in time and local fallback
                                    is off or impossible

Every message says what was wrong, what the limit or the expectation was, and, where there is
one, how to fix it. Low-level errors (torch, zstd, protobuf) are wrapped with ``raise ... from``.
"""

from __future__ import annotations

__all__ = [
    "SplitInferError",
    "PartitionError",
    "BundleError",
    "CodecError",
    "LimitExceeded",
    "WireError",
    "ServingError",
    "InvalidRequest",
    "NotFound",
    "FingerprintMismatch",
    "Overloaded",
    "Unauthenticated",
    "DeadlinePassed",
    "ShuttingDown",
    "PlanningError",
    "EdgeUnavailable",
]


class SplitInferError(Exception):
    """Base class of every error splitinfer raises on purpose."""


class PartitionError(SplitInferError):
    """A model cannot be captured, or a cut cannot be built."""


class BundleError(SplitInferError):
    """A bundle directory is missing, corrupt, truncated or does not match its manifest."""


class CodecError(SplitInferError):
    """A tensor cannot be encoded with the asked codec, or an encoded tensor is refused."""


class LimitExceeded(CodecError):
    """An encoded tensor is over a configured size limit (rank, dim, elements, bytes)."""


class WireError(SplitInferError):
    """A protobuf message is malformed: unknown dtype, bad shape, missing field."""


class ServingError(SplitInferError):
    """A request the edge node refuses. ``code`` is the gRPC status code's name: each class
    names its own (the status table); ``code=`` overrides it on one error, as a client does
    for an edge's answer that has no class of its own (UNAVAILABLE, INTERNAL, ...)."""

    code = "INTERNAL"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidRequest(ServingError):
    """The request's tensors, cut or codec do not fit what the model expects."""

    code = "INVALID_ARGUMENT"


class NotFound(ServingError):
    """Unknown model, version or cut."""

    code = "NOT_FOUND"


class FingerprintMismatch(ServingError):
    """The head that made the request comes from another model than the served tail."""

    code = "FAILED_PRECONDITION"


class Overloaded(ServingError):
    """The queue is full or a concurrency limit is reached."""

    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(ServingError):
    """Missing or wrong bearer token."""

    code = "UNAUTHENTICATED"


class DeadlinePassed(ServingError):
    """The request's deadline passed before its compute started."""

    code = "DEADLINE_EXCEEDED"


class ShuttingDown(ServingError):
    """The node is draining and takes no new work. Its message starts with :attr:`PREFIX`,
    which is how a client tells it from a lost connection (both are UNAVAILABLE): a request
    refused so never reached a model, and another replica behind the same name may take it."""

    code = "UNAVAILABLE"
    PREFIX = "the edge node is shutting down"


class PlanningError(SplitInferError):
    """No (cut, codec) survives the constraints, or the profiles do not belong together."""


class EdgeUnavailable(SplitInferError):
    """The device client got no answer from any edge node in time, and could not (or was told
    not to) run the tail on the device."""
