"""Numpy kernels behind the codecs: float narrowing (fp16, bf16), affine quantization (int8, and
int4 / int2 with their codes packed 2 / 4 to a byte), and the step quantizer of ``ecq`` (one
step per tensor from a target signal-to-noise ratio, int8 codes for zstd to entropy-code).

Pure numpy, no torch: the device client runs these without torch. Kernels work in float32 and
in place (``out=``) because they sit on the request path: at one core the whole encode of a
3 MB activation has a few milliseconds, and every temporary array costs a pass over memory.
Refusals (overflow, non-finite input) raise CodecError naming how many values and the first.
"""

from __future__ import annotations

import math

import numpy as np

from splitinfer.core.errors import CodecError

__all__ = [
    "F16_MAX", "BF16_MAX", "MIN_CHANNEL_ELEMENTS", "choose_axis", "to_float32",
    "f32_to_f16", "f32_to_bf16", "bf16_to_f32", "quantize", "dequantize", "pack", "unpack",
    "packed_nbytes", "snr_step", "quantize_step", "channels_pay", "quantize_layout",
    "CHANNEL_PARAM_BITS",
]

F16_MAX = 65504.0
#: |x| >= 65520 (half-way to 2**16) rounds to inf in fp16; anything below rounds to <= 65504.
_F16_INF_FROM = 65520.0
BF16_MAX = float(np.array(0x7F7F0000, np.uint32).view(np.float32))
#: float32 bit patterns with magnitude >= this round to inf in bf16 (round-to-nearest-even).
_BF16_INF_BITS = 0x7F7F8000
#: float64 values with |x| >= 2**128 - 2**103 (half an ulp over float32 max) round to inf.
_F32_INF_FROM = 2.0**128 - 2.0**103
_F32_TINY = np.float32(np.finfo(np.float32).tiny)

#: Fewer elements per channel than this and per-channel params (5 bytes each) cost more than
#: they save: quantize the whole tensor with one scale.
MIN_CHANNEL_ELEMENTS = 16
#: Bits one channel's parameters take on the wire: a float32 scale and a zero-point byte.
CHANNEL_PARAM_BITS = 40


def _first_bad(mask: np.ndarray, x: np.ndarray) -> str:
    """'N of M values, first at index (..) (value v)' for a boolean mask over x."""
    flat = int(np.argmax(mask.reshape(-1)))
    where = tuple(int(i) for i in np.unravel_index(flat, x.shape))
    return (f"{int(np.count_nonzero(mask))} of {x.size} values, first at index {where} "
            f"(value {x.reshape(-1)[flat].item()!r})")


def choose_axis(shape: tuple[int, ...]) -> int | None:
    """The channel axis int8 uses for a tensor of ``shape``, or None for one scale per tensor.

    Rank >= 4 is conv-like NCHW: channels on axis 1. Rank 3 is [batch, sequence, hidden]:
    channels on the last axis (hidden features have very different ranges; tokens do not).
    Rank <= 2, or fewer than MIN_CHANNEL_ELEMENTS elements per channel: per tensor.
    """
    if len(shape) < 3:
        return None
    axis = 1 if len(shape) >= 4 else 2
    n = math.prod(shape)
    if shape[axis] == 0 or n // shape[axis] < MIN_CHANNEL_ELEMENTS:
        return None
    return axis


def to_float32(x: np.ndarray, dtype: str, what: str) -> np.ndarray:
    """float32 view or copy of a float tensor (bfloat16 arrives as uint16 bits)."""
    if dtype == "float32":
        return x
    if dtype == "bfloat16":
        return bf16_to_f32(x)
    if dtype == "float64":
        return _narrow(x, np.float32, _F32_INF_FROM, "float32", what,
                       "use the raw codec to keep float64")
    return x.astype(np.float32)


def _narrow(x: np.ndarray, to: type, inf_from: float, label: str, what: str, fix: str
            ) -> np.ndarray:
    """x.astype(to), refusing finite values that would round to +-inf."""
    if x.size:
        lo, hi = x.min(), x.max()  # NaN propagates: a NaN or inf anywhere sends us to the check
        if not (-inf_from < lo and hi < inf_from):
            over = np.isfinite(x) & (np.abs(x) >= inf_from)
            if over.any():
                raise CodecError(f"{what}: {_first_bad(over, x)} overflow {label} "
                                 f"(they would become inf); {fix}")
    with np.errstate(over="ignore"):  # what is left rounds to the max, or was already inf
        return x.astype(to)


def f32_to_f16(x: np.ndarray, what: str) -> np.ndarray:
    """float32/float64 -> float16 (round to nearest even); NaN/inf kept, overflow refused."""
    return _narrow(x, np.float16, _F16_INF_FROM, f"fp16 (max {F16_MAX:g})", what,
                   "use bf16 (same range as float32) or fp32")


def f32_to_bf16(x: np.ndarray, what: str | None = None) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even; NaN/inf kept.

    With ``what`` set, finite values that would round to inf are refused; without it (the
    decoder, whose values come from an already accepted payload) they become inf.
    """
    x = np.asarray(x, dtype=np.float32, order="C")
    bits = x.reshape(-1).view(np.uint32)  # 1-d: ufuncs on 0-d arrays return scalars
    # RNE: add 0x7FFF plus the lowest kept bit, then drop the low 16 bits.
    r = np.right_shift(bits, 16)
    np.bitwise_and(r, 1, out=r)
    r += 0x7FFF
    r += bits  # a negative NaN can wrap around here; NaNs are rewritten below
    r >>= 16
    out = r.astype(np.uint16)
    if x.size and not (-BF16_MAX <= x.min() and x.max() <= BF16_MAX):  # NaN fails this too
        mag = bits & 0x7FFFFFFF
        if what is not None:
            over = (mag >= _BF16_INF_BITS) & (mag < 0x7F800000)
            if over.any():
                raise CodecError(f"{what}: {_first_bad(over, x)} overflow bf16 (they would "
                                 "become inf); use fp32")
        nan = mag > 0x7F800000
        if nan.any():  # keep a NaN a NaN (quiet it): rounding its bits could make it inf
            out[nan] = (np.right_shift(bits[nan], 16) | 0x0040).astype(np.uint16)
    return out.reshape(x.shape)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exact."""
    wide = bits.astype(np.uint32)
    wide <<= 16
    return wide.view(np.float32)


def _view3(shape: tuple[int, ...], axis: int | None) -> tuple[int, int, int]:
    """(outer, channels, inner) sizes of ``shape`` around ``axis``."""
    if axis is None:
        return 1, 1, math.prod(shape)
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    return outer, int(shape[axis]), inner


def _channel_minmax(x3: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Per-channel (min, max) of an (outer, channels, inner) array, widened to include 0.

    min is None when the whole tensor is >= 0 (post-ReLU): every widened min is 0 then, and
    a pass is saved. NaN propagates through min/max, so a NaN anywhere shows in the result.
    """
    outer, chans, inner = x3.shape
    flat = x3.reshape(-1)
    lo_all = flat.min()
    if chans == 1:
        return (None if lo_all >= 0 else np.minimum(lo_all, 0).reshape(1)), \
            np.maximum(flat.max(), 0).reshape(1)
    if inner == 1:  # channels last: reduce rows, no copy
        x2 = x3.reshape(outer, chans)
        mn = None if lo_all >= 0 else np.minimum(x2.min(axis=0), 0)
        mx = np.maximum(x2.max(axis=0), 0)
        return mn, mx
    # reduceat over contiguous runs is ~2x faster than min(axis=2) when runs are short
    starts = np.arange(0, flat.size, inner)
    mn = None if lo_all >= 0 else np.minimum(
        np.minimum.reduceat(flat, starts).reshape(outer, chans).min(axis=0), 0)
    mx = np.maximum(np.maximum.reduceat(flat, starts).reshape(outer, chans).max(axis=0), 0)
    return mn, mx


def quantize(x: np.ndarray, axis: int | None, what: str, bits: int = 8
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 ``x`` -> (uint8 codes, float32 scales, int zero points), per channel on ``axis``.

    q = clip(rint(x / scale) + zp, 0, L) with L = 2**bits - 1 (255 for int8, 15 for int4, 3
    for int2), min/max widened to include 0 so that zp is an integer code for 0.0 and zeros
    (post-ReLU) decode exactly. |x - x_hat| <= scale / 2 plus float32 rounding. Refuses
    NaN/inf: no scale can represent them. Codes stay one per byte here (``pack`` packs them).
    """
    outer, chans, inner = _view3(x.shape, axis)
    if x.size == 0:
        return np.empty(x.shape, np.uint8), np.ones(chans, np.float32), np.zeros(chans, np.int64)
    x3 = x.reshape(outer, chans, inner)
    mn, mx = _channel_minmax(x3)
    return _affine(x, x3, mn, mx, what, bits)


def channels_pay(mn: np.ndarray | None, mx: np.ndarray, per_channel: int) -> bool:
    """Whether one (scale, zero point) per channel is worth its bytes against one per tensor,
    for channels of ``per_channel`` elements with (0-widened) ranges ``mn``..``mx``.

    Rate-distortion at equal bits per element: a channel's rounding noise is proportional to
    its step squared, so per-channel steps divide the tensor's noise by
    D = C * span**2 / sum(span_c**2) (span: the whole tensor's range). Reaching the same noise
    per tensor would take log2(D) / 2 more bits on every one of the N elements; the channels'
    extra parameters cost CHANNEL_PARAM_BITS each for the C - 1 beyond the first. Per channel
    when N * log2(D) / 2 exceeds (C - 1) * CHANNEL_PARAM_BITS. Small tensors whose channels
    share a range (early-cut activations of a small CNN) go per tensor; hidden states with
    outlier features, whose range one channel sets, keep their channels. The bit width does
    not enter: at any width one more bit per element halves the step.
    """
    chans = mx.size
    if chans <= 1:
        return False
    span = mx.astype(np.float64) if mn is None else mx.astype(np.float64) - mn
    whole = float(mx.max()) - (0.0 if mn is None else float(mn.min()))  # float64: no overflow
    own = float(np.dot(span, span))
    if own == 0.0:
        return False  # every channel all zeros: one scale decodes them exactly
    gain_bits = per_channel * chans * math.log2(chans * whole * whole / own) / 2.0
    return gain_bits > (chans - 1) * CHANNEL_PARAM_BITS


def quantize_layout(x: np.ndarray, axis: int | None, what: str, bits: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """``quantize`` on ``axis``, or on the whole tensor where ``channels_pay`` says the
    per-channel parameters cost more than they save: (codes, scales, zero points, axis used).
    One min/max pass either way (the tensor's range is the channels' ranges' hull)."""
    if axis is None or x.size == 0:
        return (*quantize(x, axis, what, bits), axis)
    outer, chans, inner = _view3(x.shape, axis)
    x3 = x.reshape(outer, chans, inner)
    mn, mx = _channel_minmax(x3)
    if channels_pay(mn, mx, outer * inner):
        return (*_affine(x, x3, mn, mx, what, bits), axis)
    # NaN propagates through min/max: _affine's check still sees it
    lo = None if mn is None else mn.min(keepdims=True)
    return (*_affine(x, x.reshape(1, 1, -1), lo, mx.max(keepdims=True), what, bits), None)


def _affine(x: np.ndarray, x3: np.ndarray, mn: np.ndarray | None, mx: np.ndarray, what: str,
            bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``quantize``'s codes for x3 (outer, chans, inner) = x, given its per-channel ranges."""
    top = float((1 << bits) - 1)
    chans = x3.shape[1]
    if not np.isfinite(mx).all() or (mn is not None and not np.isfinite(mn).all()):
        raise CodecError(f"{what}: int{bits} cannot encode NaN/inf: "
                         f"{_first_bad(~np.isfinite(x), x)} are not finite; use fp16, bf16 or "
                         "fp32 for this tensor")
    # float64: max - min of two float32 extremes cannot overflow here
    span = mx.astype(np.float64) if mn is None else mx.astype(np.float64) - mn
    scales = (span / top).astype(np.float32)
    np.maximum(scales, _F32_TINY, out=scales)  # keeps 1/scale finite
    scales[span == 0] = 1.0  # an all-zero channel: any positive scale decodes it exactly
    inv = (np.float32(1) / scales).reshape(1, chans, 1)
    buf = np.multiply(x3, inv, out=np.empty(x3.shape, np.float32))
    if mn is None:
        # x in [0, max] and scale = max/L: x/scale <= L * (1 + 3 ulp), so rint stays
        # in [0, L] and zp = 0; no clip needed on this (post-ReLU) path
        zps = np.zeros(chans, np.int64)
        np.rint(buf, out=buf)
    else:
        zps = np.minimum(np.maximum(np.rint(-mn / scales), 0), top).astype(np.int64)
        np.add(buf, zps.astype(np.float32).reshape(1, chans, 1), out=buf)
        np.rint(buf, out=buf)
        np.clip(buf, 0, top, out=buf)
    return buf.astype(np.uint8).reshape(x.shape), scales, zps


def snr_step(mean_square: float, snr_db: float) -> float:
    """The uniform quantizer step whose rounding noise (variance step**2 / 12) sits ``snr_db``
    below a signal of mean square ``mean_square``: sqrt(12 * mean_square / 10**(snr_db / 10))."""
    return math.sqrt(12.0 * mean_square / 10.0 ** (snr_db / 10.0))


def quantize_step(x: np.ndarray, snr_db: float, what: str
                  ) -> tuple[np.ndarray, float, int]:
    """float32 ``x`` -> (uint8 codes, float32 step, zero point): one step for the whole tensor.

    The step is ``snr_step`` of x's mean square (rounding noise ``snr_db`` under the signal:
    the same absolute noise on every element, what minimizes the total squared error at a given
    entropy), widened to (max - min) / 255 where that is larger, so that every value has a code:
    nothing is clipped and |x - x_hat| <= step / 2 (plus float32 rounding), as for int8. The
    codes are int8's (q = rint(x / step) + zp, decoded (q - zp) * step): a coarse step leaves few
    distinct codes, mostly near zp, which zstd's entropy stage stores in a few bits each.
    Refuses NaN/inf like ``quantize``.
    """
    flat = x.reshape(-1)
    if flat.size == 0:
        return np.empty(x.shape, np.uint8), 1.0, 0
    lo, hi = flat.min(), flat.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise CodecError(f"{what}: ecq cannot encode NaN/inf: {_first_bad(~np.isfinite(x), x)} "
                         "are not finite; use fp16, bf16 or fp32 for this tensor")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    with np.errstate(over="ignore"):  # float32 BLAS: fast; overflows only past ~1e19
        square = float(np.dot(flat, flat))
    if not math.isfinite(square):
        wide = flat.astype(np.float64)
        square = float(np.dot(wide, wide))
    if hi - lo == 0.0:
        return np.zeros(x.shape, np.uint8), 1.0, 0  # all zeros: any step decodes them exactly
    step = np.float32(max(snr_step(square / flat.size, snr_db), (hi - lo) / 255.0))
    while (hi - lo) / float(step) > 255.0:  # float32 rounding took the step under the range
        step = np.nextafter(step, np.float32(np.inf))
    step = max(step, _F32_TINY)
    zp = int(min(max(round(-lo / float(step)), 0), 255))
    buf = np.multiply(flat, np.float32(1) / step, out=np.empty(flat.shape, np.float32))
    if zp:
        np.add(buf, np.float32(zp), out=buf)
    np.rint(buf, out=buf)
    np.clip(buf, 0, 255, out=buf)  # x / step may sit an ulp or two over 255 - zp
    return buf.astype(np.uint8).reshape(x.shape), float(step), zp


def dequantize(codes: np.ndarray, shape: tuple[int, ...], axis: int | None,
               scales: np.ndarray, zps: np.ndarray) -> np.ndarray:
    """uint8 codes -> float32 (q - zp) * scale; q == zp gives exactly 0.0."""
    outer, chans, inner = _view3(shape, axis)
    out = np.empty(shape, np.float32)
    if out.size == 0:
        return out
    q3 = codes.reshape(outer, chans, inner)
    o3 = out.reshape(outer, chans, inner)
    s3 = scales.astype(np.float32).reshape(1, chans, 1)
    if zps.any():
        np.subtract(q3, zps.astype(np.float32).reshape(1, chans, 1), out=o3)
        np.multiply(o3, s3, out=o3)
    else:
        np.multiply(q3, s3, out=o3)
    return out


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take packed (the last byte padded)."""
    return (count * bits + 7) // 8


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes < 2**bits (C order) -> packed bytes, 8 // bits codes a byte, the first code in
    the lowest bits; the last byte's unused high bits are 0. bits 8: the codes themselves."""
    flat = codes.reshape(-1)
    if bits == 8:
        return flat
    per = 8 // bits
    n = flat.size
    if n % per:
        flat = np.concatenate([flat, np.zeros(per - n % per, np.uint8)])
    groups = flat.reshape(-1, per)
    out: np.ndarray = groups[:, 0].copy()
    for i in range(1, per):
        out |= groups[:, i] << np.uint8(i * bits)
    return out


def unpack(packed: np.ndarray, count: int, bits: int, what: str) -> np.ndarray:
    """``pack``'s inverse: ``count`` uint8 codes. Padding bits that are not 0 mean the payload
    was not written by ``pack``: refused."""
    if bits == 8:
        return packed
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    used = count % per
    if used and packed.size and int(packed[-1]) >> (used * bits):
        raise CodecError(f"{what}: the last byte's padding bits are not 0 (byte "
                         f"{int(packed[-1]):#04x}, {used} of its {per} int{bits} codes used)")
    out = np.empty((packed.size, per), np.uint8)
    for i in range(per):
        np.bitwise_and(packed >> np.uint8(i * bits), mask, out=out[:, i])
    return out.reshape(-1)[:count]
