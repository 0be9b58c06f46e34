"""How far a split model's answer moved from the unsplit model's: the fidelity figures.

Pure numpy, so the profiler, ``splitinfer fidelity`` and the benchmarks compute one figure one
way. Every function takes the reference output (the unsplit model on the original input) first
and compares per sample: axis 0 is the batch, the rest is flattened.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["relative_error", "cosine", "top1", "as_float_batch"]


def as_float_batch(x: Any) -> np.ndarray:
    """``x`` (numpy array, torch tensor, or anything ``np.asarray`` takes) as float64 (N, -1);
    a 0-d or 1-d output is one sample."""
    if hasattr(x, "detach"):  # a torch tensor: read through its own method, no torch import
        x = x.detach().cpu().float().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim <= 1:
        return arr.reshape(1, -1)
    return arr.reshape(arr.shape[0], -1)


def _pair(ref: Any, out: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_float_batch(ref), as_float_batch(out)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare outputs of shapes {a.shape} and {b.shape}: the split "
                         "model must answer in the unsplit model's shape")
    return a, b


def relative_error(ref: Any, out: Any) -> np.ndarray:
    """Per sample ``||out - ref|| / ||ref||`` (L2; the plain norm of the difference when ref is
    all zeros)."""
    a, b = _pair(ref, out)
    diff = np.linalg.norm(b - a, axis=1)
    norm = np.linalg.norm(a, axis=1)
    result: np.ndarray = np.where(norm > 0, diff / np.where(norm > 0, norm, 1.0), diff)
    return result


def cosine(ref: Any, out: Any) -> np.ndarray:
    """Per sample cosine similarity; 1.0 where both are all zeros, 0.0 where only one is."""
    a, b = _pair(ref, out)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    both = (na > 0) & (nb > 0)
    result: np.ndarray = np.where(both, dot / np.where(both, na * nb, 1.0),
                                  np.where((na == 0) & (nb == 0), 1.0, 0.0))
    return result


def top1(out: Any) -> np.ndarray:
    """Per sample index of the largest value (the predicted class of a classifier)."""
    result: np.ndarray = np.argmax(as_float_batch(out), axis=1)
    return result
