"""Malformed and hostile encoded tensors: every one is refused with a CodecError that says why.

Nothing here measures time: "refused before allocating" is checked with tracemalloc's peak.
"""

from __future__ import annotations

import struct
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from splitinfer.codec import EncodedTensor, Limits, decode, get_codec
from splitinfer.core.errors import CodecError, LimitExceeded

pytestmark = pytest.mark.unit

MAGIC = b"\x28\xb5\x2f\xfd"
MB = 1 << 20


def _raw_block(data: bytes, last: bool = True) -> bytes:
    return struct.pack("<I", (len(data) << 3) | int(last))[:3] + data


def _rle_block(n: int, byte: int = 0, last: bool = False) -> bytes:
    return struct.pack("<I", (n << 3) | (1 << 1) | int(last))[:3] + bytes([byte])


def _frame_claiming(size: int, body: bytes = b"abcd") -> bytes:
    """Single-segment frame header with an 8-byte content size, then one tiny raw block."""
    return MAGIC + bytes([0xE0]) + struct.pack("<Q", size) + _raw_block(body)


def _unsized_frame(blocks: bytes, window_byte: int = 0x50) -> bytes:
    """Frame without a content size (window descriptor 0x50: 1 MiB)."""
    return MAGIC + bytes([0x00, window_byte]) + blocks


def _refuses(enc: EncodedTensor, match: str, exc: type = CodecError,
             limits: Limits = Limits(), peak_bytes: int = 4 * MB) -> None:
    """decode(enc) raises exc matching ``match``, with a tracemalloc peak under peak_bytes."""
    tracemalloc.start()
    try:
        with pytest.raises(exc, match=match):
            decode(enc, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < peak_bytes, f"peak {peak} bytes while refusing"


@pytest.fixture
def int8_enc() -> EncodedTensor:
    x = np.abs(np.random.default_rng(0).normal(size=(1, 4, 4, 4))).astype(np.float32)
    return get_codec("int8").encode(x, "act")


@pytest.fixture
def zstd_enc() -> EncodedTensor:
    return get_codec("raw+zstd").encode(np.arange(1000, dtype=np.int32), "ids")


# ---------------------------------------------------------------- header: codec, dtype, shape


def test_unknown_codec(int8_enc):
    _refuses(replace(int8_enc, codec="int3"), "act.*unknown codec 'int3'.*int8\\+zstd")


def test_unknown_dtype(int8_enc):
    _refuses(replace(int8_enc, dtype="complex64"), "act.*unknown dtype 'complex64'")


@pytest.mark.parametrize("codec", ["int8", "fp16+zstd", "bf16", "fp32"])
def test_float_codec_on_integer_dtype(int8_enc, codec):
    _refuses(replace(int8_enc, codec=codec, dtype="int64"), "for float tensors, not int64")


def test_negative_dim(int8_enc):
    _refuses(replace(int8_enc, shape=(1, 4, -4, -4)), "negative dim")


def test_huge_dim(int8_enc):
    _refuses(replace(int8_enc, shape=(1, 4, 1 << 40, 4)), "dim 1099511627776.*limit",
             LimitExceeded)


def test_rank_100():
    enc = EncodedTensor("r", "uint8", (1,) * 100, "raw", b"\x00")
    _refuses(enc, "rank 100 is over the limit 8", LimitExceeded)


def test_too_many_elements():
    enc = EncodedTensor("e", "uint8", (1 << 20, 1 << 20), "raw", b"")
    _refuses(enc, "elements; the limit", LimitExceeded)


def test_too_many_bytes():
    enc = EncodedTensor("b", "int64", (1 << 10, 1 << 10), "raw", b"")
    _refuses(enc, "decodes to 8388608 bytes; the limit is 1000000", LimitExceeded,
             limits=Limits(max_bytes=1_000_000))


@pytest.mark.parametrize("shape", [(2.5, 4), ("4",), 7])
def test_non_integer_shape(shape):
    _refuses(EncodedTensor("s", "uint8", shape, "raw", b"\x00" * 10), "shape")


# ---------------------------------------------------------------- payload length


@pytest.mark.parametrize("delta", [-1, 1, -16])
def test_wrong_payload_length(int8_enc, delta):
    payload = int8_enc.payload[:delta] if delta < 0 else int8_enc.payload + b"\x00"
    _refuses(replace(int8_enc, payload=payload), f"payload is {64 + delta} bytes.*exactly 64")


def test_payload_must_be_bytes(int8_enc):
    _refuses(replace(int8_enc, payload="abc"), "payload must be bytes")


def test_bool_payload_must_be_zero_or_one():
    _refuses(EncodedTensor("m", "bool", (3,), "raw", b"\x00\x01\x02"), "bool payload")


@pytest.mark.parametrize("codec", ["int8", "int8+zstd"])
@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_bytearray_and_memoryview_payloads_are_accepted(codec, wrap):
    x = np.arange(64, dtype=np.float32).reshape(1, 4, 4, 4)
    enc = get_codec(codec).encode(x)
    assert np.array_equal(decode(replace(enc, payload=wrap(enc.payload))), decode(enc))


# ---------------------------------------------------------------- int8 params


@pytest.mark.parametrize("bad, match", [
    (float("nan"), "scale 2 is nan"), (0.0, "scale 2 is 0.0"), (-1.0, "scale 2 is -1.0"),
    (float("inf"), "scale 2 is inf"), (1e-50, "scale 2 is 1e-50"),
    (1e300, "scale 2 is 1e\\+300"),
])
def test_bad_scale(int8_enc, bad, match):
    scales = list(int8_enc.scales)
    scales[2] = bad
    _refuses(replace(int8_enc, scales=tuple(scales)), match + ".*finite and > 0")


def test_scale_not_a_number(int8_enc):
    _refuses(replace(int8_enc, scales=("x",) * 4), "scales must be numbers")


@pytest.mark.parametrize("field, value", [("scales", (1.0,) * 3), ("zero_points", (0,) * 5),
                                          ("scales", ()), ("zero_points", ())])
def test_wrong_param_count(int8_enc, field, value):
    _refuses(replace(int8_enc, **{field: value}), "needs 4 of each")


@pytest.mark.parametrize("zps", [(0, 0, 256, 0), (0, -1, 0, 0), (0, 0.5, 0, 0), (2**70,) * 4,
                                 (True, False, True, False)])
def test_zero_point_out_of_range(int8_enc, zps):
    _refuses(replace(int8_enc, zero_points=zps), "zero points must be ints in \\[0, 255\\]")


@pytest.mark.parametrize("axis", [4, -5, 7, 1.0, True])
def test_axis_out_of_range(int8_enc, axis):
    _refuses(replace(int8_enc, axis=axis), "axis .* out of range for rank 4.*\\[-4, 4\\)")


def test_negative_axis_counts_from_the_end(int8_enc):
    assert np.array_equal(decode(replace(int8_enc, axis=-3)), decode(int8_enc))


def test_per_tensor_needs_one_pair(int8_enc):
    _refuses(replace(int8_enc, axis=None), "axis None .* needs 1 of each")


@pytest.mark.parametrize("field, value", [("scales", (1.0,)), ("zero_points", (0,)),
                                          ("axis", 0)])
def test_params_on_a_codec_without_params(field, value):
    enc = get_codec("fp16").encode(np.ones(4, np.float32))
    _refuses(replace(enc, **{field: value}), "takes no scales, zero points or axis")


# ---------------------------------------------------------------- zstd frames


def test_garbage_instead_of_a_frame(zstd_enc):
    _refuses(replace(zstd_enc, payload=b"definitely not zstd"), "ids.*not a zstd frame")


def test_empty_payload_is_not_a_frame(zstd_enc):
    _refuses(replace(zstd_enc, payload=b""), "not a zstd frame")


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_frame(zstd_enc, cut):
    _refuses(replace(zstd_enc, payload=zstd_enc.payload[:-cut]), "zstd frame")


def test_frame_claiming_10_gb_is_refused_without_allocating():
    enc = EncodedTensor("bomb", "uint8", (4,), "raw+zstd", _frame_claiming(10 << 30))
    assert len(enc.payload) < 1024
    _refuses(enc, "declares 10737418240 decoded bytes.*exactly 4")


def test_shape_and_frame_both_claiming_10_gb_hit_the_limit_first():
    enc = EncodedTensor("bomb", "uint8", (10, 1 << 30), "raw+zstd", _frame_claiming(10 << 30))
    _refuses(enc, "dim 1073741824.*limit", LimitExceeded)
    _refuses(enc, "elements; the limit", LimitExceeded, limits=Limits(max_dim=1 << 31))


def test_unsized_frame_that_expands_past_the_shape_is_cut_off():
    # ~1 KB of RLE blocks that would expand to 32 MB
    blocks = b"".join(_rle_block(1 << 17) for _ in range(250)) + _rle_block(1, last=True)
    enc = EncodedTensor("bomb", "uint8", (1000,), "raw+zstd", _unsized_frame(blocks))
    assert len(enc.payload) < 1100
    _refuses(enc, "zstd frame refused.*1000 decoded bytes")


def test_unsized_frame_of_the_right_size_decodes():
    enc = EncodedTensor("ok", "uint8", (1000,), "raw+zstd",
                        _unsized_frame(_rle_block(1000, 7, last=True)))
    assert (decode(enc) == 7).all()


def test_unsized_frame_that_is_too_short():
    enc = EncodedTensor("s", "uint8", (1000,), "raw+zstd",
                        _unsized_frame(_rle_block(999, 7, last=True)))
    _refuses(enc, "holds 999 decoded bytes.*exactly 1000")


def test_frame_asking_for_a_huge_window():
    enc = EncodedTensor("w", "uint8", (1000,), "raw+zstd",
                        _unsized_frame(_rle_block(1000, 7, last=True), window_byte=0xA8))
    _refuses(enc, "2147483648-byte window")


def test_frame_lying_about_its_content():
    short = MAGIC + bytes([0x20, 100]) + _raw_block(b"x" * 50)  # declares 100, holds 50
    _refuses(EncodedTensor("l", "uint8", (100,), "raw+zstd", short), "zstd frame refused")
    long = MAGIC + bytes([0x20, 100]) + _raw_block(b"x" * 150)
    _refuses(EncodedTensor("l", "uint8", (100,), "raw+zstd", long), "zstd frame refused")


def test_trailing_bytes_after_the_frame(zstd_enc):
    _refuses(replace(zstd_enc, payload=zstd_enc.payload + b"\x00"), "1 bytes of unused data")


def test_two_frames(zstd_enc):
    _refuses(replace(zstd_enc, payload=zstd_enc.payload * 2), "unused data")


def test_checksum_mismatch(zstd_enc):
    p = bytearray(zstd_enc.payload)
    p[-1] ^= 0x01
    _refuses(replace(zstd_enc, payload=bytes(p)), "checksum")


def test_skippable_frame(zstd_enc):
    skippable = struct.pack("<II", 0x184D2A50, 4) + b"abcd"
    _refuses(replace(zstd_enc, payload=skippable), "zstd frame")


def test_frame_with_a_dictionary_id(zstd_enc):
    with_dict = MAGIC + bytes([0x21, 0x07, 100]) + _raw_block(b"x" * 100)  # dict id 7
    _refuses(EncodedTensor("d", "uint8", (100,), "raw+zstd", with_dict), "dictionary 7")


def test_zstd_payload_for_a_plain_codec_is_just_wrong_length(zstd_enc):
    _refuses(replace(zstd_enc, codec="raw"), "payload is .* bytes.*exactly 4000")


def test_plain_payload_for_a_zstd_codec(int8_enc):
    _refuses(replace(int8_enc, codec="int8+zstd"), "not a zstd frame")


def test_long_hostile_names_are_cut_in_messages(int8_enc):
    with pytest.raises(CodecError) as info:
        decode(replace(int8_enc, name="x" * 10_000, codec="nope"))
    assert len(str(info.value)) < 400


# ---------------------------------------------------------------- int4 / int2 (packed codes)


@pytest.fixture(params=[("int4", 4), ("int2", 2)], ids=["int4", "int2"])
def packed_enc(request) -> tuple[EncodedTensor, int]:
    """An int4 / int2 tensor of 1x4x8x10, per channel (320 codes: int4 fills 160 bytes exactly,
    int2 80), and its bits per code."""
    x = np.random.default_rng(3).normal(size=(1, 4, 8, 10)) * np.array([1, 4, 16, 64]
                                                                      ).reshape(1, 4, 1, 1)
    name, bits = request.param
    enc = get_codec(name).encode(x.astype(np.float32), "act")
    assert enc.axis == 1  # channel ranges far apart: per-channel params pay for themselves
    return enc, bits


@pytest.mark.parametrize("delta", [-1, 1])
def test_packed_payload_of_the_wrong_length(packed_enc, delta):
    enc, bits = packed_enc
    need = 320 * bits // 8
    payload = enc.payload[:delta] if delta < 0 else enc.payload + b"\x00"
    _refuses(replace(enc, payload=payload), f"payload is {need + delta} bytes.*exactly {need}")


def test_packed_zero_point_past_the_last_code(packed_enc):
    enc, bits = packed_enc
    top = (1 << bits) - 1
    _refuses(replace(enc, zero_points=(top + 1,) * 4),
             f"zero points must be ints in \\[0, {top}\\] for int{bits}")
    assert decode(replace(enc, zero_points=(top,) * 4)).shape == (1, 4, 8, 10)  # the top is fine


@pytest.mark.parametrize("codec, count, last, match", [
    ("int4", 3, b"\x1f", "padding bits are not 0 \\(byte 0x1f, 1 of its 2 int4 codes used\\)"),
    ("int2", 5, b"\x07", "padding bits are not 0 \\(byte 0x07, 1 of its 4 int2 codes used\\)"),
    ("int2", 7, b"\xc0", "padding bits are not 0 \\(byte 0xc0, 3 of its 4 int2 codes used\\)"),
])
def test_packed_padding_must_be_zero(codec, count, last, match):
    """A payload ``pack`` could not have written: bits set past the last code."""
    full = (count * int(codec[3:]) + 7) // 8
    enc = EncodedTensor("act", "float32", (count,), codec, b"\x00" * (full - 1) + last,
                        (0.5,), (0,), None)
    _refuses(enc, match)


@pytest.mark.parametrize("codec", ["int4", "int2+zstd"])
def test_packed_huge_shape_is_refused_before_allocating(codec):
    enc = EncodedTensor("act", "float32", (1 << 14, 1 << 14, 4), codec, b"\x00" * 16, (1.0,),
                        (0,), None)
    _refuses(enc, "elements; the limit", LimitExceeded)


def test_packed_zstd_frame_claiming_more_than_the_shape_is_refused():
    # 60 int4 codes pack to 30 bytes; a frame that says it holds 10 GB is refused unread
    enc = EncodedTensor("act", "float32", (1, 4, 3, 5), "int4+zstd",
                        _frame_claiming(10 << 30), (1.0,) * 4, (0,) * 4, 1)
    _refuses(enc, "act.*declares 10737418240 decoded bytes.*imply exactly 30")


# ---------------------------------------------------------------- ecq (int8+zstd on the wire)


@pytest.mark.parametrize("name", ["ecq", "ecq-30db"])
def test_ecq_is_no_wire_codec(name):
    """ecq payloads travel as int8+zstd; a tensor that names ecq was not written by us."""
    enc = get_codec("ecq").encode(np.arange(8, dtype=np.float32))
    _refuses(replace(enc, codec=name), "is an encoder setting, not a wire codec")


def test_ecq_payload_gets_int8_zstd_checks():
    x = np.linspace(-3, 5, 64, dtype=np.float32).reshape(1, 4, 4, 4)
    enc = get_codec("ecq-12db").encode(x)
    assert enc.codec == "int8+zstd" and enc.axis is None
    _refuses(replace(enc, zero_points=(256,)), "zero points must be ints in \\[0, 255\\]")
    _refuses(replace(enc, scales=(0.0,)), "scale 0 is 0.0")
    _refuses(replace(enc, payload=_frame_claiming(10 << 30)),
             "declares 10737418240 decoded bytes.*imply exactly 64")
    _refuses(replace(enc, shape=(1 << 14, 1 << 14, 4)), "elements; the limit", LimitExceeded)
