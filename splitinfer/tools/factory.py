"""The model a user names on the command line: ``MODULE:FACTORY``, example inputs, quiet torch.

Shared by ``splitinfer export`` and ``splitinfer demo --offline`` (one loader, one set of error
messages).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
from typing import Any, Sequence

from splitinfer.core.errors import SplitInferError

__all__ = ["load_factory", "load_object", "parse_shape", "example_inputs", "quiet_torch"]

_INT_DTYPES = {"int64", "int32", "int16", "int8", "uint8", "bool"}


def load_factory(spec: str) -> Any:
    """The object ``MODULE:ATTR[.ATTR...]`` names (e.g. ``torchvision.models:resnet18``).

    Raises SplitInferError naming what is wrong: the form, a module that does not import, or a
    missing attribute.
    """
    return load_object(spec, bad_form=f"bad model {spec!r}: use MODULE:FACTORY, e.g. "
                                      "torchvision.models:resnet18 or mypkg.models:build")


def load_object(spec: str, *, bad_form: str, prefix: str = "") -> Any:
    """The object ``MODULE:ATTR[.ATTR...]`` names; SplitInferError ``bad_form`` when ``spec``
    is not of that form, and one starting with ``prefix`` for a module that does not import or
    an attribute it lacks."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SplitInferError(bad_form)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SplitInferError(f"{prefix}cannot import {module_name!r} ({exc}); is it installed, "
                              "or on PYTHONPATH?") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SplitInferError(f"{prefix}{module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def parse_shape(text: str) -> tuple[int, ...]:
    """An argparse type: ``1,3,224,224`` (or ``1x3x224x224``) to a shape of positive ints."""
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad shape {text!r}: use comma-separated positive ints, e.g. 1,3,224,224") from None
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: every dim must be >= 1")
    return shape


def example_inputs(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str],
                   int_high: int, seed: int) -> tuple[Any, ...]:
    """One seeded random tensor per shape: floats from a normal, ints from [0, ``int_high``)."""
    import torch

    if dtypes and len(dtypes) != len(shapes):
        raise SplitInferError(f"{len(dtypes)} --example-dtype for {len(shapes)} "
                              "--example-shape; give one dtype per shape, or none")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype in zip(shapes, list(dtypes) or ["float32"] * len(shapes)):
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise SplitInferError(f"unknown --example-dtype {dtype!r}; e.g. float32, int64")
        if dtype in _INT_DTYPES:
            high = 2 if dtype == "bool" else int_high
            out.append(torch.randint(0, high, shape, generator=gen).to(getattr(torch, dtype)))
        else:
            out.append(torch.randn(shape, generator=gen).to(getattr(torch, dtype)))
    return tuple(out)


def quiet_torch(args: argparse.Namespace) -> Any:
    """torch writes pages of graph dumps when a capture fails; our own error says what matters.

    Returns a context manager that swallows torch's stderr chatter (kept with --log-level DEBUG).
    """
    if args.log_level == "DEBUG":
        return contextlib.nullcontext()
    from torch._logging import set_logs  # type: ignore[attr-defined]

    set_logs(all=logging.ERROR)
    return contextlib.redirect_stderr(io.StringIO())
