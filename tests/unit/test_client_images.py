"""The device client with image codecs: a JPEG only where a uint8 frame crosses, refused early
elsewhere; an image bundle's frame sent as a JPEG to a fake edge, and planned over."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fake_edge import FakeEdge
from test_client_fake_edges import chain, make, run  # noqa: F401  (chain: a fixture)

from splitinfer.codec import decode
from splitinfer.model.bundle import load_bundle, save_bundle
from splitinfer.model.preprocess import IMAGENET
from splitinfer.model.split_model import SplitModel, partition
from splitinfer.tools import frames
from splitinfer.wire import convert
from tests.models import SkipNet

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SplitModel]:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bundles") / "img" / "1"
    frame = torch.from_numpy(frames.batch(1, 32))
    save_bundle(partition(SkipNet().eval(), (frame,), name="img", image_input=IMAGENET), path)
    return path, load_bundle(path)


class RecordingEdge(FakeEdge):
    """A fake edge that keeps what each request carried."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.seen: list[convert.InferCall] = []

    def answer(self, request):  # type: ignore[no-untyped-def]
        self.seen.append(convert.parse_infer_request(request))
        return super().answer(request)


def _frame() -> torch.Tensor:
    return torch.from_numpy(frames.batch(1, 32, start=5))


def test_jpeg_at_a_float_cut_is_refused_before_any_request(chain):  # noqa: F811
    edge = FakeEdge("a", chain[1])

    async def go() -> None:
        with pytest.raises(ValueError, match="codec='jpeg' cannot be used at cut 1"):
            async with make(chain, [edge], cut=1, codec="jpeg"):
                pass
        with pytest.raises(ValueError, match="codec='jpeg' fits no cut of chain"):
            async with make(chain, [edge], codec="jpeg"):
                pass
        async with make(chain, [edge]) as client:
            with pytest.raises(ValueError, match="cannot be used at cut 1"):
                await client.infer_result(torch.randn(1, 16), cut=1, codec="jpeg")

    run(go())
    assert edge.calls.get("infer", 0) == 0


def test_an_image_bundle_sends_its_frame_as_a_jpeg(image):
    path, sm = image
    edge = RecordingEdge("a", sm)
    frame = _frame()

    async def go() -> None:
        async with make(image, [edge], cut=0, codec="jpeg", device_profile=None) as client:
            r = await client.infer_result(frame)
        assert r.answered_by.startswith("edge") and 500 < r.bytes_sent < frame.numel()
        # the edge answered for the frame it decoded: within JPEG's distortion of the original
        sent = edge.seen[-1].tensors[0]
        assert sent.codec == "jpeg"
        decoded = torch.from_numpy(decode(sent))
        torch.testing.assert_close(torch.as_tensor(r.outputs), sm(decoded))
        err = (decoded.float() - frame.float()).abs().mean()
        assert 0 < err < 8

    run(go())
