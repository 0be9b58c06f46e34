"""Run the model's segments on the device: with PyTorch (the bundle) or ONNX Runtime (no torch).

A runner checks the caller's inputs against the bundle's input specs, runs the head of a cut
(the tensors that cross it), and, for local fallback and shadow checks, the tail. The client
does not care which kind it has. ``TorchRunner`` imports torch; ``OnnxRunner`` never does, so a
device with only ONNX Runtime can use the client (``head="onnx"``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from splitinfer.codec import EncodedTensor, decode
from splitinfer.core.spec import check_tensors
from splitinfer.model.manifest import Manifest, read_manifest

__all__ = ["Runner", "TorchRunner", "OnnxRunner", "make_runner"]

_NP_DTYPE = {"float32": np.float32, "float16": np.float16, "float64": np.float64,
             "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8,
             "uint8": np.uint8, "bool": np.bool_}


if TYPE_CHECKING:
    from splitinfer.core.profiles import DeviceProfile



class Runner(Protocol):
    """What the client needs from the device's model: heads, tails, decoding, a profile."""

    kind: str
    manifest: Manifest
    last_cut: int
    cut_ids: tuple[int, ...]

    def prepare(self, inputs: Sequence[Any]) -> tuple[Any, ...]:
        """The caller's inputs as this runner's arrays, checked against the input specs."""

    def run_head(self, cut_id: int, inputs: Sequence[Any]) -> tuple[Any, ...]:
        """The tensors that cross ``cut_id``."""

    def can_run_tail(self, cut_id: int) -> bool:
        """True when the tail of ``cut_id`` can run here (local fallback, shadow checks)."""

    def run_tail(self, cut_id: int, crossing: Sequence[Any]) -> tuple[Any, ...]:
        """The model's outputs from the tensors that cross ``cut_id``."""

    def decode(self, enc: EncodedTensor) -> Any:
        """One answer tensor, in this runner's array type."""

    def to_numpy(self, x: Any) -> np.ndarray:
        """An output as numpy (float outputs as float32), for shadow checks."""

    def profile(self, cut_ids: Sequence[int], codecs: Sequence[str], repeats: int,
                slowdown: float = 1.0) -> DeviceProfile | None:
        """The device profile over ``cut_ids`` (None when this runner cannot plan)."""


class TorchRunner:
    """Head and tail from the bundle's exported program, on the CPU with PyTorch."""

    kind = "torch"

    def __init__(self, bundle_dir: str | Path) -> None:
        import torch  # noqa: F401  (fail here, clearly, when torch is missing)

        from splitinfer.model.bundle import load_bundle

        self.manifest: Manifest = read_manifest(bundle_dir)
        self.sm = load_bundle(bundle_dir)
        self.last_cut = len(self.sm.cuts) - 1
        self.cut_ids = tuple(range(len(self.sm.cuts)))

    def prepare(self, inputs: Sequence[Any]) -> tuple[Any, ...]:
        import torch

        inputs = tuple(torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray)
                       else x for x in inputs)
        check_tensors(self.manifest.inputs, inputs, f"{self.manifest.name}", "input")
        return inputs

    def run_head(self, cut_id: int, inputs: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(self.sm.head(cut_id)(*inputs))

    def can_run_tail(self, cut_id: int) -> bool:
        return True

    def run_tail(self, cut_id: int, crossing: Sequence[Any]) -> tuple[Any, ...]:
        out = self.sm.tail(cut_id)(*crossing)
        return tuple(out) if isinstance(out, tuple) else (out,)

    def decode(self, enc: EncodedTensor) -> Any:
        from splitinfer.model.tensors import decode_torch

        return decode_torch(enc)

    def to_numpy(self, x: Any) -> np.ndarray:
        out: np.ndarray = x.detach().cpu().float().numpy() if x.is_floating_point() \
            else x.cpu().numpy()
        return out

    def profile(self, cut_ids: Sequence[int], codecs: Sequence[str], repeats: int,
                slowdown: float = 1.0) -> Any:
        from splitinfer.measure.profiler import profile_device

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
        check_tensors(self.manifest.inputs, arrays, f"{self.manifest.name}", "input")
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
