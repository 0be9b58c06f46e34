"""Torch adapters for the codec: decode an encoded tensor straight to a ``torch.Tensor``.

The codec layer is numpy-only; this is where its output meets torch (bfloat16 included, which
numpy cannot hold: its bits travel as uint16 and become a real bfloat16 tensor here).
"""

from __future__ import annotations

import numpy as np
import torch

from splitinfer.codec import DEFAULT_LIMITS, EncodedTensor, Limits, decode

__all__ = ["decode_torch"]


def decode_torch(encoded: EncodedTensor, limits: Limits = DEFAULT_LIMITS) -> torch.Tensor:
    """``splitinfer.codec.decode`` as a torch.Tensor of the original dtype (bfloat16 included).

    The tensor shares memory with the freshly decoded array: no copy."""
    arr = decode(encoded, limits)
    if encoded.dtype == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)
