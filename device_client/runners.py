"""Run the model's segments on the device: with PyTorch (the bundle) or ONNX Runtime (no torch).

A runner checks the caller's inputs against the bundle's input specs, runs the head of a cut
(the tensors that cross it), and, for local fallback and shadow checks, the tail. The client
does not care which kind it has. ``TorchRunner`` imports torch; ``OnnxRunner`` never does, so a
device with only ONNX Runtime can use the client (``head="onnx"``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from splitinfer.bundle import Manifest, read_manifest
from splitinfer.codec import EncodedTensor, decode
from splitinfer.errors import InvalidRequest
from splitinfer.spec import TensorSpec

__all__ = ["TorchRunner", "OnnxRunner", "make_runner"]

_NP_DTYPE = {"float32": np.float32, "float16": np.float16, "float64": np.float64,
             "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8,
             "uint8": np.uint8, "bool": np.bool_}


def _dtype_name(x: Any) -> str:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return type(x).__name__
    return str(dtype).removeprefix("torch.")


def check_inputs(inputs: Sequence[Any], specs: Sequence[TensorSpec], model: str) -> None:
    """Raise InvalidRequest naming the input when count, dtype, rank or a fixed dim is off."""
    if len(inputs) != len(specs):
        names = ", ".join(s.name for s in specs)
        raise InvalidRequest(f"{model} takes {len(specs)} input(s) ({names}); got {len(inputs)}")
    batch = None
    for x, spec in zip(inputs, specs):
        shape = tuple(getattr(x, "shape", ()))
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise InvalidRequest(f"input {spec.name!r} is a {type(x).__name__}; expected a numpy "
                                 f"array or torch tensor of shape {list(spec.shape)}")
        if _dtype_name(x) != spec.dtype:
            raise InvalidRequest(f"input {spec.name!r} has dtype {_dtype_name(x)}; the model "
                                 f"expects {spec.dtype}")
        if len(shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, shape)):
            raise InvalidRequest(f"input {spec.name!r} has shape {list(shape)}; the model "
                                 f"expects {list(spec.shape)} (-1: any size)")
        if shape and batch is not None and shape[0] != batch:
            raise InvalidRequest(f"input {spec.name!r} has batch {shape[0]}, another input "
                                 f"{batch}; all inputs share the batch dimension")
        batch = shape[0] if shape else batch


class TorchRunner:
    """Head and tail from the bundle's exported program, on the CPU with PyTorch."""

    kind = "torch"

    def __init__(self, bundle_dir: str | Path) -> None:
        import torch  # noqa: F401  (fail here, clearly, when torch is missing)

        from splitinfer.bundle import load_bundle

        self.manifest: Manifest = read_manifest(bundle_dir)
        self.sm = load_bundle(bundle_dir)
        self.last_cut = len(self.sm.cuts) - 1
        self.cut_ids = tuple(range(len(self.sm.cuts)))

    def prepare(self, inputs: Sequence[Any]) -> tuple[Any, ...]:
        import torch

        inputs = tuple(torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray)
                       else x for x in inputs)
        check_inputs(inputs, self.manifest.inputs, self.manifest.name)
        return inputs

    def run_head(self, cut_id: int, inputs: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(self.sm.head(cut_id)(*inputs))

    def can_run_tail(self, cut_id: int) -> bool:
        return True

    def run_tail(self, cut_id: int, crossing: Sequence[Any]) -> tuple[Any, ...]:
        out = self.sm.tail(cut_id)(*crossing)
        return tuple(out) if isinstance(out, tuple) else (out,)

    def decode(self, enc: EncodedTensor) -> Any:
        from splitinfer.codec import decode_torch

        return decode_torch(enc)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.detach().cpu().float().numpy() if x.is_floating_point() else x.cpu().numpy()

    def profile(self, cut_ids: Sequence[int], codecs: Sequence[str], repeats: int,
                slowdown: float = 1.0) -> Any:
        from splitinfer.profiler import profile_device

        return profile_device(self.sm, codecs=codecs, repeats=repeats, cut_ids=cut_ids,
                              slowdown=slowdown)


class OnnxRunner:
    """Heads (and tails, where exported) from ``<bundle>/onnx/`` with ONNX Runtime; no torch."""

    kind = "onnx"

    def __init__(self, bundle_dir: str | Path, threads: int | None = None) -> None:
        from .onnx_head import OnnxSegments

        self.manifest = read_manifest(bundle_dir)
        self.segments = OnnxSegments(bundle_dir, threads=threads)
        self.last_cut = len(self.manifest.cuts) - 1
        self.cut_ids = tuple(self.segments.cut_ids)

    def prepare(self, inputs: Sequence[Any]) -> tuple[Any, ...]:
        arrays = []
        for x in inputs:
            if type(x).__module__.split(".")[0] == "torch":
                x = x.detach().cpu().numpy()
            arrays.append(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
        check_inputs(arrays, self.manifest.inputs, self.manifest.name)
        return tuple(arrays)

    def run_head(self, cut_id: int, inputs: Sequence[Any]) -> tuple[Any, ...]:
        if cut_id == 0:  # edge-only: what crosses is the input itself
            return tuple(inputs)
        return tuple(self.segments.run_head(cut_id, inputs))

    def can_run_tail(self, cut_id: int) -> bool:
        return self.segments.has_tail(cut_id)

    def run_tail(self, cut_id: int, crossing: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(self.segments.run_tail(cut_id, crossing))

    def decode(self, enc: EncodedTensor) -> Any:
        return decode(enc)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) if np.asarray(x).dtype.kind == "f" else x

    def profile(self, cut_ids: Sequence[int], codecs: Sequence[str], repeats: int,
                slowdown: float = 1.0) -> Any:
        return None  # ONNX heads run at a cut fixed by the caller; nothing to plan over


def make_runner(bundle_dir: str | Path, head: str, threads: int | None = None
                ) -> TorchRunner | OnnxRunner:
    """``head``: "torch", "onnx", or "auto" (torch when it is installed, else ONNX)."""
    if head not in ("auto", "torch", "onnx"):
        raise ValueError(f"head is {head!r}; expected 'auto', 'torch' or 'onnx'")
    if head == "auto":
        head = "torch" if importlib.util.find_spec("torch") is not None else "onnx"
    if head == "onnx":
        return OnnxRunner(bundle_dir, threads=threads)
    return TorchRunner(bundle_dir)
