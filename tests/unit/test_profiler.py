"""The profiler measures real costs that the planner can use, without a network."""

from __future__ import annotations

import json

import pytest
import torch

import splitinfer
from splitinfer.codec import IMAGE_CODECS, encoded_nbytes, get_codec
from splitinfer.core.compare import relative_error
from splitinfer.core.link import Link
from splitinfer.core.planner import choose
from splitinfer.core.profiles import DeviceProfile, EdgeProfile
from splitinfer.measure.profiler import (
    DEFAULT_CODECS,
    edge_profile_from_info,
    profile_device,
    profile_edge_locally,
)
from splitinfer.model.preprocess import IMAGENET
from splitinfer.model.tensors import decode_torch
from splitinfer.tools import frames
from splitinfer.wire.convert import ModelInfo
from tests.models import SkipNet


@pytest.fixture(scope="module")
def skipnet():
    torch.manual_seed(0)
    return splitinfer.partition(SkipNet().eval(), (torch.randn(1, 3, 32, 32),), name="skipnet")


def test_device_profile_covers_every_cut_and_codec(skipnet):
    prof = profile_device(skipnet, codecs=("fp32", "fp16", "int8+zstd"), repeats=2)
    assert [c.cut_id for c in prof.cuts] == [c.id for c in skipnet.cuts]
    assert prof.fingerprint == skipnet.fingerprint and prof.threads >= 1
    heads = [c.head_s for c in prof.cuts]
    assert heads[0] == 0.0 and heads == sorted(heads) and heads[-1] > 0
    assert prof.cuts[-1].codecs == ()  # device-only sends nothing
    for cut in prof.cuts[:-1]:
        costs = {c.codec: c for c in cut.codecs}
        assert set(costs) == {"fp32", "fp16", "int8+zstd"}
        assert costs["fp32"].error == 0.0  # lossless
        assert 0 < costs["fp16"].error < 1e-2 and 0 < costs["int8+zstd"].error < 0.05
        if costs["fp32"].request_bytes > 1024:  # tiny tensors: zstd's frame costs more
            assert costs["int8+zstd"].request_bytes < costs["fp16"].request_bytes \
                < costs["fp32"].request_bytes
    # fp32 bytes are the crossing tensors' own bytes: 4 per element
    cut0 = prof.cuts[0]
    assert {c.codec: c for c in cut0.codecs}["fp32"].request_bytes == 3 * 32 * 32 * 4
    assert prof.response_bytes == 5 * 4
    assert DeviceProfile.from_json(json.loads(json.dumps(prof.to_json()))) == prof


def test_profiles_feed_the_planner():
    # 256x256: enough compute (a few ms) that a 10x faster edge wins over a free link; at 32x32
    # the whole model costs less than the two wake-ups after idle that a request adds
    torch.manual_seed(0)
    big = splitinfer.partition(SkipNet().eval(), (torch.randn(1, 3, 256, 256),), name="big")
    device = profile_device(big, codecs=("fp32", "int8+zstd"), repeats=3)
    edge = profile_edge_locally(big, repeats=3, speedup=10.0)
    assert edge.tail_s[len(big.cuts) - 1] == 0.0 and edge.tail_s[0] > 0
    slow = choose(device, edge, Link(rtt_s=0.2, bandwidth_bps=1e5))
    fast = choose(device, edge, Link(rtt_s=0.0001, bandwidth_bps=1e10))
    assert slow.predicted_s >= fast.predicted_s
    assert fast.cut_id == 0  # a 10x faster edge over a free link: send the input
    assert slow.breakdown.total_s == pytest.approx(slow.predicted_s)


def test_edge_profile_from_model_info(skipnet):
    info = ModelInfo(model="skipnet", version="1", fingerprint=skipnet.fingerprint,
                     cuts=tuple(skipnet.cuts), tail_latency_s={0: 0.01, 1: 0.005},
                     queue_delay_s=0.002)
    edge = edge_profile_from_info(info)
    assert isinstance(edge, EdgeProfile)
    assert dict(edge.tail_s) == {0: 0.01, 1: 0.005} and edge.queue_s == 0.002


def test_slowdown_profiles_an_emulated_slower_device(skipnet):
    # SkipNet is tiny: both profiles are small, but the one of a device 20x slower is several
    # times larger (each timed run idles 19x its CPU time), at every stage it measures
    fast = profile_device(skipnet, codecs=("int8+zstd",), repeats=3)
    slow = profile_device(skipnet, codecs=("int8+zstd",), repeats=3, slowdown=20)
    assert slow.cuts[-1].head_s > 4 * fast.cuts[-1].head_s
    enc = [(f.codecs[0].encode_s, s.codecs[0].encode_s)
           for f, s in zip(fast.cuts[:-1], slow.cuts[:-1])]
    assert sum(s for _, s in enc) > 4 * sum(f for f, _ in enc)
    assert slow.response_decode_s > 4 * fast.response_decode_s
    heads = [c.head_s for c in slow.cuts]
    assert heads == sorted(heads)


@pytest.mark.parametrize("kwargs, match", [({"repeats": 0}, "repeats"),
                                           ({"codecs": ("zip",)}, "zip"),
                                           ({"slowdown": 0.5}, "factor must be a number >= 1")])
def test_bad_arguments(skipnet, kwargs, match):
    with pytest.raises(Exception, match=match):
        profile_device(skipnet, **kwargs)


# --- image codecs, and the error in the model's output ---------------------------------------

@pytest.fixture(scope="module")
def framenet():
    """SkipNet behind ImageNet preprocessing: it takes a uint8 NHWC frame (a real photo crop)."""
    torch.manual_seed(0)
    frame = torch.from_numpy(frames.batch(1, 32).copy())
    sm = splitinfer.partition(SkipNet().eval(), (frame,), name="framenet", image_input=IMAGENET)
    return sm, frame


def _through(codec_name, tensors):
    codec = get_codec(codec_name)
    return [decode_torch(codec.encode(t, name=f"t{i}")) for i, t in enumerate(tensors)]


def test_default_codecs_are_the_float_codecs_and_the_image_codecs():
    assert set(IMAGE_CODECS) <= set(DEFAULT_CODECS) and len(set(DEFAULT_CODECS)) == len(
        DEFAULT_CODECS)
    assert {"fp32", "fp16", "bf16+zstd", "int8+zstd"} <= set(DEFAULT_CODECS)
    assert not any(c.startswith("raw") for c in DEFAULT_CODECS)


def test_image_codecs_are_measured_at_the_frame_only_with_the_output_error(framenet):
    sm, frame = framenet
    codecs = ("fp32", "int8+zstd", "jpeg-q95", "jpeg-q50", "png")
    prof = profile_device(sm, (frame,), codecs=codecs, repeats=1)
    at = {c.cut_id: {k.codec: k for k in c.codecs} for c in prof.cuts}
    assert list(at[0]) == list(codecs)  # the frame crosses cut 0: every codec, in order
    for cut in sm.cuts[1:-1]:  # past it: tensors no image codec carries (NCHW, float)
        assert list(at[cut.id]) == ["fp32", "int8+zstd"]
    reference = sm(frame)
    for name in ("jpeg-q95", "jpeg-q50"):
        cost = at[0][name]
        expected = relative_error(reference, sm(*_through(name, [frame]))).max()
        assert cost.error == pytest.approx(float(expected), rel=1e-6)
        assert cost.request_bytes == encoded_nbytes(get_codec(name).encode(frame, name="t0"))
    assert 0 < at[0]["jpeg-q95"].error < at[0]["jpeg-q50"].error < 0.05
    assert at[0]["jpeg-q50"].request_bytes < at[0]["jpeg-q95"].request_bytes \
        < at[0]["png"].request_bytes < at[0]["fp32"].request_bytes == 32 * 32 * 3
    # lossless: png, and the tensor codecs on a uint8 frame (which travels raw)
    assert at[0]["png"].error == at[0]["fp32"].error == at[0]["int8+zstd"].error == 0.0


def test_a_float_cuts_error_is_the_models_output_error(framenet):
    sm, frame = framenet
    cut_id = len(sm.cuts) - 2  # the last one before the output: the smallest error chain
    prof = profile_device(sm, (frame,), codecs=("fp16", "int8+zstd"), repeats=1,
                          cut_ids=[cut_id])
    costs = {k.codec: k for k in prof.cuts[1].codecs}
    crossing = sm.head(cut_id)(frame)
    tail = sm.tail(cut_id)
    for name, cost in costs.items():
        expected = relative_error(tail(*crossing), tail(*_through(name, crossing))).max()
        assert cost.error == pytest.approx(float(expected), rel=1e-6) and cost.error > 0


def test_a_codec_that_fits_no_cut_is_absent(skipnet):
    prof = profile_device(skipnet, codecs=("fp32", "jpeg"), repeats=1)  # float input: no frame
    assert all([k.codec for k in c.codecs] == ["fp32"] for c in prof.cuts[:-1])
