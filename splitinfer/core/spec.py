"""Torch-free value types that describe a split model: tensor specs and cuts.

These cross every border (bundle manifest, wire, planner, device client), so they are frozen
dataclasses with plain-Python fields and a JSON form, and importing them never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .errors import InvalidRequest

__all__ = ["TensorSpec", "Cut", "DTYPES", "DYNAMIC", "check_tensors", "dtype_name"]

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


def dtype_name(x: Any) -> str:
    """The dtype of a numpy array or torch tensor as a ``DTYPES`` key (``torch.`` dropped)."""
    dtype = getattr(x, "dtype", None)
    return type(x).__name__ if dtype is None else str(dtype).removeprefix("torch.")


def check_tensors(specs: Sequence[TensorSpec], tensors: Sequence[Any], what: str,
                  noun: str = "tensor") -> None:
    """Raise InvalidRequest unless ``tensors`` fit ``specs`` one for one: the count, each one's
    dtype, rank and fixed dims, and one batch size (dim 0) across those whose dim 0 is dynamic.

    ``tensors`` are numpy arrays or torch tensors (anything with ``shape`` and ``dtype``);
    ``what`` names who takes them in the message ("mobilenet's inputs", "cut 7 (features.1)
    of mobilenet v1"), ``noun`` what one of them is called ("input", "tensor").
    """
    if len(tensors) != len(specs):
        names = ", ".join(s.name for s in specs)
        raise InvalidRequest(f"{what} takes {len(specs)} {noun}(s) ({names}); got "
                             f"{len(tensors)}")
    batch: tuple[str, int] | None = None
    for spec, x in zip(specs, tensors):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise InvalidRequest(f"{noun} {spec.name!r} is a {type(x).__name__}; expected a "
                                 f"numpy array or torch tensor of shape {list(spec.shape)} and "
                                 f"dtype {spec.dtype}")
        shape, dtype = tuple(int(d) for d in x.shape), dtype_name(x)
        if not spec.matches(shape, dtype):
            rank = "" if len(shape) == len(spec.shape) else \
                f" (rank {len(shape)}, expected rank {len(spec.shape)})"
            fix = "" if dtype == spec.dtype else \
                f"; convert it with .astype(np.{spec.dtype}) or .to(torch.{spec.dtype})"
            raise InvalidRequest(f"{noun} {spec.name!r} has shape {list(shape)}{rank} and dtype "
                                 f"{dtype}; {what} expects shape {list(spec.shape)} (-1: any "
                                 f"size) and dtype {spec.dtype}{fix}")
        if shape and spec.shape and spec.shape[0] == DYNAMIC:
            if batch is None:
                batch = (spec.name, shape[0])
            elif shape[0] != batch[1]:
                raise InvalidRequest(f"{noun} {spec.name!r} has batch {shape[0]}, {batch[0]!r} "
                                     f"has {batch[1]}; all {noun}s share the batch dimension")
