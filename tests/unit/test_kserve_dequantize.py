"""The KServe adapter's dequantization (deploy/kserve/splitinfer_tails.py) is bit-identical with
what the splitinfer node decodes from the same UINT8/INT8 codes and parameters.

The adapter never imports splitinfer (it runs in KServe's environment); its module imports only
numpy at the top, so it loads here without kserve. Served end to end: tests/e2e/test_kserve_tails.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from splitinfer.codec import decode, get_codec
from splitinfer.core.spec import TensorSpec
from splitinfer.wire import oip_convert
from splitinfer.wire.oip import grpc_service_pb2 as pb

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kserve" / "splitinfer_tails.py"


@pytest.fixture(scope="module")
def tails():
    spec = importlib.util.spec_from_file_location("splitinfer_tails", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bits(a: np.ndarray) -> np.ndarray:
    assert a.dtype == np.float32
    return a.view(np.uint32)


def _request_tensor(datatype: str, shape: tuple[int, ...], axis: int | None,
                    scales: list[float], zps: list[int]) -> pb.ModelInferRequest.InferInputTensor:
    t = pb.ModelInferRequest.InferInputTensor(name="t", datatype=datatype, shape=list(shape))
    for key, value in oip_convert.quant_parameters(axis, scales, zps).items():
        oip_convert.set_parameter(t.parameters, key, value)
    return t


def test_uint8_codes_of_the_int8_codec_decode_bit_identically(tails):
    rng = np.random.default_rng(0)
    for trial in range(60):
        shape = tuple(int(v) for v in rng.integers(1, 9, size=int(rng.integers(1, 5))))
        x = (rng.standard_normal(shape) * 10 ** rng.uniform(-6, 4)).astype(np.float32)
        if trial % 3 == 0:
            x = np.maximum(x, 0)  # post-ReLU: zero points all 0
        e = get_codec("int8").encode(torch.from_numpy(x), name="t")
        codes = np.frombuffer(e.payload, np.uint8).reshape(e.shape)
        t = _request_tensor("UINT8", shape, e.axis, [float(s) for s in e.scales],
                            [int(z) for z in e.zero_points])
        got = tails.dequantize(codes, False, dict(t.parameters), "t")
        assert np.array_equal(_bits(got), _bits(decode(e))), (trial, shape, e.axis)


@pytest.mark.parametrize("datatype", ["UINT8", "INT8"])
def test_any_codes_decode_as_the_nodes_oip_conversion_does(tails, datatype):
    """Arbitrary scales (float64 text, rounded to float32) and zero points, signed codes too,
    against the node's own path: oip_convert.input_tensor, then the codec's decode."""
    rng = np.random.default_rng(1)
    low, high = (-128, 128) if datatype == "INT8" else (0, 256)
    for trial in range(60):
        shape = tuple(int(v) for v in rng.integers(1, 7, size=int(rng.integers(1, 5))))
        axis = None if trial % 2 or len(shape) < 2 else int(rng.integers(0, len(shape)))
        n = 1 if axis is None else shape[axis]
        scales = (10 ** rng.uniform(-8, 3, size=n)).tolist()
        zps = [int(z) for z in rng.integers(low, high, size=n)]
        codes = rng.integers(low, high, size=shape).astype(np.int8 if datatype == "INT8"
                                                             else np.uint8)
        t = _request_tensor(datatype, shape, axis, scales, zps)
        node = decode(oip_convert.input_tensor(t, codes.tobytes(),
                                               TensorSpec("t", shape, "float32"), "t"))
        got = tails.dequantize(codes, datatype == "INT8", dict(t.parameters), "t")
        assert np.array_equal(_bits(got), _bits(node)), (trial, shape, axis)
        # the plain values KServe's parameter conversion hands predict() decode the same
        plain = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in t.parameters.items()}
        assert np.array_equal(_bits(tails.dequantize(codes, datatype == "INT8", plain, "t")),
                              _bits(node))


@pytest.mark.parametrize("params, says", [
    ({"scale": 1e-50, "zero_point": 0}, "finite and > 0 in float32"),
    ({"scale": 1e300, "zero_point": 0}, "finite and > 0 in float32"),
    ({"scale": True, "zero_point": 0}, "'scale' must be a double_param"),
    ({"scale": 0.5, "zero_point": 0.0}, "'zero_point' must be an int64_param"),
    ({"axis": 1.0, "scales": "1,1", "zero_points": "0,0"}, "'axis' must be an int64_param"),
    ({"axis": -3, "scales": "1", "zero_points": "0"}, "'axis' -3 is outside"),
    ({"axis": -1, "scales": "1,1,1", "zero_points": "0,0,0"}, "'scales' has 3 value(s)"),
    ({"axis": 1, "scales": "1,1", "zero_points": "0,99999999999999999999"},
     "'zero_points' holds a value that is not a number"),
])
def test_bad_parameters_name_the_problem(tails, params, says):
    with pytest.raises(tails.BadInput) as info:
        tails.dequantize(np.zeros((2, 2), np.uint8), False, params, "t")
    assert says in str(info.value) and "'t'" in str(info.value)
