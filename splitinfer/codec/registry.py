"""Codecs for the tensors that cross a cut: tensor codecs (raw, fp32, fp16, bf16, int8, int4,
int2, each with or without zstd; ecq, entropy-coded step quantization) and image codecs (jpeg,
png, webp) for the camera frame itself.

A codec turns one tensor into an EncodedTensor (payload bytes plus the few params needed to
read them) and back. Names are "raw", "fp32", "fp16", "bf16", "int8", "int4", "int2", each also
with "+zstd", and "jpeg" (quality 90), "png", "webp" (quality 80); all live in one table, CODECS.
``get_codec("int8+zstd", level=3)`` sets the zstd level; ``get_codec("jpeg-q75")`` (or
``get_codec("jpeg", quality=75)``) another quality, 1..100. A payload travels under its base
name ("jpeg"): the decoder needs no quality. "ecq" is at 24 dB; ``get_codec("ecq-30db")`` (or
``get_codec("ecq", snr_db=30)``) sets another signal-to-noise ratio, 1..60 dB.

What each codec stores (little-endian, C order)
    raw   the tensor's own bytes, any dtype. Lossless.
    fp32  float32: lossless for float32/float16/bfloat16 tensors, rounds float64.
    fp16  float16, round to nearest even.
    bf16  bfloat16 (the top half of float32), round to nearest even.
    int8  uint8 codes q = clip(rint(x / scale) + zp, 0, 255), decoded as (q - zp) * scale in
          float32, one (scale, zp) per channel (axis rule: ``_quant.choose_axis``). zp is an
          integer, so 0.0 decodes to exactly 0.0: post-ReLU zeros stay zeros.
          |x - x_hat| <= scale / 2, plus float32 rounding (see ``error_bound``).
    int4  the same with 16 levels (codes 0..15, scale = range / 15), packed two codes a byte,
          the first in the low nibble; int2: 4 levels (0..3), four codes a byte, the first in
          the lowest bits. Their (scale, zp) go per tensor (axis None) instead of per channel
          where the channels' parameters would cost more bytes than the finer steps save
          (``_quant.channels_pay``: small tensors whose channels share a range). The last
          byte's unused bits are 0 (decode refuses others). Sub-byte codecs are opt-in:
          profiles and plans leave them out unless asked (their error is large enough that
          choosing them needs a fidelity budget, not bytes alone).
    ecq   entropy-coded quantization, an encoder over int8+zstd's wire format: ONE step for the
          whole tensor, from a target signal-to-noise ratio (the rounding noise, step**2 / 12,
          sits snr_db under the tensor's mean square), widened where needed so that every
          value has a uint8 code (nothing clipped). A coarse step leaves few distinct codes,
          clustered at the zero point, and zstd's entropy stage stores them in a few bits
          each: unlike int4/int2, outliers cost no resolution elsewhere, and the bytes follow
          the tensor's entropy instead of a fixed bit width. Its payloads travel as
          "int8+zstd" (axis None, one scale, one zero point): any int8+zstd decoder reads
          them, the wire does not change, and "ecq" itself is not a wire codec (decode
          refuses the name). |x - x_hat| <= step / 2, as for int8. Opt-in, like int4.
    jpeg  uint8 images (H, W), (H, W, C) or (N, H, W, C), C 1 or 3, NHWC (see ``_image``):
          lossy, no per-element bound; ``splitinfer fidelity`` measures what it does to answers
    png   the same, C also 4: lossless.    webp: like jpeg, C 3 or 4.
Image codecs carry only such images (``Codec.applies_to``); anything else is a CodecError, never
a silent fallback. Integer and bool tensors are never quantized by the tensor codecs: under every codec they travel as "raw" (or
"raw+zstd"), and so does a float tensor already no wider than the codec's format (float16
under fp32, bfloat16 under fp16). ``EncodedTensor.codec`` names what was really used.

NaN/inf policy: never silent corruption.
    raw, fp32   bit-exact, NaN payloads included (float64 under fp32: overflow is refused)
    fp16, bf16  NaN and +-inf kept; finite values that would round to +-inf are refused with
                a CodecError (fp16: |x| >= 65520, its max being 65504; it says to use bf16/fp32)
    int8/4/2, ecq   any NaN or inf is refused: CodecError says how many and where the first is

``decode`` trusts nothing: codec, dtype, shape, params and the zstd frame are checked against
``Limits`` before anything is allocated. Every refusal is a CodecError (LimitExceeded for the
size limits) naming the tensor, what was wrong and what was expected.

numpy only: a torch tensor is read through its own module (torch is never imported here;
``splitinfer.model.tensors.decode_torch`` decodes to torch). A bfloat16 tensor decodes to numpy
as uint16 holding the bf16 bits (numpy has no bfloat16).
"""

from __future__ import annotations

import operator
import sys
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from splitinfer.core.errors import CodecError, LimitExceeded
from splitinfer.core.spec import DTYPES, dtype_name

from . import _image, _quant, _zstd

__all__ = [
    "Limits", "EncodedTensor", "ErrorBound", "Codec", "CODECS", "get_codec", "list_codecs",
    "decode", "encoded_nbytes", "error_bound", "DEFAULT_LIMITS", "IMAGE_CODECS", "DEFAULT_SNR_DB",
]


@dataclass(frozen=True)
class Limits:
    """Hard limits a decoder enforces before it allocates anything."""

    max_rank: int = 8
    max_dim: int = 1 << 24
    max_elements: int = 1 << 28
    max_bytes: int = 1 << 30  # decoded bytes of one tensor


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor as it travels: original dtype/shape, the codec used, and the payload bytes.

    ``dtype`` is the dtype of the tensor before encoding (and after decoding). For ``int8``
    codecs, ``scales``/``zero_points`` hold the affine parameters, one per channel along
    ``axis`` (``axis is None``: one pair for the whole tensor).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    codec: str
    payload: bytes
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    axis: int | None = None

    @property
    def nbytes(self) -> int:
        """Bytes this tensor costs on the wire, framing aside: see ``encoded_nbytes``."""
        return encoded_nbytes(self)


@dataclass(frozen=True)
class ErrorBound:
    """``|x - x_hat| <= absolute + relative * |x|`` for every finite x of one encoded tensor."""

    absolute: float
    relative: float


@dataclass(frozen=True)
class _Format:
    """How one codec base stores elements. ``storage`` None: the tensor's own dtype."""

    storage: str | None
    native: str | None  # the float dtype this format holds unchanged
    relative: float  # rounding error of a normal value, relative
    absolute: float  # ... of a subnormal one: half the smallest step


_FORMATS: dict[str, _Format] = {
    "raw": _Format(None, None, 0.0, 0.0),
    "fp32": _Format("<f4", "float32", 2.0**-24, 2.0**-150),
    "fp16": _Format("<f2", "float16", 2.0**-11, 2.0**-25),
    "bf16": _Format("<u2", "bfloat16", 2.0**-8, 2.0**-134),
    "int8": _Format("u1", None, 0.0, 0.0),  # bound comes from the scales
    "int4": _Format("u1", None, 0.0, 0.0),  # codes packed two to a byte
    "int2": _Format("u1", None, 0.0, 0.0),  # ... four to a byte
}
#: the affine-quantized bases and their bits per code
_QUANT_BITS = {"int8": 8, "int4": 4, "int2": 2}
#: ecq's signal-to-noise ratio unless one is named, and the range it takes (integer dB). 24 dB:
#: output error about JPEG q90's on MobileNetV3-Small's early cuts (benchmarks/report)
DEFAULT_SNR_DB = 24
_SNR_RANGE = (1, 60)
_ECQ = "ecq"
_FLOATS = ("float32", "float16", "bfloat16", "float64")
# numpy has no bfloat16: its bits travel and decode as uint16
_NP_DTYPES = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "float64": "<f8",
              "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1",
              "bool": "?"}
_NP_NAMES = {np.dtype(v): k for k, v in _NP_DTYPES.items() if k != "bfloat16"}
DEFAULT_LIMITS = Limits()


def _what(name: object) -> str:
    text = repr(name)
    return f"tensor {text[:80] + '...' if len(text) > 80 else text}"


def _check_snr(snr_db: object) -> int:
    """ecq's signal-to-noise ratio as an int in dB; CodecError outside _SNR_RANGE."""
    if snr_db is None:
        return DEFAULT_SNR_DB
    low, high = _SNR_RANGE
    if isinstance(snr_db, bool) or not isinstance(snr_db, int) or not low <= snr_db <= high:
        raise CodecError(f"ecq snr_db {snr_db!r} is not supported; use an integer in "
                         f"{low}..{high} (dB of signal over rounding noise; higher: finer, "
                         "more bytes)")
    return snr_db


def _stored_base(base: str, dtype: str) -> str:
    """The base really used for a ``dtype`` tensor under ``base``: raw unless it narrows."""
    fmt = _FORMATS[base]
    if dtype not in _FLOATS or base == "raw":
        return "raw"
    if fmt.storage is not None and dtype != fmt.native \
            and DTYPES[dtype] <= np.dtype(fmt.storage).itemsize:
        return "raw"  # e.g. float16 under fp32: raw is smaller and exact
    return base


def _from_float32(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return x
    if dtype == "bfloat16":
        return _quant.f32_to_bf16(x)
    return x.astype(_NP_DTYPES[dtype])


def _to_storage(base: str, arr: np.ndarray, dtype: str, what: str, snr_db: int | None = None
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """(stored array, EncodedTensor params) of ``arr`` under ``base``; ``snr_db`` set: ecq's
    step quantizer (base is int8 then)."""
    if base == "raw" or dtype == _FORMATS[base].native:
        return arr, {}
    if base == "fp16" and dtype == "float64":
        return _quant.f32_to_f16(arr, what), {}  # direct: no double rounding
    x = _quant.to_float32(arr, dtype, what)
    if base == "fp32":
        return x, {}
    if base == "fp16":
        return _quant.f32_to_f16(x, what), {}
    if base == "bf16":
        return _quant.f32_to_bf16(x, what), {}
    if snr_db is not None:  # ecq: one step for the tensor, int8's codes
        codes, step, zp = _quant.quantize_step(x, float(snr_db), what)
        return codes, {"scales": (step,), "zero_points": (zp,), "axis": None}
    bits = _QUANT_BITS[base]
    axis = _quant.choose_axis(x.shape)
    if bits < 8:  # per tensor where the channels' params would cost more than they save
        codes, scales, zps, axis = _quant.quantize_layout(x, axis, what, bits)
    else:
        codes, scales, zps = _quant.quantize(x, axis, what, bits)
    codes = _quant.pack(codes, bits)
    zero_points = tuple(zps.tolist()) if zps.any() else (0,) * len(zps)  # post-ReLU: fast
    return codes, {"scales": tuple(scales.tolist()), "zero_points": zero_points, "axis": axis}


@dataclass(frozen=True)
class Codec:
    """One entry of CODECS: a storage format (``base``), then zstd at ``zstd_level`` or not;
    or an image format (jpeg, png, webp) at ``quality`` (lossy ones; None: the default); or
    ecq at ``snr_db`` (always with zstd)."""

    base: str
    zstd_level: int | None = None
    quality: int | None = None
    snr_db: int | None = None

    def __post_init__(self) -> None:
        if self.base == _ECQ:
            if self.quality is not None:
                raise CodecError("codec 'ecq' takes no quality; its knob is snr_db")
            object.__setattr__(self, "snr_db", _check_snr(self.snr_db))
            object.__setattr__(self, "zstd_level", _zstd.check_level(
                _zstd.DEFAULT_LEVEL if self.zstd_level is None else self.zstd_level))
            return
        if self.snr_db is not None:
            raise CodecError(f"codec {self.base!r} takes no snr_db (only ecq does)")
        if self.base in _image.BASES:
            if self.zstd_level is not None:
                raise CodecError(f"codec {self.base!r} is an image format; it has no zstd stage")
            object.__setattr__(self, "quality", _image.check_quality(self.base, self.quality))
            return
        if self.base not in _FORMATS:
            raise CodecError(f"unknown codec base {self.base!r}; known: "
                             f"{sorted(_FORMATS) + [_ECQ] + sorted(_image.BASES)}")
        if self.quality is not None:
            raise CodecError(f"codec {self.base!r} takes no quality (only jpeg and webp do)")
        if self.zstd_level is not None:
            _zstd.check_level(self.zstd_level)

    @property
    def name(self) -> str:
        if self.base == _ECQ:
            return _ECQ if self.snr_db == DEFAULT_SNR_DB else f"{_ECQ}-{self.snr_db}db"
        if self.base in _image.BASES:
            default = _image.DEFAULT_QUALITY.get(self.base)
            return self.base if self.quality == default else f"{self.base}-q{self.quality}"
        return self.base + ("+zstd" if self.zstd_level is not None else "")

    @property
    def bits(self) -> int | None:
        """Bits per element of an affine-quantized codec (int8: 8, int4: 4, int2: 2), else
        None."""
        return _QUANT_BITS.get(self.base)

    @property
    def opt_in(self) -> bool:
        """True for the codecs a profile measures only when asked (int4, int2, ecq): on bytes
        alone they would always win, and their error needs a fidelity budget to weigh it."""
        return self.base == _ECQ or (self.bits or 8) < 8

    @property
    def is_image(self) -> bool:
        """True for the image codecs (jpeg, png, webp): they carry uint8 NHWC frames only."""
        return self.base in _image.BASES

    @property
    def lossless(self) -> bool:
        """True when decode gives back the exact input (fp32: for any dtype but float64)."""
        return self.base in ("raw", "fp32", "png")

    def applies_to(self, dtype: str, shape: tuple[int, ...]) -> bool:
        """Whether this codec can carry a ``dtype`` tensor of ``shape``: the tensor codecs carry
        every tensor (integers as raw), the image codecs only uint8 images (see ``_image``)."""
        if self.base not in _image.BASES:
            return True
        return _image.fits(self.base, dtype, tuple(int(d) for d in shape))

    def carries(self, tensors: Sequence[Any]) -> bool:
        """Whether this codec can carry every one of ``tensors`` (numpy arrays or torch
        tensors), by ``applies_to``."""
        return all(self.applies_to(dtype_name(t), tuple(t.shape)) for t in tensors)

    def encode(self, tensor: Any, name: str = "tensor", *, dtype: str | None = None
               ) -> EncodedTensor:
        """Encode a numpy array or torch tensor.

        ``dtype="bfloat16"`` declares a numpy uint16/int16 array to hold bfloat16 bits.
        Raises CodecError for unsupported dtypes and for the NaN/inf/overflow refusals.
        """
        what = _what(name)
        arr, src = _as_numpy(tensor, dtype, what)
        if self.base in _image.BASES:
            return EncodedTensor(name=name, dtype=src, shape=tuple(int(d) for d in arr.shape),
                                 codec=self.base,
                                 payload=_image.encode(arr, self.base, self.quality, what))
        ecq = self.base == _ECQ
        base = _stored_base("int8" if ecq else self.base, src)
        stored, params = _to_storage(base, arr, src, what, self.snr_db if ecq else None)
        flat = np.ascontiguousarray(stored).reshape(-1).view(np.uint8)
        if self.zstd_level is not None:
            payload, codec = _zstd.compress(flat.data, self.zstd_level), base + "+zstd"
        else:
            payload, codec = flat.tobytes(), base
        return EncodedTensor(name=name, dtype=src, shape=tuple(int(d) for d in arr.shape),
                             codec=codec, payload=payload, **params)

    def decode(self, encoded: EncodedTensor, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
        """Same as module ``decode``: the codec to use is read from ``encoded.codec``."""
        return decode(encoded, limits)


#: Every codec by name, default zstd level and quality. The one place names are looked up
#: (``get_codec`` also reads "jpeg-qN" / "webp-qN" for the other qualities).
CODECS: Mapping[str, Codec] = {
    **{name: Codec(base, level)
       for base in _FORMATS
       for name, level in ((base, None), (base + "+zstd", _zstd.DEFAULT_LEVEL))},
    _ECQ: Codec(_ECQ, snr_db=DEFAULT_SNR_DB),
    **{base: Codec(base) for base in _image.BASES},
}

#: the image codecs a profile measures by default (edge-only candidates for a frame input):
#: the JPEG qualities a camera app would pick from, and lossless PNG
IMAGE_CODECS = ("jpeg-q95", "jpeg", "jpeg-q75", "jpeg-q50", "png")


def list_codecs() -> list[str]:
    """Names of every codec, e.g. ``["raw", "raw+zstd", "fp32", ..., "jpeg", "png", "webp"]``."""
    return list(CODECS)


def _lookup(name: object) -> Codec | None:
    """The codec called ``name``, including "jpeg-qN" / "webp-qN"; None if there is none."""
    if not isinstance(name, str):
        return None
    codec = CODECS.get(name)
    if codec is not None:
        return codec
    base, sep, q = name.partition("-q")
    if sep and base in _image.DEFAULT_QUALITY and q.isdigit() and len(q) <= 3:
        return replace(CODECS[base], quality=_image.check_quality(base, int(q)))
    base, sep, db = name.partition("-")
    if sep and base == _ECQ and db.endswith("db") and db[:-2].isdigit() and len(db) <= 5:
        return replace(CODECS[_ECQ], snr_db=_check_snr(int(db[:-2])))
    return None



def get_codec(name: str, level: int | None = None, quality: int | None = None,
              snr_db: int | None = None) -> Codec:
    """The codec called ``name``; ``level`` sets the zstd level of a "+zstd" codec (and of
    ecq), ``quality`` the quality of "jpeg" / "webp" (also written "jpeg-q75"), ``snr_db``
    ecq's signal-to-noise ratio (also written "ecq-30db")."""
    codec = _lookup(name)
    if codec is None:
        raise CodecError(f"unknown codec {name!r}; known codecs: {', '.join(CODECS)} "
                         "(and jpeg-qN / webp-qN for quality N in 1..100, ecq-Ndb for N in "
                         f"{_SNR_RANGE[0]}..{_SNR_RANGE[1]})")
    if snr_db is not None:
        if codec.base != _ECQ:
            raise CodecError(f"codec {name!r} takes no snr_db; only ecq does")
        codec = replace(codec, snr_db=_check_snr(snr_db))
    if quality is not None:
        if codec.base not in _image.DEFAULT_QUALITY:
            raise CodecError(f"codec {name!r} takes no quality; only jpeg and webp do")
        codec = replace(codec, quality=_image.check_quality(codec.base, quality))
    if level is None:
        return codec
    if codec.base == _ECQ:
        return replace(codec, zstd_level=_zstd.check_level(level))
    if codec.zstd_level is None:
        raise CodecError(f"codec {name!r} has no zstd stage, so no level; use '{name}+zstd'")
    return replace(codec, zstd_level=_zstd.check_level(level))


def _as_numpy(tensor: Any, dtype: str | None, what: str) -> tuple[np.ndarray, str]:
    """(contiguous little-endian array, dtype name); bfloat16 as uint16 bits."""
    if type(tensor).__module__.split(".")[0] == "torch":
        # the tensor's own module: whoever made the tensor imported torch, so the codec
        # reads it without importing torch itself (the layer rules keep torch out of here)
        torch = sys.modules["torch"]
        t = tensor.detach().cpu()
        src = str(t.dtype).removeprefix("torch.")
        arr = t.view(torch.int16).numpy().view(np.uint16) if src == "bfloat16" else t.numpy()
    elif isinstance(tensor, (np.ndarray, np.generic)):
        arr = np.asarray(tensor)
        src = _NP_NAMES.get(arr.dtype) or arr.dtype.name  # .name is slow (~8 us)
        if dtype == "bfloat16" and arr.dtype.kind in "iu" and arr.dtype.itemsize == 2:
            arr, src = arr.view(np.uint16), "bfloat16"
    else:
        raise CodecError(f"{what}: cannot encode a {type(tensor).__name__}; "
                         "pass a numpy array or a torch tensor")
    if dtype is not None and dtype != src:
        raise CodecError(f"{what}: declared dtype {dtype!r} but the array is {src}; "
                         "dtype= only declares uint16/int16 arrays as 'bfloat16'")
    if src not in DTYPES:
        raise CodecError(f"{what}: dtype {src} is not supported; supported: {sorted(DTYPES)}")
    return np.asarray(arr, dtype=_NP_DTYPES[src], order="C"), src  # keeps 0-d arrays 0-d


# ----------------------------------------------------------------------------- decoding

def _check_header(e: EncodedTensor, limits: Limits, what: str
                  ) -> tuple[str, bool, tuple[int, ...], int]:
    """Codec, dtype and shape checks: (base, zstd?, shape, element count)."""
    codec = _lookup(e.codec)
    if codec is None:
        raise CodecError(f"{what}: unknown codec {e.codec!r}; known codecs: {', '.join(CODECS)}")
    if codec.base == _ECQ:
        raise CodecError(f"{what}: codec {e.codec!r} is an encoder setting, not a wire codec: "
                         "its payloads travel as 'int8+zstd'")
    if not isinstance(e.dtype, str) or e.dtype not in DTYPES:
        raise CodecError(f"{what}: unknown dtype {e.dtype!r}; known: {sorted(DTYPES)}")
    if codec.is_image:
        if e.dtype != "uint8":
            raise CodecError(f"{what}: codec {e.codec!r} carries uint8 images, not {e.dtype}")
    elif codec.base != "raw" and e.dtype not in _FLOATS:
        raise CodecError(f"{what}: codec {e.codec!r} is for float tensors, not {e.dtype}; "
                         "integer and bool tensors travel as 'raw' or 'raw+zstd'")
    if not isinstance(e.shape, (tuple, list)):
        raise CodecError(f"{what}: shape must be a tuple of ints, got {type(e.shape).__name__}")
    if len(e.shape) > limits.max_rank:
        raise LimitExceeded(f"{what}: rank {len(e.shape)} is over the limit {limits.max_rank}")
    try:
        shape = tuple(operator.index(d) for d in e.shape)
    except TypeError as err:
        raise CodecError(f"{what}: shape {e.shape!r} must hold only ints") from err
    numel = 1
    for d in shape:
        if d < 0:
            raise CodecError(f"{what}: shape {shape} has a negative dim; dims are >= 0")
        if d > limits.max_dim:
            raise LimitExceeded(f"{what}: dim {d} of shape {shape} is over the limit "
                                f"{limits.max_dim}")
        numel *= d
    if numel > limits.max_elements:
        raise LimitExceeded(f"{what}: shape {shape} has {numel} elements; the limit is "
                            f"{limits.max_elements}")
    if numel * DTYPES[e.dtype] > limits.max_bytes:
        raise LimitExceeded(f"{what}: shape {shape} of {e.dtype} decodes to "
                            f"{numel * DTYPES[e.dtype]} bytes; the limit is {limits.max_bytes}")
    return codec.base, codec.zstd_level is not None, shape, numel


def _check_params(e: EncodedTensor, base: str, shape: tuple[int, ...], what: str
                  ) -> tuple[int | None, np.ndarray, np.ndarray]:
    """int8/int4/int2 params as (axis, float32 scales, zero points); none allowed for other
    codecs."""
    if base not in _QUANT_BITS:
        if len(e.scales) or len(e.zero_points) or e.axis is not None:
            raise CodecError(f"{what}: codec {e.codec!r} takes no scales, zero points or axis")
        return None, np.empty(0, np.float32), np.empty(0, np.int64)
    axis, rank = e.axis, len(shape)
    if axis is not None:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) \
                or not -rank <= axis < rank:
            raise CodecError(f"{what}: axis {axis!r} is out of range for rank {rank}; "
                             f"expected None or an int in [{-rank}, {rank})")
        axis = int(axis) % rank  # negative axes (numpy style) count from the end
    count = 1 if axis is None else shape[axis]
    if len(e.scales) != count or len(e.zero_points) != count:
        raise CodecError(f"{what}: {len(e.scales)} scales and {len(e.zero_points)} zero points; "
                         f"axis {axis} of shape {shape} needs {count} of each")
    try:
        with np.errstate(over="ignore"):  # 1e300 -> inf, refused just below
            scales = np.asarray(e.scales, dtype=np.float64).astype(np.float32)
    except (TypeError, ValueError) as err:
        raise CodecError(f"{what}: scales must be numbers") from err
    bad = ~(np.isfinite(scales) & (scales > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise CodecError(f"{what}: scale {i} is {e.scales[i]!r}; scales must be finite and > 0 "
                         "in float32")
    top = (1 << _QUANT_BITS[base]) - 1
    zps = np.asarray(e.zero_points) if count else np.empty(0, np.int64)
    if zps.dtype.kind not in "iu" or (count and not (zps.min() >= 0 and zps.max() <= top)):
        raise CodecError(f"{what}: zero points must be ints in [0, {top}] for {base}; "
                         f"got {list(e.zero_points[:8])}{'...' if count > 8 else ''}")
    return axis, scales, zps.astype(np.int64)


def _stored_nbytes(base: str, dtype: str, numel: int) -> int:
    """Bytes of the uncompressed payload of ``numel`` elements of ``dtype`` under ``base``."""
    bits = _QUANT_BITS.get(base)
    if bits is not None:
        return _quant.packed_nbytes(numel, bits)
    return numel * np.dtype(_FORMATS[base].storage or _NP_DTYPES[dtype]).itemsize


def _read_payload(e: EncodedTensor, zstd: bool, expected: int, what: str) -> Any:
    if not isinstance(e.payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"{what}: payload must be bytes, got {type(e.payload).__name__}")
    if zstd:
        return _zstd.decompress(e.payload, expected, what)
    size = memoryview(e.payload).nbytes
    if size != expected:
        raise CodecError(f"{what}: payload is {size} bytes; codec {e.codec!r} with shape "
                         f"{tuple(e.shape)} of {e.dtype} needs exactly {expected}")
    return e.payload


def check(encoded: EncodedTensor, limits: Limits = DEFAULT_LIMITS) -> None:
    """The checks ``decode`` makes before it reads the payload: codec, dtype, shape against
    ``limits``, quantization parameters, and an uncompressed payload's length. Cheap (no
    payload is read), so a server can refuse a bad tensor before it queues the work."""
    what = _what(encoded.name)
    base, zstd, shape, numel = _check_header(encoded, limits, what)
    _check_params(encoded, base, shape, what)
    if base not in _image.BASES and not zstd:
        _read_payload(encoded, False, _stored_nbytes(base, encoded.dtype, numel), what)


def decode(encoded: EncodedTensor, limits: Limits = DEFAULT_LIMITS, *,
           copy: bool = True) -> np.ndarray:
    """Check, then decode one tensor to a numpy array of its original dtype and shape.

    bfloat16 decodes to uint16 bits (``splitinfer.model.tensors.decode_torch`` gives a
    real bfloat16 tensor). The array is new, except with ``copy=False`` where the payload
    already holds the values as they are (raw or fp32 of a float32 tensor, uncompressed): then
    it is a read-only view of the payload, no copy made.
    """
    what = _what(encoded.name)
    base, zstd, shape, numel = _check_header(encoded, limits, what)
    axis, scales, zps = _check_params(encoded, base, shape, what)
    if base in _image.BASES:
        if not isinstance(encoded.payload, (bytes, bytearray, memoryview)):
            raise CodecError(f"{what}: payload must be bytes, got "
                             f"{type(encoded.payload).__name__}")
        return _image.decode(encoded.payload, base, shape, what)
    buf = _read_payload(encoded, zstd, _stored_nbytes(base, encoded.dtype, numel), what)
    bits = _QUANT_BITS.get(base)
    if bits is not None:
        packed = np.frombuffer(buf, np.uint8, count=_quant.packed_nbytes(numel, bits))
        codes = _quant.unpack(packed, numel, bits, what).reshape(shape)
        return _from_float32(_quant.dequantize(codes, shape, axis, scales, zps), encoded.dtype)
    storage = _FORMATS[base].storage or _NP_DTYPES[encoded.dtype]
    stored = np.frombuffer(buf, dtype=storage, count=numel).reshape(shape)
    if encoded.dtype == "bool" and numel and stored.view(np.uint8).max() > 1:
        raise CodecError(f"{what}: bool payload holds bytes other than 0 and 1")
    if base == "raw" or encoded.dtype == _FORMATS[base].native:
        if not copy and not zstd:
            return stored  # a read-only view of the payload
        own: np.ndarray = stored.copy()  # frombuffer views are read-only; callers get their own
        return own
    if base == "bf16":
        x = _quant.bf16_to_f32(stored)
    else:
        x = stored.astype(np.float32)
    return _from_float32(x, encoded.dtype)


def encoded_nbytes(encoded: EncodedTensor) -> int:
    """Payload bytes + 4 per scale + 1 per zero point (the wire adds a little framing)."""
    return len(encoded.payload) + 4 * len(encoded.scales) + len(encoded.zero_points)


def error_bound(encoded: EncodedTensor) -> ErrorBound:
    """A bound on ``|x - decode(encoded)|`` for finite x; (0, 0) when lossless."""
    base = encoded.codec.removesuffix("+zstd").partition("-q")[0]
    if base in _image.BASES:
        # lossy images have no per-element bound: any pixel may move by up to 255
        return ErrorBound(0.0, 0.0) if base == "png" else ErrorBound(255.0, 0.0)
    fmt = _FORMATS[base]
    if base == "raw" or encoded.dtype == fmt.native:
        return ErrorBound(0.0, 0.0)
    # a decoded float32 value is rounded once more to a narrower original dtype
    back = {"float16": 2.0**-11, "bfloat16": 2.0**-8}.get(encoded.dtype, 0.0)
    if base in _QUANT_BITS:
        # rint gives scale/2; x * (1/scale) in float32 adds ~255 * 2**-23 codes (fewer with
        # fewer levels); decode's multiply rounds once more (relative 2**-24)
        half = max(encoded.scales, default=0.0) * (0.5 + 2.0**-14)
        return ErrorBound(half * (1 + back), 2.0**-24 + back)
    if base == "fp32" and encoded.dtype != "float64":
        return ErrorBound(0.0, 0.0)
    double = 2.0**-24 if (base == "bf16" and encoded.dtype == "float64") else 0.0
    return ErrorBound(fmt.absolute, fmt.relative + double + back)

