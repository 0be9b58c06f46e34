"""``deploy/kserve/splitinfer_tails.py`` on KServe 0.21, driven with tritonclient directly.

The adapter serves the ONNX tails that ``splitinfer export --onnx`` wrote for a bundle under our
OIP names; here it runs in the peer benchmark's venv (``.bench/kserve-venv``, made once by
``benchmarks.peer.ensure_peer_venv``: ~1.5 min and ~5.5 GB) and is checked request by request
with tritonclient, without the SDK (``tests/e2e/test_client_kserve.py`` drives it with
``SplitClient(protocol="oip")``): model names and metadata, fp32 answers against the local torch
tail, UINT8/INT8 codes (per channel, and whole tensor: a ``double_param`` KServe's own message
lacks) against the local tail on the dequantized tensors, BF16, and refusals as
INVALID_ARGUMENT naming the parameter. A small conv net with a skip (tests.models.SkipNet), seeded
random weights, scikit-learn's sample photos as inputs; set SPLITINFER_SKIP_PEER=1 to skip.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import splitinfer
from splitinfer.codec import get_codec
from splitinfer.model.bundle import save_bundle
from splitinfer.model.onnx_export import export_onnx
from splitinfer.model.tensors import decode_torch
from splitinfer.wire.oip_convert import model_name, quant_parameters
from tests.e2e import kserve_tails
from tests.models import build_skipnet

pytestmark = pytest.mark.slow

NAME = "skipnet"
#: cut 0 (the whole model, the bare name), 4 (two tensors cross: the skip), 10 (a rank-2
#: tensor: int8 quantizes it with one scale, a double_param)
CUTS = (0, 4, 10)


def _model(cut: int) -> str:
    return model_name(NAME, cut)


def _close(got: np.ndarray, want: torch.Tensor) -> bool:
    # ONNX Runtime and torch round differently: float32-close, not bit-exact
    return bool(np.allclose(got, want.numpy(), rtol=1e-4, atol=1e-5))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import tritonclient.grpc as tc

    root = tmp_path_factory.mktemp("kserve-tails")
    sm = splitinfer.partition(build_skipnet().eval(), (torch.randn(1, 3, 16, 16),), name=NAME)
    bundle = root / NAME / "1"
    save_bundle(sm, bundle, version="1")
    export_onnx(bundle, list(CUTS))
    with kserve_tails.serve(bundle, [_model(c) for c in CUTS], "--threads", "1") as (target, _):
        client = tc.InferenceServerClient(target)
        try:
            yield {"sm": sm, "client": client}
        finally:
            client.close()


def _photos() -> torch.Tensor:
    return kserve_tails.photo(16, 2)  # batch 2: the tails' batch dim is dynamic


def _infer(served: dict[str, Any], cut: int, inputs: list[tuple[str, np.ndarray, str,
                                                               dict[str, Any]]]) -> Any:
    import tritonclient.grpc as tc

    made = []
    for name, arr, datatype, params in inputs:
        inp = tc.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr)
        kserve_tails.set_params(inp, params)
        made.append(inp)
    return served["client"].infer(_model(cut), made)


def test_models_and_metadata_are_the_cuts_of_the_bundle(served):
    """KServe has no RepositoryIndex: each name is asked for (ModelReady, ModelMetadata)."""
    from tritonclient.utils import InferenceServerException

    sm, client = served["sm"], served["client"]
    for cut in CUTS:
        meta = client.get_model_metadata(_model(cut))
        assert meta.name == _model(cut)
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            (s.name, "FP32", list(s.shape)) for s in sm.cuts[cut].tensors]
        assert [t.name for t in meta.outputs] == [s.name for s in sm.output_specs]
    try:  # a cut without an ONNX tail is not served
        assert not client.is_model_ready(f"{NAME}.cut5")
    except InferenceServerException as exc:
        assert exc.status() == "StatusCode.NOT_FOUND", exc


def test_fp32_answers_match_the_local_tail(served):
    sm, x = served["sm"], _photos()
    out = sm.output_specs[0].name
    for cut in CUTS:
        crossing = sm.head(cut)(x)
        with torch.inference_mode():
            want = sm.tail(cut)(*crossing)
        got = _infer(served, cut, [(s.name, t.detach().numpy(), "FP32", {})
                                   for s, t in zip(sm.cuts[cut].tensors, crossing)])
        assert got.get_response().model_name == _model(cut)
        assert _close(got.as_numpy(out), want), (cut, np.abs(got.as_numpy(out) - want.numpy()).max())


@pytest.mark.parametrize("signed", [False, True], ids=["UINT8", "INT8"])
def test_int8_codes_answer_as_the_local_tail_on_the_dequantized_tensors(served, signed):
    """Per channel at the conv cuts, one scale (a double_param) at the rank-2 cut."""
    sm, x = served["sm"], _photos()
    out = sm.output_specs[0].name
    axes = set()
    for cut in CUTS:
        crossing = sm.head(cut)(x)
        encoded = [get_codec("int8").encode(t, name=s.name)
                   for s, t in zip(sm.cuts[cut].tensors, crossing)]
        with torch.inference_mode():  # what the codes say, through the local tail
            want = sm.tail(cut)(*[decode_torch(e) for e in encoded])
        inputs = []
        for e in encoded:
            codes = np.frombuffer(e.payload, np.uint8).reshape(e.shape)
            params: dict[str, Any] = quant_parameters(e.axis, e.scales, e.zero_points)
            axes.add(e.axis)
            if signed:  # the same values as signed codes: q - 128, zero points - 128
                codes = (codes.astype(np.int16) - 128).astype(np.int8)
                if e.axis is None:
                    params["zero_point"] -= 128
                else:
                    params["zero_points"] = ",".join(str(int(z) - 128) for z in e.zero_points)
            inputs.append((e.name, codes, "INT8" if signed else "UINT8", params))
        got = _infer(served, cut, inputs).as_numpy(out)
        assert _close(got, want), (cut, np.abs(got - want.numpy()).max())
    assert axes == {1, None}  # both parameter forms were sent


def test_narrow_floats_are_widened(served):
    import ml_dtypes

    sm, x = served["sm"], _photos()
    cut, out = 4, sm.output_specs[0].name
    crossing = [t.detach() for t in sm.head(cut)(x)]
    for datatype, dtype in (("FP16", np.float16), ("BF16", ml_dtypes.bfloat16)):
        narrow = [t.numpy().astype(dtype) for t in crossing]
        with torch.inference_mode():
            want = sm.tail(cut)(*[torch.from_numpy(a.astype(np.float32)) for a in narrow])
        got = _infer(served, cut, [(s.name, a, datatype, {}) for s, a in
                                   zip(sm.cuts[cut].tensors, narrow)]).as_numpy(out)
        assert _close(got, want), (datatype, np.abs(got - want.numpy()).max())


@pytest.mark.parametrize("params, says", [
    ({}, "'scale'"),
    ({"scale": 0.0, "zero_point": 0}, "scales must be finite and > 0"),
    ({"scale": "0.5", "zero_point": 0}, "'scale' must be a double_param"),
    ({"scale": 0.5, "zero_point": 256}, "zero points must be ints in 0..255"),
    ({"axis": 1, "scales": "0.5,0.5", "zero_points": "0,0"}, "'scales' has 2 value(s)"),
    ({"axis": 1, "scales": ",".join(["0.5"] * 8), "zero_points": ",".join(["z"] * 8)},
     "'zero_points' holds a value that is not a number"),
    ({"axis": 9, "scales": "1", "zero_points": "0"}, "'axis' 9 is outside"),
], ids=["missing", "zero-scale", "scale-as-string", "zero-point-range", "scale-count",
        "zero-point-text", "axis-range"])
def test_bad_quantization_parameters_are_invalid_argument(served, params, says):
    from tritonclient.utils import InferenceServerException

    sm, cut = served["sm"], 4
    first, second = sm.cuts[cut].tensors
    shape = [1, *first.shape[1:]]
    with pytest.raises(InferenceServerException) as info:
        _infer(served, cut, [(first.name, np.zeros(shape, np.uint8), "UINT8", params),
                             (second.name, np.zeros(shape, np.float32), "FP32", {})])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    assert says in info.value.message() and repr(first.name) in info.value.message(), \
        info.value.message()


def test_bad_shapes_and_datatypes_are_invalid_argument_not_internal(served):
    from tritonclient.utils import InferenceServerException

    sm, cut = served["sm"], 4
    first, second = sm.cuts[cut].tensors
    ok = np.zeros([1, *first.shape[1:]], np.float32)
    cases = [
        ([(first.name, np.zeros([1, 8, 16, 15], np.float32), "FP32", {}),
          (second.name, ok, "FP32", {})], "expects [-1, 8, 16, 16]"),
        ([(first.name, np.zeros([2, 8, 16, 16], np.float32), "FP32", {}),
          (second.name, ok, "FP32", {})], "share that dimension"),
        ([(first.name, ok.astype(np.int32), "INT32", {}), (second.name, ok, "FP32", {})],
         "datatype INT32 does not fit"),
        ([(second.name, ok, "FP32", {})], f"missing [{first.name!r}]"),
    ]
    for inputs, says in cases:
        with pytest.raises(InferenceServerException) as info:
            _infer(served, cut, inputs)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
        assert says in info.value.message(), info.value.message()
