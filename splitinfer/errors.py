"""One exception tree for everything splitinfer raises on purpose.

::

    SplitInferError                 base: catch this to catch all of ours
     ├── PartitionError             a model cannot be captured or cut (names the op and the way out)
     ├── BundleError                a bundle is missing, corrupt, truncated or mismatched
     ├── CodecError                 a tensor cannot be encoded, or an encoded tensor is refused
     │    └── LimitExceeded         ... because it is over a configured size limit
     └── WireError                  a protobuf message is malformed (bad dtype, shape, field)

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
