"""Codec registry, round trips, error bounds, NaN/inf policy and golden bytes."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitinfer.codec import (
    CODECS,
    Codec,
    EncodedTensor,
    ErrorBound,
    decode,
    encoded_nbytes,
    error_bound,
    get_codec,
    list_codecs,
)
from splitinfer.core.errors import CodecError
from splitinfer.model.tensors import decode_torch

pytestmark = pytest.mark.unit

ALL = ["raw", "raw+zstd", "fp32", "fp32+zstd", "fp16", "fp16+zstd", "bf16", "bf16+zstd",
       "int8", "int8+zstd", "int4", "int4+zstd", "int2", "int2+zstd", "ecq"]
INT_DTYPES = [np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _assert_within_bound(x: np.ndarray, y: np.ndarray, enc: EncodedTensor) -> None:
    b = error_bound(enc)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    err = np.abs(x64 - y64)
    assert (err <= b.absolute + b.relative * np.abs(x64)).all(), (enc.codec, err.max(), b)


# ---------------------------------------------------------------- registry


def test_every_codec_is_listed_and_looked_up_in_one_table():
    # ALL: the tensor codecs (the image codecs have their own tests: test_codec_image.py)
    assert list_codecs() == ALL + ["jpeg", "png", "webp"]
    assert list(CODECS) == list_codecs()
    for name in list_codecs():
        assert get_codec(name).name == name
    assert get_codec("int8+zstd").zstd_level == 1
    assert get_codec("int8").zstd_level is None


def test_unknown_codec_names_the_known_ones():
    with pytest.raises(CodecError, match="unknown codec 'int3'.*int8\\+zstd"):
        get_codec("int3")


def test_zstd_level_is_configurable():
    codec = get_codec("int8+zstd", level=3)
    assert codec.zstd_level == 3 and codec.name == "int8+zstd"
    x = np.abs(_rng().normal(size=(1, 8, 8, 8))).astype(np.float32)
    assert np.array_equal(decode(codec.encode(x)), decode(get_codec("int8+zstd").encode(x)))
    with pytest.raises(CodecError, match="no zstd stage.*int8\\+zstd"):
        get_codec("int8", level=3)
    with pytest.raises(CodecError, match="zstd level 99"):
        get_codec("raw+zstd", level=99)
    with pytest.raises(CodecError, match="unknown codec base"):
        Codec("int3")


def test_lossless_flag():
    assert {n for n, c in CODECS.items() if c.lossless} == {"raw", "raw+zstd", "fp32",
                                                            "fp32+zstd", "png"}


def test_codec_module_does_not_import_torch():
    code = ("import sys, numpy as np; import splitinfer.codec as c; "
            "e = c.get_codec('int8+zstd').encode(np.ones((2, 3), np.float32)); c.decode(e); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_codecs_are_safe_to_share_between_threads():
    xs = [np.abs(_rng(i).normal(size=(1, 16, 32, 32))).astype(np.float32) for i in range(8)]
    codec = get_codec("int8+zstd")
    expected = [codec.encode(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(codec.encode, xs)) == expected
            decoded = list(pool.map(decode, expected))
            assert all(np.array_equal(d, decode(e)) for d, e in zip(decoded, expected))


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_float_round_trip_within_bound(name, dtype):
    x = (_rng().normal(size=(2, 16, 5, 5)) * 3).astype(dtype)
    enc = get_codec(name).encode(x, "h")
    y = decode(enc)
    assert y.dtype == x.dtype and y.shape == x.shape and y.flags.writeable
    _assert_within_bound(x, y, enc)
    if get_codec(name).lossless and dtype != np.float64:
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8))


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_round_trip_via_torch(name):
    t = (torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)) * 5).bfloat16()
    enc = get_codec(name).encode(t, "b")
    assert enc.dtype == "bfloat16"
    y = decode_torch(enc)
    assert y.dtype == torch.bfloat16 and tuple(y.shape) == tuple(t.shape)
    _assert_within_bound(t.float().numpy(), y.float().numpy(), enc)
    if name.split("+")[0] in ("raw", "fp32", "fp16", "bf16"):  # bf16 is never widened or
        assert torch.equal(y, t)                                  # narrowed by these
    bits = decode(enc)
    assert bits.dtype == np.uint16  # numpy has no bfloat16: the bits


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_integer_and_bool_tensors_travel_raw_under_every_codec(name, dtype):
    if dtype == np.bool_:
        x = _rng().random((3, 17)) > 0.5
    else:
        info = np.iinfo(dtype)
        x = _rng().integers(info.min, info.max, size=(3, 17), dtype=dtype, endpoint=True)
    enc = get_codec(name).encode(x)
    assert enc.codec == ("raw+zstd" if get_codec(name).zstd_level is not None else "raw")
    assert enc.scales == () and enc.zero_points == () and enc.axis is None
    y = decode(enc)
    assert y.dtype == x.dtype and np.array_equal(x, y)
    assert torch.equal(decode_torch(enc), torch.from_numpy(x))


def test_bert_like_inputs_under_int8():
    ids = torch.randint(0, 30522, (2, 128), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 128, dtype=torch.int64)
    for t in (ids, mask, mask.bool()):
        enc = get_codec("int8+zstd").encode(t, "input_ids")
        assert enc.codec == "raw+zstd"
        assert torch.equal(decode_torch(enc), t)


@pytest.mark.parametrize("src, codec, stored", [
    ("float16", "fp32", "raw"), ("bfloat16", "fp32", "raw"), ("bfloat16", "fp16", "raw"),
    ("float16", "bf16", "raw"), ("float32", "fp32", "fp32"), ("float16", "fp16", "fp16"),
    ("float64", "fp32", "fp32"), ("float16", "int8", "int8"),
])
def test_float_codec_never_widens(src, codec, stored):
    t = torch.randn(4, 4).to(getattr(torch, src))
    enc = get_codec(codec).encode(t)
    assert enc.codec == stored


def test_torch_input_encodes_like_numpy_input():
    x = np.abs(_rng().normal(size=(1, 32, 9, 9))).astype(np.float32)
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    for name in ALL:
        assert get_codec(name).encode(t, "x") == get_codec(name).encode(x, "x")
    tt = torch.from_numpy(x).permute(0, 2, 3, 1)  # non-contiguous
    assert decode(get_codec("fp32").encode(tt)).tolist() == tt.numpy().tolist()


def test_numpy_bfloat16_bits_can_be_declared():
    t = torch.randn(3, 5).bfloat16()
    bits = t.view(torch.int16).numpy().view(np.uint16)
    enc = get_codec("bf16").encode(bits, dtype="bfloat16")
    assert enc == get_codec("bf16").encode(t)
    assert np.array_equal(decode(enc), bits)
    with pytest.raises(CodecError, match="uint16"):
        get_codec("bf16").encode(bits)  # undeclared uint16 is not a supported dtype
    with pytest.raises(CodecError, match="declared dtype"):
        get_codec("bf16").encode(np.zeros(3, np.float32), dtype="bfloat16")


def test_unsupported_inputs_are_refused():
    with pytest.raises(CodecError, match="complex64.*supported"):
        get_codec("raw").encode(np.zeros(3, np.complex64))
    with pytest.raises(CodecError, match="numpy array or a torch tensor"):
        get_codec("raw").encode([1.0, 2.0])


def test_big_endian_and_scalar_inputs():
    x = np.arange(6, dtype=">f4").reshape(2, 3)
    enc = get_codec("fp32").encode(x)
    assert enc.payload == np.arange(6, dtype="<f4").tobytes()
    assert np.array_equal(decode(enc), x)
    s = get_codec("int8").encode(np.float32(2.5))
    assert s.shape == () and abs(float(decode(s)) - 2.5) <= s.scales[0] / 2


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3), (1, 0, 4, 4), (0, 8, 16)])
@pytest.mark.parametrize("name", ALL)
def test_empty_tensors(name, shape):
    x = np.zeros(shape, np.float32)
    y = decode(get_codec(name).encode(x))
    assert y.shape == shape and y.dtype == np.float32


# ---------------------------------------------------------------- int8


@pytest.mark.parametrize("shape, axis", [
    ((1, 64, 56, 56), 1), ((2, 8, 4, 4), 1), ((1, 3, 4, 4, 4), 1), ((2, 16, 768), 2),
    ((4, 512), None), ((512,), None), ((1, 512, 1, 1), None), ((1, 8, 3, 3), None),
    ((1, 1, 768), None), ((), None),
])
def test_int8_axis_rule(shape, axis):
    enc = get_codec("int8").encode(np.ones(shape, np.float32))
    assert enc.axis == axis
    assert len(enc.scales) == len(enc.zero_points) == (1 if axis is None else shape[axis])


@pytest.mark.parametrize("shape", [(1, 16, 8, 8), (3, 5, 20), (7, 33), (2, 4, 2, 3, 5)])
def test_int8_error_is_at_most_half_a_step_per_channel(shape):
    x = (_rng(1).normal(size=shape) * _rng(2).uniform(0.01, 100, size=shape[-1])
         ).astype(np.float32)
    enc = get_codec("int8").encode(x)
    y = decode(enc)
    scales = np.asarray(enc.scales, np.float64)
    if enc.axis is not None:
        bshape = [1] * x.ndim
        bshape[enc.axis] = -1
        scales = scales.reshape(bshape)
    err = np.abs(x.astype(np.float64) - y)
    assert (err <= scales * 0.5 * (1 + 1e-4) + 1e-6 * np.abs(x)).all()
    assert all(np.float32(s) == s and s > 0 for s in enc.scales)  # float32-representable


def test_int8_post_relu_zeros_are_exact():
    x = np.maximum(_rng().normal(size=(1, 32, 14, 14)), 0).astype(np.float32)
    assert (x == 0).mean() > 0.3
    enc = get_codec("int8+zstd").encode(x)
    y = decode(enc)
    assert set(enc.zero_points) == {0}
    assert (y[x == 0] == 0).all() and (y >= 0).all()


def test_int8_mixed_sign_zeros_are_exact_too():
    x = _rng().normal(size=(2, 8, 6, 6)).astype(np.float32)
    x[:, :, ::2] = 0
    enc = get_codec("int8").encode(x)
    y = decode(enc)
    assert any(z not in (0, 255) for z in enc.zero_points)
    assert (y[x == 0] == 0).all()


def test_int8_constant_and_all_zero_channels():
    x = np.zeros((1, 4, 5, 5), np.float32)
    x[0, 1] = 7.5
    x[0, 2] = -3.0
    x[0, 3] = 1e-42  # subnormal: the scale must not underflow to 0
    enc = get_codec("int8").encode(x)
    assert all(np.isfinite(s) and s > 0 for s in enc.scales)
    y = decode(enc)
    assert (y[0, 0] == 0).all()
    assert np.allclose(y[0, 1], 7.5, rtol=0, atol=enc.scales[1] / 2)
    assert np.allclose(y[0, 2], -3.0, rtol=0, atol=enc.scales[2] / 2)


def test_int8_extreme_ranges():
    x = np.array([[-3.0e38, 3.0e38, 1.0, 0.0]], np.float32)
    y = decode(get_codec("int8").encode(x))
    assert np.isfinite(y).all() and y[0, 3] == 0


# ---------------------------------------------------------------- NaN / inf policy


SPECIALS = np.array([np.nan, np.inf, -np.inf, 1.5, 0.0, -0.0], np.float32)


@pytest.mark.parametrize("name", ["raw", "fp32", "raw+zstd", "fp32+zstd"])
def test_lossless_codecs_keep_nan_inf_bit_exact(name):
    x = np.concatenate([SPECIALS, np.array([0x7FC00123, 0xFF800001], np.uint32).view(np.float32)])
    y = decode(get_codec(name).encode(x))
    assert np.array_equal(x.view(np.uint32), y.view(np.uint32))


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp16+zstd", "bf16+zstd"])
def test_narrow_floats_keep_nan_and_inf(name):
    neg_nan = np.array([0xFFFFFFFF, 0x7F800001], np.uint32).view(np.float32)  # tricky NaNs
    x = np.concatenate([SPECIALS, neg_nan])
    y = decode(get_codec(name).encode(x))
    assert np.isnan(y[[0, 6, 7]]).all()
    assert y[1] == np.inf and y[2] == -np.inf and y[3] == 1.5
    assert np.signbit(y[5]) and y[4] == 0


def test_fp16_refuses_overflow_and_says_what_to_use():
    x = np.array([1.0, 70000.0, -1e6, np.inf], np.float32)
    with pytest.raises(CodecError, match=r"2 of 4 values, first at index \(1,\).*fp16.*bf16"):
        get_codec("fp16").encode(x, "act")
    ok = np.array([65504.0, 65519.0, -65519.0], np.float32)  # rounds to the fp16 max
    assert decode(get_codec("fp16").encode(ok)).tolist() == [65504.0, 65504.0, -65504.0]
    with pytest.raises(CodecError, match="fp16"):
        get_codec("fp16").encode(np.array([65520.0], np.float32))


def test_bf16_refuses_overflow():
    x = np.array([1.0, 3.4e38], np.float32)  # rounds up past the bf16 max
    with pytest.raises(CodecError, match="overflow bf16.*fp32"):
        get_codec("bf16").encode(x)
    assert decode(get_codec("bf16").encode(np.array([3.38e38], np.float32)))[0] < np.inf


def test_float64_under_fp32_refuses_overflow():
    with pytest.raises(CodecError, match="float32.*raw"):
        get_codec("fp32").encode(np.array([1.0, 1e39]))
    y = decode(get_codec("fp32").encode(np.array([np.nan, -np.inf, 1e-300])))
    assert np.isnan(y[0]) and y[1] == -np.inf and y[2] == 0


def test_int8_refuses_nan_and_inf_naming_count_and_place():
    x = np.ones((1, 4, 4, 4), np.float32)
    x[0, 2, 1, 3] = np.nan
    x[0, 3, 0, 0] = -np.inf
    with pytest.raises(CodecError, match=r"act.*NaN/inf.*2 of 64 values, first at index "
                                         r"\(0, 2, 1, 3\)"):
        get_codec("int8+zstd").encode(x, "act")


def test_bf16_rounding_matches_torch():
    x = torch.randn(10000, generator=torch.Generator().manual_seed(0)) * 1e3
    x[:4] = torch.tensor([1.00390625, 1.01171875, -1.00390625, 2.0**-130])  # ties, subnormal
    ours = decode_torch(get_codec("bf16").encode(x))
    assert torch.equal(ours, x.bfloat16().float())


# ---------------------------------------------------------------- sizes and bounds


def test_encoded_nbytes_counts_payload_and_params():
    x = np.abs(_rng().normal(size=(1, 16, 8, 8))).astype(np.float32)
    enc = get_codec("int8").encode(x)
    assert encoded_nbytes(enc) == enc.nbytes == 16 * 64 + 16 * 4 + 16
    assert get_codec("fp16").encode(x).nbytes == x.size * 2


def test_error_bounds():
    x = np.ones((4, 4), np.float32)
    assert error_bound(get_codec("fp32+zstd").encode(x)) == ErrorBound(0.0, 0.0)
    assert error_bound(get_codec("raw").encode(x)).absolute == 0
    assert error_bound(get_codec("fp16").encode(x)).relative == 2.0**-11
    assert error_bound(get_codec("bf16").encode(x)).relative == 2.0**-8
    enc = get_codec("int8").encode(x * 3)
    assert error_bound(enc).absolute >= max(enc.scales) / 2


# ---------------------------------------------------------------- golden bytes

GOLDEN_X = np.array([[0.0, 1.0, -2.5], [3.25, 0.1, -0.0]], np.float32)
GOLDEN = {  # codec: (payload hex, scales, zero points, axis)
    "raw": ("000000000000803f000020c000005040cdcccc3d00000080", (), (), None),
    "fp32": ("000000000000803f000020c000005040cdcccc3d00000080", (), (), None),
    "fp16": ("0000003c00c18042662e0080", (), (), None),
    "bf16": ("0000803f20c05040cd3d0080", (), (), None),
    "int8": ("6f9b00ff736f", (0.022549020126461983,), (111,), None),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_bytes(name):
    hexpayload, scales, zps, axis = GOLDEN[name]
    enc = get_codec(name).encode(GOLDEN_X, "g")
    assert (enc.payload.hex(), enc.scales, enc.zero_points, enc.axis) == GOLDEN[name]
    assert enc.dtype == "float32" and enc.shape == (2, 3) and enc.codec == name
    # +zstd: the same bytes inside one frame that declares its size (zstd output itself may
    # change between zstd versions, so it is not pinned)
    z = get_codec(name + "+zstd").encode(GOLDEN_X, "g")
    assert zstandard.frame_content_size(z.payload) == len(enc.payload)
    assert zstandard.ZstdDecompressor().decompress(z.payload) == enc.payload
    assert (z.scales, z.zero_points, z.axis) == (scales, zps, axis)


def test_golden_int8_decode_values():
    enc = EncodedTensor("g", "float32", (2, 3), "int8", bytes.fromhex("6f9b00ff736f"),
                        (0.022549020126461983,), (111,))
    expected = (np.array([[0, 44, -111], [144, 4, 0]], np.float32)
                * np.float32(0.022549020126461983))
    assert np.array_equal(decode(enc), expected)


def test_golden_per_channel_int8():
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    x[0, 1] *= -0.5
    enc = get_codec("int8").encode(x)
    assert enc.payload.hex() == ("00112233445566778899aabbccddeeff"
                                 "7b736b635a524a423a31292119100800")
    assert enc.scales == (0.05882352963089943, 0.06078431382775307)
    assert enc.zero_points == (0, 255) and enc.axis == 1


def test_golden_bf16_specials():
    x = np.array([1.0, 1.00390625, 1.01171875, np.nan, -np.inf, 3.0e38, -1.5e-40], np.float32)
    assert get_codec("bf16").encode(x).payload.hex() == "803f803f823fc07f80ff627f0280"


def test_golden_zstd_frame_decodes():
    # a frame made by zstd 1.5 (int8+zstd of GOLDEN_X): older frames must keep decoding
    frame = bytes.fromhex("28b52ffd24063100006f9b00ff736f88ac02bb")
    enc = EncodedTensor("g", "float32", (2, 3), "int8+zstd", frame, (0.022549020126461983,),
                        (111,))
    assert np.array_equal(decode(enc), decode(get_codec("int8").encode(GOLDEN_X)))


# ---------------------------------------------------------------- properties

_shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7)
_floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=hnp.arrays(np.float32, _shapes, elements=_floats), name=st.sampled_from(ALL))
def test_property_round_trip_or_policy_refusal(x, name):
    base = name.split("+")[0]
    finite = np.isfinite(x)
    try:
        enc = get_codec(name).encode(x, "p")
    except CodecError as e:
        if base in ("int8", "int4", "int2", "ecq"):
            assert not finite.all() and "NaN/inf" in str(e)
        elif base == "fp16":
            assert (np.abs(x[finite]) >= 65520).any() and "overflow" in str(e)
        elif base == "bf16":
            assert (np.abs(x[finite]) > 3.38e38).any() and "overflow" in str(e)
        else:
            raise
        return
    y = decode(enc)
    assert y.shape == x.shape and y.dtype == np.float32
    if base in ("raw", "fp32"):
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32))
        return
    assert np.array_equal(np.isnan(x), np.isnan(y))
    assert np.array_equal(x[np.isinf(x)], y[np.isinf(x)])
    _assert_within_bound(x[finite], y[finite], enc)
    assert (y[x == 0] == 0).all()


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=3, max_dims=4, min_side=1,
                                                  max_side=9),
                    elements=st.floats(-6e4, 6e4, width=32)))
def test_property_torch_and_numpy_inputs_agree(x):
    for name in ("int8+zstd", "bf16", "fp16+zstd"):
        assert get_codec(name).encode(torch.from_numpy(x)) == get_codec(name).encode(x)


def test_copy_false_is_a_read_only_view_of_the_payload_where_the_values_are_as_sent():
    from splitinfer.codec import check

    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for name in ("fp32", "raw"):
        e = get_codec(name).encode(x, name="x")
        view = decode(e, copy=False)
        assert np.shares_memory(view, np.frombuffer(e.payload, np.uint8))
        assert not view.flags.writeable and np.array_equal(view, x)
        assert decode(e).flags.writeable  # the default still copies
        t = decode_torch(e, copy=False)
        assert torch.equal(t, torch.from_numpy(x))
    for name in ("fp32+zstd", "fp16", "int8"):  # decoding makes new values: never a view
        e = get_codec(name).encode(x, name="x")
        assert decode(e, copy=False).flags.writeable
    bad = EncodedTensor("x", "float32", (2, 3, 4), "fp32", b"\0" * 5)
    with pytest.raises(CodecError, match="payload is 5 bytes"):
        check(bad)  # check reads no payload but its length: the same message as decode
    with pytest.raises(CodecError, match="payload is 5 bytes"):
        decode(bad)


# ---------------------------------------------------------------- int4 / int2


def test_sub_byte_codes_pack_low_bits_first():
    """Golden layout: codes 0..3 of int2 and 0..15 of int4 along C order, first code lowest."""
    x = np.arange(16, dtype=np.float32)  # min 0, max 15: scale 1 for int4, zero point 0
    e4 = get_codec("int4").encode(x)
    assert e4.scales == (1.0,) and e4.zero_points == (0,) and e4.axis is None
    assert e4.payload == bytes([0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE])
    assert np.array_equal(decode(e4), x)
    e2 = get_codec("int2").encode(np.array([0, 1, 2, 3, 3], np.float32))  # scale 1 again
    assert e2.payload == bytes([0b11_10_01_00, 0b00_00_00_11])  # 5 codes: the last byte padded
    assert np.array_equal(decode(e2), [0, 1, 2, 3, 3])


@pytest.mark.parametrize("name, bits", [("int4", 4), ("int2", 2), ("int8", 8)])
def test_sub_byte_error_is_half_a_step_and_bytes_shrink_with_bits(name, bits):
    x = (_rng(4).normal(size=(2, 16, 9, 9)) * _rng(5).uniform(0.1, 10, size=(1, 16, 1, 1))
         ).astype(np.float32)
    enc = get_codec(name).encode(x)
    assert get_codec(name).bits == bits and enc.axis == 1
    assert len(enc.payload) == x.size * bits // 8
    step = np.asarray(enc.scales, np.float64).reshape(1, -1, 1, 1)
    y = decode(enc)
    assert (np.abs(x - y) <= step * 0.5 * (1 + 1e-4) + 1e-6 * np.abs(x)).all()
    _assert_within_bound(x, y, enc)
    # each channel's range spans the codes: the step is range / (2**bits - 1)
    rng_c = np.maximum(x.max(axis=(0, 2, 3)), 0) - np.minimum(x.min(axis=(0, 2, 3)), 0)
    assert np.allclose(enc.scales, rng_c / ((1 << bits) - 1), rtol=1e-6)


@pytest.mark.parametrize("name", ["int4+zstd", "int2+zstd"])
def test_sub_byte_post_relu_zeros_stay_exact(name):
    x = np.maximum(_rng(6).normal(size=(1, 32, 14, 14)), 0).astype(np.float32)
    enc = get_codec(name).encode(x)
    y = decode(enc)
    assert set(enc.zero_points) == {0}
    assert (y[x == 0] == 0).all() and (y >= 0).all()
    assert len(enc.payload) < len(get_codec("int8+zstd").encode(x).payload)


@pytest.mark.parametrize("name, bits", [("int4+zstd", 4), ("int2+zstd", 2)])
def test_sub_byte_goes_per_tensor_where_channel_params_cost_more(name, bits):
    """A small post-ReLU activation whose channels share a range (a small CNN's early cut): 32
    channels' params (160 bytes) outweigh what finer steps save, so one (scale, zp) is used,
    the wire bytes are fewer than per channel's, and the error stays within half a step."""
    from splitinfer.codec import _quant, _zstd

    x = np.maximum(_rng(7).normal(size=(1, 32, 8, 8)), 0).astype(np.float32)
    enc = get_codec(name).encode(x)
    assert enc.axis is None and len(enc.scales) == len(enc.zero_points) == 1
    assert np.abs(decode(enc) - x).max() <= enc.scales[0] * 0.5 * (1 + 1e-4)
    _assert_within_bound(x, decode(enc), enc)
    codes, scales, _ = _quant.quantize(x, 1, "x", bits)
    per_channel = len(_zstd.compress(_quant.pack(codes, bits).tobytes())) + 5 * len(scales)
    assert encoded_nbytes(enc) < per_channel


def test_sub_byte_keeps_channels_where_one_sets_the_range():
    """Hidden states with an outlier feature: one scale would spend the 16 levels on that one
    feature's range, so the per-feature params pay and stay."""
    h = _rng(8).normal(size=(1, 20, 384)).astype(np.float32)
    h[..., 7] *= 40
    enc = get_codec("int4+zstd").encode(h)
    assert enc.axis == 2 and len(enc.scales) == 384
    flat = get_codec("int4+zstd").encode(_rng(8).normal(size=(1, 20, 384)).astype(np.float32))
    assert flat.axis is None  # the same shape without the outlier: one scale


def test_channels_pay_threshold():
    """Two channels, ranges 1 and 0: per-channel steps halve the noise (log2 D = 1), worth n / 2
    bits on each of 2n elements against one more channel's 40 bits of params: pays from
    n = 41 elements per channel."""
    from splitinfer.codec._quant import CHANNEL_PARAM_BITS, channels_pay

    mx = np.array([1.0, 0.0], np.float32)
    assert CHANNEL_PARAM_BITS == 40
    assert channels_pay(None, mx, 41) and not channels_pay(None, mx, 40)
    assert channels_pay(np.array([-1.0, 0.0], np.float32), np.array([0.0, 0.0], np.float32),
                        41)  # the same with the range below 0
    big_lo, big_hi = np.array([-3e38, 0.0], np.float32), np.array([3e38, 0.0], np.float32)
    assert channels_pay(big_lo, big_hi, 41) and not channels_pay(big_lo, big_hi, 40)  # no inf
    assert not channels_pay(None, np.zeros(8, np.float32), 10**6)  # all zeros: one scale
    assert not channels_pay(None, np.array([5.0], np.float32), 10**6)  # one channel


def test_sub_byte_codecs_are_opt_in_for_profiles():
    """Profiles (and so plans) measure them only when named: they trade too much error to be
    picked on bytes alone."""
    from splitinfer.measure.profiler import DEFAULT_CODECS

    assert {"int4", "int4+zstd", "int2", "int2+zstd", "ecq"}.isdisjoint(DEFAULT_CODECS)
    assert {"int8", "int8+zstd", "fp16"} <= set(DEFAULT_CODECS)
    assert get_codec("fp16").bits is None and get_codec("jpeg").bits is None
    assert get_codec("ecq-30db").opt_in and get_codec("int4").opt_in
    assert not get_codec("int8+zstd").opt_in and not get_codec("jpeg").opt_in


# ---------------------------------------------------------------- ecq


def _sqnr_db(x: np.ndarray, y: np.ndarray) -> float:
    x64 = x.astype(np.float64)
    return float(10 * np.log10(np.mean(x64**2) / np.mean((x64 - y) ** 2)))


def test_ecq_travels_as_int8_zstd_with_one_step():
    """The wire does not change: an ecq payload is an int8+zstd tensor (one scale, one zero
    point, no axis) that any int8+zstd decoder reads; "ecq" is no wire name."""
    x = (_rng(7).normal(size=(2, 16, 9, 9)) * 3 - 1).astype(np.float32)
    enc = get_codec("ecq").encode(x, "a")
    assert enc.codec == "int8+zstd" and enc.axis is None
    assert len(enc.scales) == 1 and len(enc.zero_points) == 1 and 0 < enc.zero_points[0] < 255
    raw = zstandard.ZstdDecompressor().decompress(enc.payload)
    codes = np.frombuffer(raw, np.uint8).astype(np.float32)
    assert np.array_equal(decode(enc).reshape(-1),
                          (codes - enc.zero_points[0]) * np.float32(enc.scales[0]))
    with pytest.raises(CodecError, match="'ecq' is an encoder setting.*int8\\+zstd"):
        decode(EncodedTensor("a", enc.dtype, enc.shape, "ecq", enc.payload, enc.scales,
                             enc.zero_points))


@pytest.mark.parametrize("snr_db", [6, 12, 18, 24, 30, 36])
def test_ecq_noise_sits_snr_db_under_the_signal(snr_db):
    """Signed data with no exact zeros: the measured SQNR is the target within a dB (uniform
    rounding noise, step**2 / 12); every value within half a step (nothing clipped)."""
    x = _rng(8).normal(size=(1, 32, 16, 16)).astype(np.float32)
    x[0, 0, 0, 0] = 8.0  # an outlier sets no one's step: it costs bits, not resolution
    enc = get_codec("ecq", snr_db=snr_db).encode(x)
    y = decode(enc)
    assert abs(_sqnr_db(x, y) - snr_db) < 1.0
    assert np.abs(y[0, 0, 0, 0] - 8.0) <= enc.scales[0] / 2 * (1 + 1e-4)
    _assert_within_bound(x, y, enc)


def test_ecq_trades_bytes_for_noise_and_caps_at_int8():
    x = np.maximum(_rng(9).normal(size=(1, 64, 28, 28)), 0).astype(np.float32)
    sizes, snrs = [], []
    for db in (6, 12, 18, 24, 30, 36):
        enc = get_codec(f"ecq-{db}db").encode(x)
        y = decode(enc)
        assert (y[x == 0] == 0).all() and enc.zero_points == (0,)  # post-ReLU zeros exact
        sizes.append(len(enc.payload))
        snrs.append(_sqnr_db(x, y))
    assert sizes == sorted(sizes) and snrs == sorted(snrs)
    assert sizes[0] * 2 < sizes[-1]
    # past int8's resolution the step is range / 255: per-tensor int8, never finer
    top = get_codec("ecq-60db").encode(x)
    assert top.scales[0] == pytest.approx(float(x.max()) / 255, rel=1e-6)
    _assert_within_bound(x, decode(top), top)


def test_ecq_names_and_knobs():
    assert get_codec("ecq").snr_db == 24 and get_codec("ecq").name == "ecq"
    assert get_codec("ecq-30db").name == "ecq-30db" == get_codec("ecq", snr_db=30).name
    assert get_codec("ecq-24db").name == "ecq"
    assert get_codec("ecq-18db", level=9).zstd_level == 9
    for bad in ("ecq-0db", "ecq-61db"):
        with pytest.raises(CodecError, match="snr_db .* integer in 1..60"):
            get_codec(bad)
    for bad in ("ecq-x1db", "ecq-30", "ecq+zstd", "ecq-30dB"):
        with pytest.raises(CodecError, match="unknown codec .*ecq-Ndb"):
            get_codec(bad)
    for value in (24.5, True, "30"):
        with pytest.raises(CodecError, match="snr_db"):
            get_codec("ecq", snr_db=value)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="takes no snr_db"):
        get_codec("int8+zstd", snr_db=20)
    with pytest.raises(CodecError, match="takes no quality"):
        Codec("ecq", quality=5)


def test_ecq_all_zero_and_empty_tensors():
    z = np.zeros((1, 4, 8, 8), np.float32)
    enc = get_codec("ecq").encode(z)
    assert np.array_equal(decode(enc), z) and enc.scales == (1.0,)
    e = get_codec("ecq").encode(np.zeros((0, 3), np.float32))
    assert decode(e).shape == (0, 3)
    big = np.full((1, 8), 3e38, np.float32)  # the mean square overflows float32: float64 path
    enc = get_codec("ecq").encode(big)
    y = decode(enc)
    assert np.isfinite(y).all() and np.isfinite(enc.scales[0])
    _assert_within_bound(big, y, enc)
