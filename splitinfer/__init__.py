"""splitinfer: split inference — run a model's head on the device and its tail on an edge node.

Importing the package is cheap and torch-free; the torch-based parts load on first use::

    import splitinfer
    sm = splitinfer.partition(model, example_inputs=(x,))
    splitinfer.save_bundle(sm, "bundle/")
    sm2 = splitinfer.load_bundle("bundle/")

The library is in layers, one subpackage each (``docs/architecture.md``): ``core`` (values,
errors, link, profiles, planner), ``codec``, ``model`` (capture, cuts, bundles, ONNX), ``wire``
(protobuf), ``measure`` (profiler), ``transport`` (gRPC); ``tools`` is the CLI and the demos.
The names below are the public API, re-exported here from the layer that defines them.
"""

from __future__ import annotations

import importlib
from typing import Any

from splitinfer.core.errors import (
    BundleError,
    CodecError,
    LimitExceeded,
    PartitionError,
    SplitInferError,
    WireError,
)
from splitinfer.core.spec import Cut, TensorSpec

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first use: torch only when needed)
_LAZY = {
    "partition": "splitinfer.model.split_model", "SplitModel": "splitinfer.model.split_model",
    "save_bundle": "splitinfer.model.bundle", "load_bundle": "splitinfer.model.bundle",
    "export_bundle": "splitinfer.model.bundle",
    "Manifest": "splitinfer.model.manifest", "read_manifest": "splitinfer.model.manifest",
    "ImageInput": "splitinfer.model.image_input", "IMAGENET": "splitinfer.model.image_input",
    "decode_torch": "splitinfer.model.tensors",
    "get_codec": "splitinfer.codec", "list_codecs": "splitinfer.codec",
    "decode": "splitinfer.codec", "Limits": "splitinfer.codec",
    "EncodedTensor": "splitinfer.codec",
    "choose": "splitinfer.core.planner", "Plan": "splitinfer.core.planner",
    "Constraints": "splitinfer.core.planner", "Link": "splitinfer.core.link",
    "DeviceProfile": "splitinfer.core.profiles", "EdgeProfile": "splitinfer.core.profiles",
    "profile_device": "splitinfer.measure.profiler",
}

__all__ = [*_LAZY, "Cut", "TensorSpec", "SplitInferError", "PartitionError", "BundleError",
           "CodecError", "LimitExceeded", "WireError"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'splitinfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
