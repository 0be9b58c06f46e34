"""Image codecs (JPEG, PNG, WebP) for uint8 frames, with Pillow, and a decoder that refuses first.

Why Pillow: it is the one well-kept library that works on a torch-free device (torchvision.io
needs torch), ships wheels for every platform with libjpeg-turbo, zlib and libwebp inside, and
opens an image lazily: ``Image.open`` parses the header only, so the declared size is checked
against the tensor's declared shape before a single pixel is decoded.

A tensor is an image when it is uint8 shaped (H, W), (H, W, C) or (N, H, W, C): NHWC, the
layout a camera or an image decoder gives (NCHW tensors are not images here). C is 1 or 3 for
jpeg, 1, 3 or 4 for png, 3 or 4 for webp. A batch of N frames travels as one image N*H pixels tall (frames stacked top to
bottom): one header, one payload; at heights that are not a multiple of 16, JPEG's 4:2:0
chroma blocks straddle two frames (a smear of at most 8 rows' colour at the seam).

Decoding untrusted payloads, in order: payload size against the shape's bound, header (format,
pixel size, mode) against what the tensor declares, then the pixels, with Pillow's own limits
(decompression bombs, truncated files never padded). Every failure is a CodecError naming the
tensor and the problem; memory is bounded by the declared shape, which ``Limits`` bounded first.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from splitinfer.core.errors import CodecError, LimitExceeded

__all__ = ["BASES", "DEFAULT_QUALITY", "fits", "why_not", "encode", "decode", "check_quality"]

#: codec base -> (Pillow format, channel counts it carries)
BASES: dict[str, tuple[str, tuple[int, ...]]] = {
    "jpeg": ("JPEG", (1, 3)),
    "png": ("PNG", (1, 3, 4)),
    "webp": ("WEBP", (3, 4)),  # Pillow writes a grey WebP as RGB
}
#: default quality per lossy base: JPEG 90 is what phone camera apps ship; WebP's own default
DEFAULT_QUALITY = {"jpeg": 90, "webp": 80}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
#: a compressed image larger than this many times its pixels plus this many bytes is refused
#: before it is parsed (JPEG q100 of noise is ~1.2x raw, PNG ~1.0x plus chunk framing)
_PAYLOAD_FACTOR, _PAYLOAD_SLACK = 2, 1 << 16


def check_quality(base: str, quality: object) -> int | None:
    """The quality as an int for a lossy base (1..100), None for png; CodecError otherwise."""
    if base not in DEFAULT_QUALITY:
        if quality is not None:
            raise CodecError(f"codec {base!r} is lossless: it takes no quality")
        return None
    if quality is None:
        return DEFAULT_QUALITY[base]
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise CodecError(f"{base} quality {quality!r} is not supported; use an integer in "
                         f"[1, 100] (default {DEFAULT_QUALITY[base]})")
    return quality


def _geometry(shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """(N, H, W, C) of an image-shaped tensor, None if the rank cannot be one."""
    if len(shape) == 2:
        return 1, shape[0], shape[1], 1
    if len(shape) == 3:
        return 1, shape[0], shape[1], shape[2]
    if len(shape) == 4:
        return shape[0], shape[1], shape[2], shape[3]
    return None


def why_not(base: str, dtype: str, shape: tuple[int, ...]) -> str | None:
    """Why ``base`` cannot carry a ``dtype`` tensor of ``shape``; None when it can."""
    _, channels = BASES[base]
    if dtype != "uint8":
        return f"{base} carries uint8 images, not {dtype} tensors"
    geo = _geometry(shape)
    if geo is None:
        return (f"{base} carries images shaped (H, W), (H, W, C) or (N, H, W, C) (NHWC), not "
                f"shape {shape}")
    n, h, w, c = geo
    if c not in channels:
        return (f"{base} carries {' or '.join(map(str, channels))} channels last (NHWC); "
                f"shape {shape} has {c}")
    if min(n, h, w) < 1:
        return f"{base} cannot carry an empty image (shape {shape})"
    limit = 65500 if base == "jpeg" else 16383 if base == "webp" else (1 << 31) - 1
    if n * h > limit or w > limit:
        return (f"{base} images are at most {limit} pixels a side; shape {shape} makes one "
                f"{w}x{n * h} (frames stacked)")
    return None


def fits(base: str, dtype: str, shape: tuple[int, ...]) -> bool:
    return why_not(base, dtype, shape) is None


def encode(arr: np.ndarray, base: str, quality: int | None, what: str) -> bytes:
    """``arr`` (a uint8 image-shaped array) as one compressed image."""
    reason = why_not(base, arr.dtype.name, tuple(arr.shape))
    if reason is not None:
        raise CodecError(f"{what}: {reason}; use a tensor codec such as 'int8+zstd' for it")
    n, h, w, c = _geometry(tuple(arr.shape))  # type: ignore[misc]  # why_not checked the rank
    pixels = np.ascontiguousarray(arr).reshape(n * h, w, c)
    img = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, mode=_MODES[c])
    buf = io.BytesIO()
    fmt, _ = BASES[base]
    options: dict[str, Any] = {} if quality is None else {"quality": quality}
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _open(payload: Any, base: str, what: str) -> Image.Image:
    fmt, _ = BASES[base]
    try:
        with warnings.catch_warnings():
            # the declared shape (checked against Limits) is our bound; Pillow's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(payload), formats=[fmt])
    except Image.DecompressionBombError as err:
        raise LimitExceeded(f"{what}: the {base} header declares a decompression bomb: {err}") \
            from err
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        raise CodecError(f"{what}: the payload is not a readable {base} image ({err}); is it "
                         f"truncated or another format?") from err
    return img


def decode(payload: Any, base: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """The uint8 array of ``shape`` held in ``payload``: checks, then decodes."""
    reason = why_not(base, "uint8", shape)
    if reason is not None:
        raise CodecError(f"{what}: {reason}")
    n, h, w, c = _geometry(shape)  # type: ignore[misc]
    size = memoryview(payload).nbytes
    bound = _PAYLOAD_FACTOR * n * h * w * c + _PAYLOAD_SLACK
    if size == 0:
        raise CodecError(f"{what}: the {base} payload is empty (0 bytes)")
    if size > bound:
        raise LimitExceeded(f"{what}: the {base} payload is {size} bytes; an image of shape "
                            f"{shape} may take at most {bound}")
    img = _open(payload, base, what)
    if img.size != (w, n * h) or img.mode != _MODES[c]:
        raise CodecError(f"{what}: the {base} image is {img.size[0]}x{img.size[1]} {img.mode}, "
                         f"but the tensor declares shape {shape}: a {w}x{n * h} "
                         f"{_MODES[c]} image ({n} frame(s) stacked)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise CodecError(f"{what}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process; "
                         "truncated images would decode as grey padding: unset it")
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise LimitExceeded(f"{what}: {base} decompression bomb: {err}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise CodecError(f"{what}: the {base} payload is corrupt or truncated: {err}") from err
    pixels = np.array(img, dtype=np.uint8)  # a writable copy: callers own what decode returns
    return pixels.reshape(shape)
