"""An edge node serving a model whose input is the camera frame: JPEG/PNG at cut 0, and refusals.

The model takes uint8 NHWC frames and normalizes them itself, so cut 0 carries the frame and the
device can send it as a JPEG. The edge decodes the image into the frame tensor and runs the
whole model; a hostile image is refused with INVALID_ARGUMENT naming the problem.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Iterator

import grpc
import numpy as np
import pytest
import torch
from torch import nn

import splitinfer
from splitinfer.codec import decode
from splitinfer.model.bundle import save_bundle
from splitinfer.tools.frames import batch

from .conftest import (
    RunningNode,
    edge_config,
    encode_cut,
    make_request,
    outputs_of,
    rpc_error,
    start_node,
)

pytestmark = pytest.mark.integration
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


class FrameNet(nn.Module):
    """uint8 (N, H, W, 3) -> ImageNet normalization -> a small conv net -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        x = (frame.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def image_node(loop, tmp_path_factory) -> Iterator[tuple[RunningNode, object]]:
    torch.manual_seed(0)
    sm = splitinfer.partition(FrameNet().eval(), (torch.from_numpy(batch(1, 64)),),
                              name="framenet")
    repo = tmp_path_factory.mktemp("image-repo")
    save_bundle(sm, repo / "framenet" / "1", version="1")
    node = start_node(loop, edge_config(repo, max_batch_size=1))
    yield node, sm
    node.stop()


def _frame() -> torch.Tensor:
    return torch.from_numpy(batch(1, 64, start=3).copy())


@pytest.mark.parametrize("codec", ["jpeg", "jpeg-q50", "png", "webp"])
def test_the_edge_answers_an_image_at_cut_0(image_node, codec):
    node, sm = image_node
    (enc,) = encode_cut(sm, 0, [_frame()], codec=codec)
    assert enc.codec == codec.partition("-q")[0]
    out = outputs_of(node.stub.Infer(make_request(sm, 0, [], encoded=[enc]), timeout=30))[0]
    # exactly the model on the frame the edge decoded: nothing else moved the answer
    expected = sm(torch.from_numpy(decode(enc)))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    if codec == "png":
        torch.testing.assert_close(out, sm(_frame()), rtol=0, atol=0)


def _refused(node: RunningNode, sm, enc, *words: str) -> None:
    err = rpc_error(lambda: node.stub.Infer(make_request(sm, 0, [], encoded=[enc]), timeout=30))
    assert err.code() == INVALID_ARGUMENT, err.details()
    for word in words:
        assert word in err.details(), (word, err.details())


def test_hostile_images_are_refused(image_node):
    node, sm = image_node
    (good,) = encode_cut(sm, 0, [_frame()], codec="jpeg")
    _refused(node, sm, dataclasses.replace(good, payload=good.payload[:len(good.payload) // 2]),
             "truncated")
    _refused(node, sm, dataclasses.replace(good, payload=b""), "payload is empty")
    _refused(node, sm, dataclasses.replace(good, payload=b"GIF89a" + bytes(500)),
             "not a readable jpeg")
    at = good.payload.index(b"\xff\xc0") + 5
    claim = good.payload[:at] + struct.pack(">HH", 60000, 60000) + good.payload[at + 4:]
    _refused(node, sm, dataclasses.replace(good, payload=claim), "decompression bomb")
    _refused(node, sm, dataclasses.replace(good, shape=(1, 64, 32, 3)),
             "64x64 RGB", "declares shape (1, 64, 32, 3)")
    _refused(node, sm, dataclasses.replace(good, dtype="float32"), "uint8 images, not float32")
    # the node still serves after all of that
    out = outputs_of(node.stub.Infer(make_request(sm, 0, [], encoded=[good]), timeout=30))[0]
    assert out.shape == (1, 10)


def test_an_image_codec_on_a_float_cut_is_refused_before_sending(image_node):
    _, sm = image_node
    cut = next(c for c in sm.cuts if c.tensors[0].dtype == "float32")
    head = sm.head(cut.id)(_frame())
    head = head if isinstance(head, tuple) else (head,)
    assert np.asarray(head[0]).dtype == np.float32
    with pytest.raises(splitinfer.core.errors.CodecError, match="uint8 images, not float32"):
        encode_cut(sm, cut.id, list(head), codec="jpeg")
