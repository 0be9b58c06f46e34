"""A model's image preprocessing as part of its graph: uint8 NHWC frames in, the model out.

``partition(model, example, image_input=IMAGENET)`` wraps the model in :class:`ImageModel`
before capturing it, so the normalization (scale, mean/std per channel, NHWC -> NCHW) is the
first part of the captured graph: cut 0 carries the frame itself (what a camera or a JPEG
decoder gives, 1 byte per value), and the edge can decode a JPEG straight into it. The value
types (:class:`ImageInput`, :data:`IMAGENET`, :data:`PRESETS`) are torch-free and live in
:mod:`splitinfer.model.image_input`; they are re-exported here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitinfer.core.errors import PartitionError

from .image_input import IMAGENET, PRESETS, ImageInput

__all__ = ["ImageInput", "IMAGENET", "PRESETS", "ImageModel", "example_frames"]


class ImageModel(nn.Module):
    """``model`` behind its preprocessing: forward takes uint8 frames (N, H, W, C).

    Computes ``model((frame.permute(0, 3, 1, 2).float() / (1 / scale) - mean) / std)``; with
    scale 1/255 that is torchvision's ``ToTensor`` + ``Normalize`` op for op (divide by 255),
    so the result matches a normalized float input bit for bit. ``mean`` and ``std`` are
    buffers (they travel with the weights and count in the fingerprint).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, image_input: ImageInput) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise PartitionError(f"ImageModel needs a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(image_input, ImageInput):
            raise PartitionError(f"image_input must be an ImageInput (e.g. IMAGENET), got "
                                 f"{type(image_input).__name__}")
        self.model = model
        self.image_input = image_input
        shape = (1, image_input.channels, 1, 1)
        self.register_buffer("mean", torch.tensor(image_input.mean).reshape(shape))
        self.register_buffer("std", torch.tensor(image_input.std).reshape(shape))
        # dividing by 255 (not multiplying by 1/255) is what ToTensor does: same bits
        self.divisor = 1 / image_input.scale

    def forward(self, image: torch.Tensor) -> Any:
        # static checks: they run when the graph is captured (and on every eager call), and
        # SplitModel.head checks the bundle's input spec on the captured graph
        check_frames(image, self.image_input)
        # contiguous NCHW, as ToTensor gives it: the convolutions then run the kernels they run
        # on a float input, and the outputs match the unwrapped model bit for bit
        x = image.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        x = x / self.divisor
        return self.model((x - self.mean) / self.std)


def check_frames(image: Any, image_input: ImageInput) -> None:
    """Raise PartitionError unless ``image`` is a uint8 (N, H, W, C) tensor that fits."""
    if not isinstance(image, torch.Tensor):
        raise PartitionError(f"an image model takes a uint8 tensor (N, H, W, C), got "
                             f"{type(image).__name__}")
    shape = list(image.shape)
    if image.dtype != torch.uint8:
        raise PartitionError(
            f"frames have dtype {str(image.dtype).removeprefix('torch.')} and shape {shape}; "
            "an image model takes uint8 frames (N, H, W, C) as a camera or decoder gives them. "
            "Pass the frame before normalizing it (the model normalizes it itself)")
    want = image_input.channels
    if image.dim() != 4 or (want != 1 and shape[3] != want) or shape[3] not in (1, 3, 4):
        raise PartitionError(
            f"frames have shape {shape}; an image model takes {image_input.layout} frames "
            f"(batch, height, width, {want if want != 1 else 'channels'}): NHWC only, so "
            "permute NCHW frames with x.permute(0, 2, 3, 1), and add the batch dim to one "
            "frame with x[None]")


def example_frames(example: torch.Tensor, image_input: ImageInput) -> torch.Tensor:
    """uint8 frames (N, H, W, C) to capture with: ``example`` itself when it is frames, else
    a deterministic pattern shaped like the model's own float example (N, C, H, W)."""
    if not isinstance(example, torch.Tensor):
        raise PartitionError(f"example input must be a tensor, got {type(example).__name__}")
    if example.dtype == torch.uint8:
        check_frames(example, image_input)
        return example
    if not example.is_floating_point() or example.dim() != 4:
        raise PartitionError(
            f"with image_input the example is the model's own float input (N, C, H, W) or "
            f"uint8 frames (N, H, W, C); got dtype {str(example.dtype).removeprefix('torch.')}"
            f" and shape {list(example.shape)}")
    n, c, h, w = (int(d) for d in example.shape)
    if image_input.channels not in (1, c):
        raise PartitionError(
            f"the model's example has {c} channel(s) (shape {[n, c, h, w]}, read as N, C, H, "
            f"W), the image input's mean/std {image_input.channels}; give one mean/std per "
            "channel")
    # a smooth, deterministic gradient over the whole 0..255 range: no random state, no data
    rows = torch.arange(h).reshape(1, h, 1, 1) * 255 // max(h - 1, 1)
    cols = torch.arange(w).reshape(1, 1, w, 1) * 255 // max(w - 1, 1)
    chans = torch.arange(c).reshape(1, 1, 1, c) * 85
    batch = torch.arange(n).reshape(n, 1, 1, 1) * 31
    pattern = (rows + cols // 2 + chans + batch) % 256
    return pattern.to(torch.uint8).contiguous()

