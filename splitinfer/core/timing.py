"""Server-side time per stage of one inference, the value the edge node reports to the client.

Torch-free and protobuf-free: the edge node fills it, ``splitinfer.wire.convert`` carries it, and
the device client subtracts ``total_s`` from its round trip to tell network time from server time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["StageTiming"]


@dataclass(frozen=True)
class StageTiming:
    """Seconds the edge node spent on one request, stage by stage."""

    queue_s: float = 0.0
    decode_s: float = 0.0
    compute_s: float = 0.0
    encode_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("queue_s", "decode_s", "compute_s", "encode_s"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"StageTiming.{name} is {value!r}; expected a finite number "
                                 f"of seconds >= 0")
            object.__setattr__(self, name, value)

    @property
    def total_s(self) -> float:
        """Time the request spent on the edge node, all stages together."""
        return self.queue_s + self.decode_s + self.compute_s + self.encode_s
