"""Codecs for the tensors that cross a cut: the codec table (``CODECS``), quantizers, zstd, images.

numpy, zstandard and Pillow only (never torch or protobuf): the device client encodes with these
on a torch-free device, and the edge node decodes untrusted payloads with them under ``Limits``.
``registry`` has the table and the hostile-safe decoder; ``_quant``, ``_zstd`` and ``_image``
(jpeg, png, webp) are its kernels.
"""

from __future__ import annotations

from ._quant import snr_step
from .registry import (
    CODECS,
    DEFAULT_LIMITS,
    IMAGE_CODECS,
    Codec,
    EncodedTensor,
    ErrorBound,
    Limits,
    check,
    decode,
    encoded_nbytes,
    error_bound,
    get_codec,
    list_codecs,
)

__all__ = ["CODECS", "DEFAULT_LIMITS", "Codec", "EncodedTensor", "ErrorBound", "IMAGE_CODECS",
           "Limits", "check", "decode", "encoded_nbytes", "error_bound", "get_codec", "list_codecs",
           "snr_step"]
