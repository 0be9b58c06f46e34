"""``SplitClient(..., protocol="oip")`` with KServe's ModelServer as its edge.

KServe 0.21 runs in its own venv (the peer benchmark's, ``.bench/kserve-venv``: made once,
~1.5 min and ~5.5 GB) and serves the ONNX tails that ``splitinfer export --onnx`` wrote, with
``deploy/kserve/splitinfer_tails.py``. The client plans, sends, fails over and falls back exactly
as with our own edge node. ResNet-18 with random weights (answers are compared, not judged) on
a real photo (scikit-learn's china.jpg); set SPLITINFER_SKIP_PEER=1 to skip.
"""

from __future__ import annotations

import pytest
import torch

import splitinfer
from device_client import SplitClient
from splitinfer.codec import get_codec
from splitinfer.model.bundle import save_bundle
from splitinfer.model.onnx_export import export_onnx
from splitinfer.model.tensors import decode_torch
from tests.e2e import kserve_tails

pytestmark = pytest.mark.slow


def _photo() -> torch.Tensor:
    return kserve_tails.photo(64)


@pytest.fixture(scope="module")
def kserve(tmp_path_factory):
    import torchvision

    root = tmp_path_factory.mktemp("kserve")
    torch.manual_seed(0)
    eager = torchvision.models.resnet18().eval()
    sm = splitinfer.partition(eager, (torch.randn(1, 3, 64, 64),), name="resnet18")
    bundle = root / "resnet18" / "1"
    save_bundle(sm, bundle, version="1")
    cuts = [9, 30, 50]
    export_onnx(bundle, cuts)
    with kserve_tails.serve(bundle, [f"resnet18.cut{c}" for c in cuts]) as (target, proc):
        yield {"sm": sm, "eager": eager, "bundle": bundle, "cuts": cuts, "target": target,
               "proc": proc}


def close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max())


def test_fp32_answers_equal_local_within_onnx_rounding(kserve):
    x = _photo()
    with torch.no_grad():
        want = kserve["eager"](x)
    for cut in kserve["cuts"]:
        with SplitClient(kserve["bundle"], edges=[kserve["target"]], cut=cut, codec="fp32",
                         fallback="error", protocol="oip", background=False) as client:
            got = client.infer_result(x)
        assert got.answered_by == f"edge {kserve['target']}" and got.cut_id == cut
        # ONNX Runtime and torch round differently: not bit-exact, float32 close
        assert close(got.outputs, want, 1e-4), (cut, (got.outputs - want).abs().max())


def test_int8_answers_are_within_the_codec_bound(kserve):
    sm, x = kserve["sm"], _photo()
    for cut in kserve["cuts"]:
        crossing = sm.head(cut)(x)
        dequantized = [decode_torch(get_codec("int8").encode(t, name=s.name))
                       for t, s in zip(crossing, sm.cuts[cut].tensors)]
        with torch.no_grad():
            want = sm.tail(cut)(*dequantized)  # what int8 lets the edge see, run here
        with SplitClient(kserve["bundle"], edges=[kserve["target"]], cut=cut, codec="int8",
                         fallback="error", protocol="oip", background=False) as client:
            got = client.infer(x)
        assert close(got, want, 1e-4), (cut, (got - want).abs().max())
        with torch.no_grad():
            assert close(got, kserve["eager"](x), 0.05)


def test_bad_quantization_parameters_are_invalid_argument_on_kserve(kserve):
    """The adapter refuses what it cannot read, through tritonclient, naming the problem."""
    import numpy as np
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    sm, cut = kserve["sm"], kserve["cuts"][0]
    spec = sm.cuts[cut].tensors[0]
    shape = [1, *spec.shape[1:]]
    x = tc.InferInput(spec.name, shape, "UINT8")
    x.set_data_from_numpy(np.zeros(shape, np.uint8))
    others = []
    for s in sm.cuts[cut].tensors[1:]:
        others.append(tc.InferInput(s.name, [1, *s.shape[1:]], "FP32"))
        others[-1].set_data_from_numpy(np.zeros([1, *s.shape[1:]], np.float32))
    client = tc.InferenceServerClient(kserve["target"])
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer(f"resnet18.cut{cut}", [x, *others])
        assert "INVALID_ARGUMENT" in str(info.value.status())
        assert "'scale'" in info.value.message()
        kserve_tails.set_params(x, {"axis": 1, "scales": "0.5,0.5", "zero_points": "0,0"})
        with pytest.raises(InferenceServerException) as info:
            client.infer(f"resnet18.cut{cut}", [x, *others])
        assert "has 2 value(s)" in info.value.message()
    finally:
        client.close()


def test_planning_failover_and_fallback_with_kserve(kserve, tmp_path):
    """A dead edge first, KServe second: requests fail over; the planner plans over the cuts
    KServe serves; KServe gone, the client falls back to the local tail."""
    x = _photo()
    dead = f"127.0.0.1:{kserve_tails.free_port()}"
    with torch.no_grad():
        want = kserve["eager"](x)
    with SplitClient(kserve["bundle"], edges=[dead, kserve["target"]], fallback="local",
                     protocol="oip", device_slowdown=20, background=False) as client:
        plan = client.plan
        got = client.infer_result(x)
        assert plan.cut_id in kserve["cuts"], plan
        assert got.answered_by == f"edge {kserve['target']}"
        assert close(got.outputs, want, 0.05)
        kserve["proc"].terminate()
        kserve["proc"].wait(20)
        after = client.infer_result(x)
    assert after.answered_by == "local fallback"
    assert close(after.outputs, want, 0.05)

