"""Torch adapters for the codec: decode an encoded tensor straight to a ``torch.Tensor``.

The codec layer is numpy-only; this is where its output meets torch (bfloat16 included, which
numpy cannot hold: its bits travel as uint16 and become a real bfloat16 tensor here).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from splitinfer.codec import DEFAULT_LIMITS, EncodedTensor, Limits, decode

__all__ = ["decode_torch"]

# copy=False hands torch a read-only view of the payload on purpose (see decode_torch); torch's
# one-time warning about it would only alarm, so it is silenced for calls from this module
warnings.filterwarnings("ignore", message="The given NumPy array is not writable",
                        category=UserWarning, module=__name__.replace(".", r"\."))


def decode_torch(encoded: EncodedTensor, limits: Limits = DEFAULT_LIMITS, *,
                 copy: bool = True) -> torch.Tensor:
    """``splitinfer.codec.decode`` as a torch.Tensor of the original dtype (bfloat16 included).

    The tensor shares memory with the decoded array: no copy. With ``copy=False`` a payload
    that holds the values as they are (raw, fp32 of float32) is not copied either: the tensor
    is a view of the payload bytes, which must then not be written to (a server's tails that
    write into their inputs get a copy: ``_Segment.writes_inputs``)."""
    arr = decode(encoded, limits, copy=copy)
    if encoded.dtype == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)
