"""splitinfer: split inference — run a model's head on the device and its tail on an edge node.

Importing the package is cheap and torch-free; the torch-based parts load on first use::

    import splitinfer
    sm = splitinfer.partition(model, example_inputs=(x,))
    splitinfer.save_bundle(sm, "bundle/")
    sm2 = splitinfer.load_bundle("bundle/")
"""

from __future__ import annotations

from typing import Any

from .errors import (
    BundleError,
    CodecError,
    LimitExceeded,
    PartitionError,
    SplitInferError,
    WireError,
)
from .spec import Cut, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "partition", "SplitModel", "save_bundle", "load_bundle", "export_bundle",
    "get_codec", "decode", "Limits", "EncodedTensor",
    "Cut", "TensorSpec",
    "SplitInferError", "PartitionError", "BundleError", "CodecError", "LimitExceeded",
    "WireError",
]

_LAZY = {
    "partition": "partition", "SplitModel": "partition",
    "save_bundle": "bundle", "load_bundle": "bundle", "export_bundle": "bundle",
    "get_codec": "codec", "decode": "codec", "Limits": "codec", "EncodedTensor": "codec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'splitinfer' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
