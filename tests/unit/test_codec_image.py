"""Image codecs (jpeg, png, webp): round trips on real frames, names, and hostile payloads.

The frames are crops of scikit-learn's sample photos (``splitinfer.tools.frames``). Hostile
payloads must be refused with a CodecError (the edge answers INVALID_ARGUMENT) that names the
problem, before any allocation the declared shape did not allow.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zlib
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from splitinfer.codec import (
    IMAGE_CODECS,
    EncodedTensor,
    Limits,
    decode,
    error_bound,
    get_codec,
    list_codecs,
)
from splitinfer.core.errors import CodecError, LimitExceeded
from splitinfer.tools.frames import batch, sample_frames

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return batch(18)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse) if mse else float("inf")


# ------------------------------------------------------------------------------ round trips

def test_png_is_exact_on_real_frames(frames):
    enc = get_codec("png").encode(frames, "frame")
    out = decode(enc)
    assert enc.codec == "png" and out.dtype == np.uint8 and out.shape == frames.shape
    np.testing.assert_array_equal(out, frames)
    assert get_codec("png").lossless and error_bound(enc).absolute == 0


# per quality: the least PSNR (dB) over the 18 frames one at a time, and the most bytes per frame
@pytest.mark.parametrize("name, min_psnr, max_kb", [
    ("jpeg-q95", 32.0, 26.0), ("jpeg", 30.0, 18.0), ("jpeg-q75", 27.0, 11.0),
    ("jpeg-q50", 24.0, 8.0), ("webp", 29.0, 10.0)])
def test_lossy_round_trip_within_its_quality(frames, name, min_psnr, max_kb):
    codec = get_codec(name)
    sizes, psnrs = [], []
    for frame in frames:
        enc = codec.encode(frame[None], "frame")
        out = decode(enc)
        assert out.shape == (1, 224, 224, 3) and out.dtype == np.uint8
        sizes.append(len(enc.payload))
        psnrs.append(_psnr(frame[None], out))
    assert min(psnrs) > min_psnr, (name, min(psnrs))
    assert np.median(sizes) < max_kb * 1024, (name, np.median(sizes))
    assert np.median(sizes) < frames[0].nbytes / 4  # far smaller than the raw frame


def test_quality_orders_bytes_and_error(frames):
    sizes, errors = [], []
    for q in (95, 90, 75, 50, 10):
        enc = get_codec("jpeg", quality=q).encode(frames[:4])
        sizes.append(len(enc.payload))
        errors.append(float(np.abs(decode(enc).astype(int) - frames[:4]).mean()))
    assert sizes == sorted(sizes, reverse=True) and errors == sorted(errors)


@pytest.mark.parametrize("shape", [(224, 224, 3), (224, 224), (224, 224, 1), (3, 224, 224, 3)])
def test_shapes_round_trip(frames, shape):
    x = frames[0] if len(shape) == 3 and shape[-1] == 3 else frames[:3]
    if len(shape) == 2:
        x = frames[0, :, :, 1]
    elif shape[-1] == 1:
        x = frames[0, :, :, 1:2]
    for name in ("png", "jpeg", "webp") if shape[-1] == 3 else ("png", "jpeg"):
        out = decode(get_codec(name).encode(x))
        assert out.shape == shape
    np.testing.assert_array_equal(decode(get_codec("png").encode(x)), x)


def test_a_batch_is_one_image_of_stacked_frames(frames):
    enc = get_codec("jpeg").encode(frames[:2])
    img = Image.open(io.BytesIO(enc.payload))
    assert img.size == (224, 448) and img.format == "JPEG"


def test_rgba_png_and_torch_tensor(frames):
    torch = pytest.importorskip("torch")
    rgba = np.concatenate([frames[:1], np.full((1, 224, 224, 1), 200, np.uint8)], axis=3)
    np.testing.assert_array_equal(decode(get_codec("png").encode(rgba)), rgba)
    enc = get_codec("png").encode(torch.from_numpy(frames[:1].copy()))
    np.testing.assert_array_equal(decode(enc), frames[:1])


# ---------------------------------------------------------------------------- names, fits

def test_names_and_qualities():
    assert {"jpeg", "png", "webp"} <= set(list_codecs())
    assert get_codec("jpeg").quality == 90 and get_codec("jpeg").name == "jpeg"
    assert get_codec("jpeg-q75").quality == 75 and get_codec("jpeg-q75").name == "jpeg-q75"
    assert get_codec("jpeg", quality=90).name == "jpeg"
    assert get_codec("webp-q40").name == "webp-q40"
    assert all(get_codec(n).is_image for n in IMAGE_CODECS)
    assert get_codec("jpeg-q75").encode(sample_frames(32)[0]).codec == "jpeg"


@pytest.mark.parametrize("name, match", [
    ("jpeg-q0", r"quality 0 .*\[1, 100\]"), ("jpeg-q101", "quality 101"),
    ("png-q50", "unknown codec 'png-q50'"), ("jpeg+zstd", "unknown codec"),
    ("jpeg-qx", "unknown codec")])
def test_bad_names(name, match):
    with pytest.raises(CodecError, match=match):
        get_codec(name)


def test_bad_quality_and_level_arguments():
    with pytest.raises(CodecError, match="takes no quality"):
        get_codec("int8", quality=50)
    with pytest.raises(CodecError, match="takes no quality"):
        get_codec("png", quality=50)
    with pytest.raises(CodecError, match="no zstd stage"):
        get_codec("jpeg", level=3)


@pytest.mark.parametrize("dtype, shape, ok", [
    ("uint8", (1, 224, 224, 3), True), ("uint8", (224, 224), True), ("uint8", (4, 8, 8, 1), True),
    ("float32", (1, 224, 224, 3), False), ("uint8", (1, 3, 224, 224), False),
    ("uint8", (1, 1, 224, 224, 3), False), ("uint8", (0, 8, 8, 3), False),
    ("int64", (1, 8), False)])
def test_applies_to(dtype, shape, ok):
    assert get_codec("jpeg").applies_to(dtype, shape) is ok
    assert get_codec("int8+zstd").applies_to(dtype, shape)


@pytest.mark.parametrize("x, match", [
    (np.zeros((1, 3, 32, 32), np.float32), "uint8 images, not float32"),
    (np.zeros((1, 3, 32, 32), np.uint8), "1 or 3 channels last.*has 32"),
    (np.zeros(10, np.uint8), r"\(N, H, W, C\)")])
def test_encode_refuses_what_is_not_an_image(x, match):
    with pytest.raises(CodecError, match=match):
        get_codec("jpeg").encode(x, "act")


# ------------------------------------------------------------------------------- hostile

@pytest.fixture(scope="module")
def good(frames) -> EncodedTensor:
    return get_codec("jpeg").encode(frames[:1], "frame")


def _refused(enc: EncodedTensor, match: str, exc: type = CodecError,
             limits: Limits = Limits()) -> None:
    with pytest.raises(exc, match=match) as info:
        decode(enc, limits)
    assert "'frame'" in str(info.value)  # names the tensor


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.98])
def test_truncated_jpeg(good, cut):
    _refused(replace(good, payload=good.payload[:int(len(good.payload) * cut)]),
             "corrupt or truncated|not a readable jpeg")


def test_truncated_png(frames):
    enc = get_codec("png").encode(frames[:1], "frame")
    _refused(replace(enc, payload=enc.payload[:len(enc.payload) // 2]),
             "corrupt or truncated|not a readable png")


def test_zero_bytes(good):
    _refused(replace(good, payload=b""), "payload is empty")


@pytest.mark.parametrize("payload", [b"\x00" * 5000, bytes(range(256)) * 20,
                                     b"\xff\xd8\xff" + b"\x00" * 100])
def test_garbage(good, payload):
    _refused(replace(good, payload=payload), "not a readable jpeg|corrupt or truncated")


def test_a_png_sent_as_jpeg(frames, good):
    png = get_codec("png").encode(frames[:1], "frame")
    _refused(replace(good, payload=png.payload), "not a readable jpeg")


def _jpeg_header_claiming(width: int, height: int, real: bytes) -> bytes:
    """``real`` with its SOF0 frame header rewritten to ``width`` x ``height``."""
    at = real.index(b"\xff\xc0") + 5  # marker, length (2), precision (1): then height, width
    return real[:at] + struct.pack(">HH", height, width) + real[at + 4:]


def test_header_claiming_60000x60000_against_a_small_shape(good):
    _refused(replace(good, payload=_jpeg_header_claiming(60000, 60000, good.payload)),
             "decompression bomb", LimitExceeded)  # Pillow's own header check comes first


def test_header_claiming_a_size_that_disagrees(good):
    _refused(replace(good, payload=_jpeg_header_claiming(300, 200, good.payload)),
             r"300x200 RGB.*declares shape \(1, 224, 224, 3\)")


def test_header_claiming_60000x60000_with_that_shape_is_over_the_limits(good):
    hostile = replace(good, shape=(1, 60000, 60000, 3),
                      payload=_jpeg_header_claiming(60000, 60000, good.payload))
    _refused(hostile, "elements; the limit is", LimitExceeded)


def test_declared_shape_disagrees_with_the_image(good):
    _refused(replace(good, shape=(1, 224, 200, 3)), r"224x224 RGB.*declares shape \(1, 224, 200")
    _refused(replace(good, shape=(1, 224, 224, 1)), "224x224 RGB.*224x224 L")


def test_dtype_and_params_must_fit(good):
    _refused(replace(good, dtype="float32"), "carries uint8 images, not float32")
    _refused(replace(good, scales=(1.0,), zero_points=(0,)), "takes no scales")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(side: int) -> bytes:
    """A valid grey PNG of side x side zeros: ~side*side bytes inflate from a few KB."""
    raw = zlib.compress(b"\x00" * ((side + 1) * side), 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0,
                                                                    0, 0, 0))
            + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b""))


def test_png_decompression_bomb():
    bomb = _png_bomb(10000)  # 100 MB of pixels in ~100 KB
    assert len(bomb) < 200_000
    small = EncodedTensor(name="frame", dtype="uint8", shape=(1, 256, 256, 1), codec="png",
                          payload=bomb)
    # declared small: the header disagrees and nothing is inflated
    _refused(small, r"10000x10000 L.*declares shape \(1, 256, 256, 1\)")
    # declared as big as it is: the decoder limits refuse before the header is even read
    _refused(replace(small, shape=(1, 10000, 10000, 1)), "the limit is", LimitExceeded,
             Limits(max_elements=1 << 24))
    # a payload far larger than its declared pixels could need is refused unread
    _refused(replace(small, shape=(1, 8, 8, 1)), "may take at most", LimitExceeded)


def test_corrupt_png_crc(frames):
    enc = get_codec("png").encode(frames[:1], "frame")
    data = bytearray(enc.payload)
    at = data.index(b"IDAT") + 40
    data[at] ^= 0xFF
    _refused(replace(enc, payload=bytes(data)), "corrupt or truncated|not a readable png")


# ----------------------------------------------------------------------------- torch-free

def test_a_torch_free_device_encodes_jpeg(tmp_path):
    """A process where ``import torch`` fails encodes and decodes frames with the codec."""
    script = textwrap.dedent("""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is not installed on this device")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from PIL import Image
        from splitinfer.codec import decode, get_codec
        frame = np.asarray(Image.open(sys.argv[1]).convert("RGB"))[None]
        enc = get_codec("jpeg").encode(frame, "frame")
        out = decode(enc)
        assert "torch" not in sys.modules
        print(enc.codec, len(enc.payload), out.shape, int(np.abs(out.astype(int) - frame).max()))
    """)
    frame = sample_frames()[4]
    Image.fromarray(frame).save(tmp_path / "frame.png")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "frame.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    codec, size, shape, _ = done.stdout.split(" ", 3)
    assert codec == "jpeg" and 2000 < int(size) < 40000 and shape.startswith("(1,")
