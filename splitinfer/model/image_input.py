"""What an image bundle's input is: uint8 NHWC frames and the normalization the model expects.

Torch-free, like :mod:`splitinfer.model.manifest` that records it: a device without torch
reads a bundle's ``image_input`` to know it may send a camera frame (or a JPEG decoded into
one) as it is. The torch side, the module that normalizes a frame inside the captured graph,
is :class:`splitinfer.model.preprocess.ImageModel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["ImageInput", "IMAGENET", "PRESETS", "LAYOUTS", "CHANNELS"]

#: the frame layouts a bundle takes: what cameras and image decoders give (H, W, C per image)
LAYOUTS = ("NHWC",)
#: channel counts: grey, RGB, RGBA
CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class ImageInput:
    """uint8 frames (N, H, W, C) -> float (N, C, H, W): ``(frame * scale - mean) / std``.

    ``mean`` and ``std`` hold one value per channel (or one for all channels); the defaults
    of ``scale`` map 0..255 to 0..1, as torchvision's ``ToTensor`` does.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1 / 255
    layout: str = "NHWC"

    def __post_init__(self) -> None:
        mean = _floats("mean", self.mean)
        std = _floats("std", self.std)
        if len(mean) != len(std) or len(mean) not in CHANNELS:
            raise ValueError(f"ImageInput: mean has {len(mean)} value(s), std {len(std)}; give "
                             f"one per channel, the same count for both, {' or '.join(map(str, CHANNELS))}")
        if any(s <= 0 for s in std):
            raise ValueError(f"ImageInput: std {std} has a value <= 0; every std must be > 0 "
                             "(it divides the frame)")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or \
                not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"ImageInput: scale {self.scale!r} must be a finite number > 0 "
                             "(1/255 maps 0..255 to 0..1)")
        if self.layout not in LAYOUTS:
            raise ValueError(f"ImageInput: layout {self.layout!r} is not supported; frames are "
                             f"uint8 {' or '.join(LAYOUTS)} (batch, height, width, channels), as "
                             "cameras and image decoders give them")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def channels(self) -> int:
        """How many channels a frame has; 1 when one mean/std is shared by all (any count)."""
        return len(self.mean)

    def describe(self) -> str:
        """One line for people: 'uint8 NHWC, mean=(0.485, ...), std=(...), scale=1/255'."""
        inv = 1 / self.scale
        scale = f"1/{inv:g}" if abs(inv - round(inv, 3)) < 1e-9 else f"{self.scale:g}"
        return (f"uint8 {self.layout}, mean={_fmt(self.mean)}, std={_fmt(self.std)}, "
                f"scale={scale}")

    def to_json(self) -> dict[str, Any]:
        return {"layout": self.layout, "dtype": "uint8", "scale": self.scale,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, obj: Any) -> "ImageInput":
        """Parse :meth:`to_json`'s form; ValueError names what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError(f"image_input must be an object, got {type(obj).__name__}")
        if obj.get("dtype", "uint8") != "uint8":
            raise ValueError(f"image_input dtype {obj.get('dtype')!r} is not supported; "
                             "frames are uint8")
        for key in ("mean", "std"):
            if not isinstance(obj.get(key), list):
                raise ValueError(f"image_input.{key} must be a list of numbers, got "
                                 f"{obj.get(key)!r}")
        return cls(mean=tuple(obj["mean"]), std=tuple(obj["std"]),
                   scale=obj.get("scale", 1 / 255), layout=obj.get("layout", "NHWC"))


def _floats(what: str, values: Any) -> tuple[float, ...]:
    try:
        items = tuple(values)
    except TypeError:
        raise ValueError(f"ImageInput: {what} must be a sequence of numbers, got "
                         f"{values!r}") from None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in items):
        raise ValueError(f"ImageInput: {what} {items!r} must hold finite numbers only")
    return tuple(float(v) for v in items)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


#: torchvision's ImageNet normalization (ToTensor, then Normalize with these)
IMAGENET = ImageInput(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

#: named normalizations for ``splitinfer export --image-input NAME``
PRESETS: dict[str, ImageInput] = {"imagenet": IMAGENET}
