"""Real camera-like frames for demos, benchmarks and fidelity runs: crops of real photos.

The photos are the two that ship with scikit-learn (``sklearn.datasets.load_sample_images``:
china.jpg and flower.jpg, 427x640 RGB), so nothing is downloaded. Each photo is cut into a 3x3
grid of overlapping square crops of side ``CROP`` (224; rows and columns evenly spaced from edge
to edge), 18 frames in all, resized with Pillow (bilinear, antialiased; ``resize_crop``) when
another ``size`` is asked for. Frames are uint8 HWC, as a camera or an image decoder gives them.

``splitinfer fidelity BUNDLE --data splitinfer.tools.frames:sample_frames`` runs them; ``batch``
stacks them into an NHWC batch, ``normalized`` turns them into the float NCHW tensor a
torchvision model takes (for bundles without an image input).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["CROP", "GRID", "sample_frames", "batch", "normalized", "resize_crop", "IMAGENET_MEAN",
           "IMAGENET_STD"]

#: side of a crop, in pixels of the original photo
CROP = 224
#: crops per photo: GRID x GRID
GRID = 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise RuntimeError("the sample frames are scikit-learn's sample photos: pip install "
                           "'splitinfer[bench]' (scikit-learn)") from exc
    return tuple(np.ascontiguousarray(img, dtype=np.uint8) for img in load_sample_images().images)


def resize_crop(frame: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """A uint8 (H, W, C) frame scaled (Pillow, bilinear) so it covers ``size`` (H, W), then its
    centre cut out (torchvision's Resize + CenterCrop for a square target); C 1, 3 or 4."""
    from PIL import Image

    h, w = frame.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return frame
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    img = Image.fromarray(frame[..., 0] if frame.shape[2] == 1 else frame)
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = (nh - th) // 2, (nw - tw) // 2
    out = np.asarray(img.crop((left, top, left + tw, top + th)), dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


@lru_cache(maxsize=8)
def _frames(size: int) -> tuple[np.ndarray, ...]:
    out = []
    for photo in _photos():
        h, w = photo.shape[:2]
        side = min(CROP, h, w)
        for top in np.linspace(0, h - side, GRID).astype(int):
            for left in np.linspace(0, w - side, GRID).astype(int):
                crop = photo[top:top + side, left:left + side]
                crop = resize_crop(crop, (size, size))
                crop.setflags(write=False)
                out.append(crop)
    return tuple(out)


def sample_frames(size: int = CROP) -> list[np.ndarray]:
    """The 18 frames (9 per photo, china.jpg first), each uint8 (size, size, 3), read-only."""
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
        raise ValueError(f"frame size {size!r}: expected an int from 8 to 4096 pixels")
    return list(_frames(size))


def batch(n: int, size: int = CROP, start: int = 0) -> np.ndarray:
    """``n`` frames as one uint8 NHWC array, cycling through the 18 from ``start``."""
    frames = sample_frames(size)
    if n < 1:
        raise ValueError(f"batch of {n} frames: expected at least 1")
    return np.stack([frames[(start + i) % len(frames)] for i in range(n)])


def normalized(frames: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN,
               std: tuple[float, ...] = IMAGENET_STD) -> np.ndarray:
    """uint8 NHWC (or one HWC frame) -> float32 NCHW, scaled to [0, 1] and normalized with
    ``mean`` / ``std`` per channel (torchvision's ToTensor + Normalize)."""
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"frames of shape {x.shape} and dtype {x.dtype}: expected uint8 "
                         "(N, H, W, C) or (H, W, C)")
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    out: np.ndarray = (x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - m) / s
    return np.ascontiguousarray(out, dtype=np.float32)
