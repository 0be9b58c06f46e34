"""Torch-free value types that describe a split model: tensor specs and cuts.

These cross every border (bundle manifest, wire, planner, device client), so they are frozen
dataclasses with plain-Python fields and a JSON form, and importing them never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TensorSpec", "Cut", "DTYPES", "DYNAMIC"]

#: A dimension whose size is only known at run time (the batch dimension, at least).
DYNAMIC = -1

#: dtype names we know, with their item size in bytes. Names follow numpy/torch spelling.
DTYPES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor; ``DYNAMIC`` (-1) marks a run-time dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"TensorSpec {self.name!r}: unknown dtype {self.dtype!r}; "
                             f"expected one of {sorted(DTYPES)}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if any(d < DYNAMIC for d in self.shape):
            raise ValueError(f"TensorSpec {self.name!r}: bad shape {self.shape}; "
                             f"dims are >= 0, or {DYNAMIC} for a dynamic dim")

    def matches(self, shape: tuple[int, ...], dtype: str) -> bool:
        """True when a concrete ``shape``/``dtype`` fits this spec (dynamic dims match any size)."""
        if dtype != self.dtype or len(shape) != len(self.shape):
            return False
        return all(s == DYNAMIC or s == d for s, d in zip(self.shape, shape))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "TensorSpec":
        return cls(name=str(obj["name"]), shape=tuple(obj["shape"]), dtype=str(obj["dtype"]))


@dataclass(frozen=True)
class Cut:
    """A point where the model can be split.

    ``tensors`` cross from the device (head) to the edge (tail). Cut 0 sends the model inputs
    (edge-only); the last cut sends the model outputs (device-only).
    """

    id: int
    name: str
    tensors: tuple[TensorSpec, ...]
    #: how many graph nodes run on the device for this cut
    head_nodes: int = 0
    #: fraction of the model's FLOPs (estimated) that runs on the device, 0..1
    head_flops_fraction: float = 0.0

    @property
    def nbytes_per_sample(self) -> int:
        """fp32-equivalent bytes of the crossing tensors for one sample (dynamic dims as 1)."""
        total = 0
        for t in self.tensors:
            n = 1
            for d in t.shape:
                n *= 1 if d == DYNAMIC else d
            total += n * DTYPES[t.dtype]
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "tensors": [t.to_json() for t in self.tensors],
            "head_nodes": self.head_nodes,
            "head_flops_fraction": self.head_flops_fraction,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Cut":
        return cls(
            id=int(obj["id"]),
            name=str(obj["name"]),
            tensors=tuple(TensorSpec.from_json(t) for t in obj["tensors"]),
            head_nodes=int(obj.get("head_nodes", 0)),
            head_flops_fraction=float(obj.get("head_flops_fraction", 0.0)),
        )
