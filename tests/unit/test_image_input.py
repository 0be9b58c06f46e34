"""Image inputs: uint8 NHWC frames in, the normalization inside the captured graph, exact cuts,
the manifest's ``image_input``, ONNX heads on frames, and ``splitinfer export --image-*``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import splitinfer
from splitinfer import BundleError, PartitionError
from splitinfer.model.bundle import load_bundle, read_manifest, save_bundle
from splitinfer.model.preprocess import IMAGENET, PRESETS, ImageInput, ImageModel
from splitinfer.tools.cli import main
from splitinfer.tools.frames import batch, normalized
from tests.models import Chain, SkipNet

SIZE = 16


def _frames(n: int, size: int = SIZE, start: int = 0) -> torch.Tensor:
    return torch.from_numpy(batch(n, size, start).copy())


@pytest.fixture(scope="module")
def skipnet_image():
    torch.manual_seed(0)
    model = SkipNet().eval()
    sm = splitinfer.partition(model, torch.randn(1, 3, SIZE, SIZE), name="skipnet",
                              image_input=IMAGENET)
    return model, sm


@pytest.fixture(scope="module")
def image_bundle(skipnet_image, tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "skipnet"
    save_bundle(skipnet_image[1], path)
    return path


# -- ImageInput ------------------------------------------------------------------------------
def test_imagenet_preset_and_json_round_trip():
    assert PRESETS["imagenet"] is IMAGENET is splitinfer.IMAGENET
    assert splitinfer.ImageInput is ImageInput
    assert IMAGENET.scale == 1 / 255 and IMAGENET.layout == "NHWC" and IMAGENET.channels == 3
    custom = ImageInput(mean=(0.5,), std=(0.25,), scale=1 / 127.5)
    for value in (IMAGENET, custom):
        back = ImageInput.from_json(json.loads(json.dumps(value.to_json())))
        assert back == value
    assert IMAGENET.describe() == ("uint8 NHWC, mean=(0.485, 0.456, 0.406), "
                                   "std=(0.229, 0.224, 0.225), scale=1/255")


@pytest.mark.parametrize("kwargs, match", [
    ({"mean": (0.5, 0.5), "std": (0.5, 0.5)}, "one per channel"),
    ({"mean": (0.5, 0.5, 0.5), "std": (0.5,)}, "the same count"),
    ({"mean": (), "std": ()}, "one per channel"),
    ({"mean": (0.5,), "std": (0.0,)}, "must be > 0"),
    ({"mean": (0.5,), "std": (-1.0,)}, "must be > 0"),
    ({"mean": (float("nan"),), "std": (1.0,)}, "finite numbers"),
    ({"mean": (0.5,), "std": (float("inf"),)}, "finite numbers"),
    ({"mean": ("a",), "std": (1.0,)}, "finite numbers"),
    ({"mean": 0.5, "std": (1.0,)}, "sequence of numbers"),
    ({"mean": (0.5,), "std": (1.0,), "scale": 0}, "scale 0 must be a finite number > 0"),
    ({"mean": (0.5,), "std": (1.0,), "scale": float("nan")}, "scale"),
    ({"mean": (0.5,), "std": (1.0,), "layout": "NCHW"}, "NHWC"),
])
def test_bad_image_input_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageInput(**kwargs)


@pytest.mark.parametrize("obj, match", [
    ([0.5], "must be an object"),
    ({"mean": [0.5], "std": [1.0], "dtype": "float32"}, "frames are uint8"),
    ({"mean": "0.5", "std": [1.0]}, "mean must be a list"),
    ({"mean": [0.5], "std": [0.0]}, "> 0"),
])
def test_bad_image_input_json_is_refused(obj, match):
    with pytest.raises(ValueError, match=match):
        ImageInput.from_json(obj)


# -- ImageModel and partition ----------------------------------------------------------------
def test_image_model_normalizes_like_torchvision_on_real_frames():
    frames = _frames(3)
    want = torch.from_numpy(normalized(frames.numpy()))  # ToTensor + Normalize, in numpy
    got = ImageModel(torch.nn.Identity(), IMAGENET)(frames)
    assert got.dtype == torch.float32 and got.shape == (3, 3, SIZE, SIZE)
    assert got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_partition_takes_uint8_frames_and_keeps_the_model_cut_names(skipnet_image):
    model, sm = skipnet_image
    assert sm.image_input == IMAGENET
    (spec,) = sm.input_specs
    assert (spec.shape, spec.dtype) == ((-1, SIZE, SIZE, 3), "uint8")
    assert sm.cuts[0].name == "input" and sm.cuts[0].tensors == (spec,)
    assert sm.cuts[0].nbytes_per_sample == SIZE * SIZE * 3  # the frame: one byte a value
    plain = splitinfer.partition(model, torch.randn(1, 3, SIZE, SIZE))
    assert plain.image_input is None
    names = [c.name for c in sm.cuts]
    preprocessing = [n for n in names if n.startswith("image.")]
    assert preprocessing and names[1:1 + len(preprocessing)] == preprocessing
    # after the normalization, the model's own cuts under their plain-bundle names
    assert names[1 + len(preprocessing):] == [c.name for c in plain.cuts][1:]
    normalized_cut = sm.cuts[len(preprocessing)]
    assert [(t.shape, t.dtype) for t in normalized_cut.tensors] == \
        [((-1, 3, SIZE, SIZE), "float32")]


@pytest.mark.parametrize("n", [1, 3])
def test_every_cut_is_exact_on_frames(skipnet_image, n):
    model, sm = skipnet_image
    frames = _frames(n, start=n)
    with torch.no_grad():
        whole = ImageModel(model, IMAGENET)(frames)
        plain = model(torch.from_numpy(normalized(frames.numpy())))
    torch.testing.assert_close(whole, plain, rtol=1e-5, atol=1e-6)
    for cut in sm.cuts:
        out = sm.tail(cut.id)(*sm.head(cut.id)(frames))
        assert torch.equal(out, whole), f"cut {cut.id} ({cut.name}) is not exact"
        copied = sm.tail(cut.id)(*(t.clone() for t in sm.head(cut.id)(frames)))
        assert torch.equal(copied, whole), f"cut {cut.id} ({cut.name}) on decoded copies"


def test_frames_as_the_example_give_the_same_split(skipnet_image):
    model, sm = skipnet_image
    from_frames = splitinfer.partition(model, _frames(2), image_input=IMAGENET)
    assert from_frames.input_specs == sm.input_specs
    assert [c.name for c in from_frames.cuts] == [c.name for c in sm.cuts]
    assert from_frames.fingerprint == sm.fingerprint


def test_wrong_frames_are_refused_with_a_clear_error(skipnet_image):
    model, sm = skipnet_image
    frames = _frames(2)
    as_float = torch.from_numpy(normalized(frames.numpy()))
    for cut_id in (0, 1, len(sm.cuts) - 1):
        with pytest.raises(PartitionError, match="dtype float32.*uint8 NHWC frames"):
            sm.head(cut_id)(as_float)
        with pytest.raises(PartitionError, match=r"shape \[2, 3, 16, 16\].*uint8 NHWC"):
            sm.head(cut_id)(frames.permute(0, 3, 1, 2))
    with pytest.raises(PartitionError, match="dtype float32"):
        sm(as_float)
    wrapped = ImageModel(model, IMAGENET)
    with pytest.raises(PartitionError, match="uint8 frames"):
        wrapped(frames.float())
    with pytest.raises(PartitionError, match="NHWC only"):
        wrapped(frames.permute(0, 3, 1, 2).contiguous())
    with pytest.raises(PartitionError, match="NHWC only"):
        wrapped(frames[0])


@pytest.mark.parametrize("example, match", [
    (torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8), "NHWC only"),  # NCHW frames
    (torch.zeros(1, 3, SIZE, SIZE, dtype=torch.int64), "float input"),
    (torch.zeros(1, 4, SIZE, SIZE), "4 channel"),
    (torch.zeros(3, SIZE, SIZE), "float input"),
])
def test_bad_image_examples_are_refused(example, match):
    with pytest.raises(PartitionError, match=match):
        splitinfer.partition(SkipNet().eval(), example, image_input=IMAGENET)


def test_image_input_needs_one_input_and_an_image_input():
    with pytest.raises(PartitionError, match="one input"):
        splitinfer.partition(SkipNet().eval(), (torch.zeros(1, 3, 8, 8),) * 2,
                             image_input=IMAGENET)
    with pytest.raises(PartitionError, match="must be an ImageInput"):
        splitinfer.partition(SkipNet().eval(), torch.zeros(1, 3, 8, 8),
                             image_input="imagenet")  # type: ignore[arg-type]


def test_mobilenet_v3_small_takes_frames_exactly():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small().eval()  # random weights: no download
    sm = splitinfer.partition(model, torch.randn(1, 3, 224, 224), image_input=IMAGENET)
    assert sm.input_specs[0].shape == (-1, 224, 224, 3)
    frames = _frames(2, 224)
    with torch.no_grad():
        whole = ImageModel(model, IMAGENET)(frames)
        plain = model(torch.from_numpy(normalized(frames.numpy())))
    torch.testing.assert_close(whole, plain, rtol=1e-5, atol=1e-5)
    picked = sorted({*range(0, len(sm.cuts), 15), *range(7), len(sm.cuts) - 1})
    for cut_id in picked:  # every cut takes ~0.3 s here: a spread of them, the first ones all
        out = sm.tail(cut_id)(*sm.head(cut_id)(frames))
        assert torch.equal(out, whole), f"cut {cut_id} ({sm.cuts[cut_id].name}) is not exact"


# -- bundles ---------------------------------------------------------------------------------
def test_bundle_records_and_restores_the_image_input(skipnet_image, image_bundle):
    model, sm = skipnet_image
    obj = json.loads((image_bundle / "manifest.json").read_text())
    assert obj["image_input"] == {"layout": "NHWC", "dtype": "uint8", "scale": 1 / 255,
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert read_manifest(image_bundle).image_input == IMAGENET
    loaded = load_bundle(image_bundle)
    assert loaded.image_input == IMAGENET and loaded.fingerprint == sm.fingerprint
    assert [c.name for c in loaded.cuts] == [c.name for c in sm.cuts]
    frames = _frames(3, start=5)
    with torch.no_grad():
        whole = ImageModel(model, IMAGENET)(frames)
    for cut in loaded.cuts:
        assert torch.equal(loaded.tail(cut.id)(*loaded.head(cut.id)(frames)), whole), cut
    with pytest.raises(PartitionError, match="uint8 NHWC frames"):
        loaded.head(0)(frames.float())


def test_image_input_reads_without_torch(image_bundle):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import splitinfer\n"
            "from splitinfer.model.manifest import read_manifest\n"
            f"m = read_manifest({str(image_bundle)!r})\n"
            "print(m.image_input == splitinfer.IMAGENET, m.inputs[0].dtype)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["True", "uint8"], out.stderr


def test_old_manifest_without_the_field_still_loads(tmp_path):
    torch.manual_seed(0)
    sm = splitinfer.partition(Chain().eval(), torch.randn(1, 16))
    save_bundle(sm, tmp_path / "chain")
    obj = json.loads((tmp_path / "chain" / "manifest.json").read_text())
    assert "image_input" not in obj  # what bundles from before image inputs look like
    assert read_manifest(tmp_path / "chain").image_input is None
    assert load_bundle(tmp_path / "chain").image_input is None


def _edited(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():  # not onnx/: another test may have written it
            (dst / f.name).write_bytes(f.read_bytes())
    obj = json.loads((dst / "manifest.json").read_text())
    edit(obj)
    (dst / "manifest.json").write_text(json.dumps(obj))
    return dst


@pytest.mark.parametrize("edit, match, reader", [
    (lambda o: o.update(image_input={"mean": [0.5, 0.5], "std": [1, 1]}), "bad image_input",
     read_manifest),
    (lambda o: o.update(image_input="imagenet"), "bad image_input", read_manifest),
    (lambda o: o["image_input"].update(std=[0.229, 0.224, -1]), "bad image_input",
     read_manifest),
    (lambda o: o["image_input"].update(layout="NCHW"), "NHWC", read_manifest),
    (lambda o: o["inputs"][0].update(dtype="float32"), "one uint8 NHWC input", read_manifest),
    (lambda o: o["image_input"].update(mean=[0.5, 0.5, 0.5]), "not what the program",
     load_bundle),
    (lambda o: o["image_input"].update(scale=1.0), "scale 1 is not what the program",
     load_bundle),
])
def test_inconsistent_image_input_is_refused(image_bundle, tmp_path, edit, match, reader):
    path = _edited(image_bundle, tmp_path / "b", edit)
    with pytest.raises(BundleError, match=match):
        reader(path)


def test_onnx_head_takes_frames(image_bundle):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from device_client.onnx_head import OnnxSegments
    from splitinfer.core.errors import InvalidRequest
    from splitinfer.model.onnx_export import export_onnx

    sm = load_bundle(image_bundle)
    normalized_cut = max(c.id for c in sm.cuts if c.name.startswith("image."))
    cuts = [0, 1, normalized_cut, normalized_cut + 2]
    export_onnx(image_bundle, cuts)
    segments = OnnxSegments(image_bundle)
    frames = batch(2, SIZE, 7)
    for cut_id in cuts:
        got = segments.run_head(cut_id, [frames])
        want = sm.head(cut_id)(torch.from_numpy(frames.copy()))
        for g, w in zip(got, want):
            assert g.dtype == w.numpy().dtype and g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)
    assert segments.run_head(1, [frames])[0].dtype == np.uint8  # permuted, still the frame
    with pytest.raises(InvalidRequest, match="dtype uint8"):
        segments.run_head(1, [normalized(frames)])


# -- CLI -------------------------------------------------------------------------------------
def _export(tmp_path: Path, *flags: str) -> list[str]:
    return ["export", "tests.models:SkipNet", "--example-shape", f"1,3,{SIZE},{SIZE}",
            "-o", str(tmp_path / "b"), *flags]


def test_export_cli_image_input_preset(tmp_path, capsys):
    assert main(_export(tmp_path, "--image-input", "imagenet", "--json")) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["image_input"] == IMAGENET.to_json()
    m = read_manifest(tmp_path / "b")
    assert m.image_input == IMAGENET
    assert [(s.shape, s.dtype) for s in m.inputs] == [((-1, SIZE, SIZE, 3), "uint8")]
    assert f"input: frames Nx{SIZE}x{SIZE}x3, uint8 NHWC" in captured.err
    assert main(["inspect", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "image input: uint8 NHWC, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)" \
        in out


def test_export_cli_custom_image_input(tmp_path, capsys):
    assert main(_export(tmp_path, "--image-mean", "0.5,0.5,0.5", "--image-std", "0.5,0.25,0.5",
                        "--image-scale", str(1 / 127.5), "--quiet")) == 0
    want = ImageInput(mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5), scale=1 / 127.5)
    assert read_manifest(tmp_path / "b").image_input == want
    assert load_bundle(tmp_path / "b").image_input == want
    assert "scale=1/127.5" in capsys.readouterr().out  # what export said it wrote
    assert main(["inspect", str(tmp_path / "b"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_input"]["std"] == [0.5, 0.25, 0.5]


def test_plain_inspect_has_no_image_line(tmp_path, capsys):
    assert main(_export(tmp_path, "--quiet")) == 0
    assert main(["inspect", str(tmp_path / "b")]) == 0
    assert "image input" not in capsys.readouterr().out


@pytest.mark.parametrize("flags, match", [
    (["--image-input", "imagenet", "--image-mean", "0.5,0.5,0.5"], "is a preset"),
    (["--image-input", "imagenet", "--image-scale", "0.5"], "is a preset"),
    (["--image-mean", "0.5,0.5,0.5"], "needs both --image-mean and --image-std"),
    (["--image-std", "0.5,0.5,0.5"], "needs both --image-mean and --image-std"),
    (["--image-scale", "0.5"], "needs both --image-mean and --image-std"),
    (["--image-mean", "0.5,x,0.5", "--image-std", "1,1,1"], "--image-mean '0.5,x,0.5'"),
    (["--image-mean", "0.5,0.5,0.5", "--image-std", "1,0,1"], "must be > 0"),
    (["--image-mean", "0.5,0.5", "--image-std", "1,1"], "one per channel"),
    (["--image-mean", "0.5,0.5,0.5", "--image-std", "1,1,1", "--image-scale", "-1"],
     "scale -1.0 must be"),
    (["--image-input", "imagenet", "--example-shape", "1,16"], "one --example-shape"),
    (["--image-mean", "0.5,0.5,0.5,0.5", "--image-std", "1,1,1,1"], "mean/std 4"),
])
def test_export_cli_refuses_bad_image_flags(tmp_path, capsys, flags, match):
    assert main(_export(tmp_path, *flags)) == 2
    err = capsys.readouterr().err
    assert "error:" in err and match in err, err
    assert not (tmp_path / "b").exists()


def test_export_cli_refuses_image_flags_with_from_bundle(image_bundle, capsys):
    assert main(["export", "--from-bundle", str(image_bundle), "--onnx", "--cut", "1",
                 "--image-input", "imagenet"]) == 2
    assert "drop them" in capsys.readouterr().err


def test_export_cli_refuses_an_unknown_preset(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(_export(tmp_path, "--image-input", "cifar"))
    assert "invalid choice: 'cifar'" in capsys.readouterr().err
