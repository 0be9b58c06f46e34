"""`splitinfer fidelity`: measured figures, profile rewrite, data loading, errors, the CLI.

The model is a small CNN trained here on scikit-learn's digits (8x8 upsampled to 32x32 uint8
frames, so the image codecs apply at cut 0); it takes uint8 NHWC frames, as an image bundle.
"""

from __future__ import annotations

import copy
import json
import sys
import types
from dataclasses import replace

import numpy as np
import pytest
import torch

import splitinfer
from splitinfer.core.errors import SplitInferError
from splitinfer.core.profiles import CodecCost, CutCost, DeviceProfile
from splitinfer.measure.fidelity import FidelityReport, Sample, measure_fidelity
from splitinfer.model.bundle import save_bundle
from splitinfer.tools.cli import main
from splitinfer.tools.datasets import load_samples
from splitinfer.tools.frames import normalized, sample_frames
from tests.models import Chain, SkipNet, digit_frames, train_digits_net

pytest.importorskip("sklearn.datasets")
Image = pytest.importorskip("PIL.Image")

SIZE = 32


@pytest.fixture(scope="module")
def digits():
    return digit_frames()


@pytest.fixture(scope="module")
def trained(digits):
    """(SplitModel, held-out frames, labels): 3 epochs on 1500 digits, ~95% held out."""
    frames, labels = digits
    model = train_digits_net(frames[:1500], labels[:1500], epochs=3)
    sm = splitinfer.partition(model, (torch.from_numpy(frames[:1]),), name="digits")
    return sm, frames[1500:1530], labels[1500:1530], model


def _samples(frames, labels=None):
    return [Sample((torch.from_numpy(f[None].copy()),), None if labels is None else int(y))
            for f, y in zip(frames, labels if labels is not None else [None] * len(frames))]


@pytest.fixture(scope="module")
def report(trained):
    sm, frames, labels, _ = trained
    return measure_fidelity(sm, _samples(frames, labels),
                            codecs=("fp32", "png", "int8", "jpeg-q50"),
                            source="held-out digits")


def test_lossless_codecs_change_nothing(report, trained):
    sm = trained[0]
    fp32 = [r for r in report.rows if r.codec == "fp32"]
    assert [r.cut_id for r in fp32] == list(range(len(sm.cuts) - 1))
    for r in fp32 + [report.row(0, "png")]:
        assert r.n == 30 and r.error_max == 0.0 and r.agreement == 1.0
        assert r.cosine_min == pytest.approx(1.0)
        assert r.accuracy == report.reference_accuracy
    assert report.row(0, "fp32").request_bytes == SIZE * SIZE  # uint8 frame travels raw
    assert report.row(0, "png").request_bytes < SIZE * SIZE


def test_lossy_codecs_move_the_answer_a_little(report, trained):
    sm = trained[0]
    middle = len(sm.cuts) // 2
    int8 = report.row(middle, "int8")
    assert 0 < int8.error_p50 <= int8.error_p95 <= int8.error_max < 0.2
    assert int8.agreement >= 0.9 and int8.cosine_mean > 0.98
    jpeg = report.row(0, "jpeg-q50")
    assert 0 < jpeg.error_p50 and jpeg.request_bytes < SIZE * SIZE
    assert int8.request_bytes < report.row(middle, "fp32").request_bytes / 3


def test_image_codecs_only_at_the_frame(report):
    image_rows = [r for r in report.rows if r.codec in ("png", "jpeg-q50")]
    assert {r.cut_id for r in image_rows} == {0}
    assert report.notes == ()


def test_agreement_and_accuracy(report):
    assert report.n == 30 and report.source == "held-out digits"
    assert report.distinct_top1 >= 5 and report.agreement_meaningful
    assert report.reference_accuracy is not None and report.reference_accuracy > 0.8


def test_agreement_is_flagged_when_the_answers_do_not_vary(trained):
    _, frames, _, model = trained
    stuck = copy.deepcopy(model)
    with torch.no_grad():
        stuck.fc.bias[3] = 1e4  # every input: class 3
    sm = splitinfer.partition(stuck, (torch.from_numpy(frames[:1]),), name="stuck")
    rep = measure_fidelity(sm, _samples(frames[:8]), codecs=("int8",), cut_ids=[1])
    assert rep.distinct_top1 == 1 and not rep.agreement_meaningful
    assert rep.reference_accuracy is None and rep.rows[0].accuracy is None


def test_agreement_is_flagged_for_an_output_that_is_not_class_scores():
    seq = splitinfer.partition(Chain().eval(), (torch.randn(1, 4, 16),), name="chain")
    inputs = [Sample((torch.linspace(-1, 1, 64).reshape(1, 4, 16) * k,)) for k in range(1, 9)]
    rep = measure_fidelity(seq, inputs, codecs=("fp16", "png"))
    assert not rep.agreement_meaningful  # (1, 4, 8): not one row of scores
    assert all(0 < r.error_max < 1e-2 for r in rep.rows)
    assert {r.codec for r in rep.rows} == {"fp16"}  # no uint8 frame anywhere
    assert rep.notes == ("png: cannot carry the tensors of any measured cut",)


def test_json_round_trip(report):
    back = FidelityReport.from_json(json.loads(json.dumps(report.to_json())))
    assert back == report


def _profile(sm, codecs=("fp32", "int8", "bf16"), fingerprint=None):
    cuts = tuple(CutCost(cut_id=c.id, name=c.name, head_s=0.001 * c.id, head_flops=0.0,
                         head_memory_bytes=0, head_nodes=c.head_nodes,
                         codecs=tuple(CodecCost(k, 100, 1e-4, 1e-4, error=0.5) for k in codecs))
                 for c in sm.cuts)
    return DeviceProfile(model=sm.name, fingerprint=fingerprint or sm.fingerprint, threads=1,
                         cuts=cuts, response_bytes=40)


def test_apply_to_rewrites_the_measured_entries(report, trained):
    sm = trained[0]
    middle = len(sm.cuts) // 2
    out = report.apply_to(_profile(sm))
    cost = {k.codec: k for k in out.cuts[middle].codecs}
    assert cost["int8"].error == report.row(middle, "int8").error_p95
    assert cost["int8"].agreement == report.row(middle, "int8").agreement
    # labelled data: the accuracy budget's figure, the reference's accuracy minus the split's
    assert report.reference_accuracy is not None
    assert cost["int8"].accuracy_drop == pytest.approx(
        report.reference_accuracy - report.row(middle, "int8").accuracy)
    assert cost["fp32"].error == 0.0 and cost["fp32"].agreement == 1.0
    assert cost["fp32"].accuracy_drop == 0.0 and cost["bf16"].accuracy_drop is None
    assert cost["bf16"].error == 0.5 and cost["bf16"].agreement is None  # not measured
    assert out.cuts[-1] == _profile(sm).cuts[-1]  # device-only: untouched
    assert out.error_source.startswith("splitinfer fidelity: 30 inputs from held-out digits")
    assert "the rest from the profiler's inputs" in out.error_source
    assert DeviceProfile.from_json(json.loads(json.dumps(out.to_json()))) == out


def test_apply_to_drops_agreement_when_it_means_nothing(report, trained):
    sm = trained[0]
    out = replace(report, agreement_meaningful=False).apply_to(_profile(sm, codecs=("int8",)))
    assert all(k.agreement is None for c in out.cuts[:-1] for k in c.codecs)
    assert "the rest" not in out.error_source


def test_apply_to_refuses_another_model_or_nothing_in_common(report, trained):
    sm = trained[0]
    with pytest.raises(SplitInferError, match="different models"):
        report.apply_to(_profile(sm, fingerprint="0" * 64))
    with pytest.raises(SplitInferError, match="none of the"):
        report.apply_to(_profile(sm, codecs=("bf16",)))


@pytest.mark.parametrize("kwargs, message", [
    ({"cut_ids": [99]}, "expected a cut id"),
    ({"cut_ids": []}, "no cuts"),
    ({"codecs": ()}, "no codecs"),
    ({"codecs": ("zip",)}, "unknown codec"),
])
def test_measure_rejects_bad_arguments(trained, kwargs, message):
    sm, frames, _, _ = trained
    with pytest.raises(SplitInferError, match=message):
        measure_fidelity(sm, _samples(frames[:2]), **kwargs)


def test_measure_rejects_bad_samples(trained):
    sm, frames, _, _ = trained
    with pytest.raises(SplitInferError, match="no samples"):
        measure_fidelity(sm, [])
    with pytest.raises(SplitInferError, match="sample 0: expected a Sample"):
        measure_fidelity(sm, [torch.from_numpy(frames[:1])])
    with pytest.raises(SplitInferError, match="label 12 is out of range"):
        measure_fidelity(sm, _samples(frames[:2], [1, 12]), codecs=("fp32",), cut_ids=[1])


# -- data loading --------------------------------------------------------------------------

def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_without_labels(trained, digits, tmp_path):
    sm = trained[0]
    frames = digits[0]
    for i in (2, 0, 1):
        _write_png(tmp_path / f"d{i}.png", frames[i][..., 0])
    (tmp_path / "notes.txt").write_text("not an image")
    samples = load_samples(str(tmp_path), sm)
    assert [s.label for s in samples] == [None] * 3
    for s, i in zip(samples, (0, 1, 2)):  # sorted by name
        assert s.inputs[0].dtype == torch.uint8 and tuple(s.inputs[0].shape) == (1, 32, 32, 1)
        assert np.array_equal(s.inputs[0].numpy()[0], frames[i])


def test_folder_of_classes_gives_labels_round_robin(trained, digits, tmp_path):
    sm = trained[0]
    frames = digits[0]
    for cls, n in (("zero", 3), ("one", 1), ("two", 2)):
        for i in range(n):
            _write_png(tmp_path / cls / f"{i}.png", frames[i][..., 0])
    labels = [s.label for s in load_samples(str(tmp_path), sm)]
    # sorted class names: one = 0 (1 image), two = 1 (2), zero = 2 (3); taken in turn
    assert labels == [0, 1, 2, 1, 2, 2]
    assert [s.label for s in load_samples(str(tmp_path), sm, limit=3)] == [0, 1, 2]


def test_folder_images_are_fitted_to_the_bundle(trained, tmp_path):
    sm = trained[0]
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, 8:56] = 200  # a bright centre 48 wide: what the centre crop keeps
    _write_png(tmp_path / "wide.png", rgb)
    (s,) = load_samples(str(tmp_path), sm)
    x = s.inputs[0].numpy()
    assert x.shape == (1, 32, 32, 1) and x.dtype == np.uint8
    assert abs(int(x[0, 16, 2, 0]) - int(round(0.299 * 200 + 0.587 * 200 + 0.114 * 200))) <= 2


def test_function_source_with_and_without_labels(trained, digits, monkeypatch):
    sm = trained[0]
    frames, labels = digits
    mod = types.ModuleType("fidelity_test_data")
    mod.pairs = lambda: ((frames[i], np.int64(labels[i])) for i in range(100))
    mod.bare = lambda: [torch.from_numpy(frames[i][None].copy()) for i in range(3)]
    monkeypatch.setitem(sys.modules, "fidelity_test_data", mod)
    pairs = load_samples("fidelity_test_data:pairs", sm, limit=5)
    assert [s.label for s in pairs] == labels[:5].tolist()
    assert np.array_equal(pairs[2].inputs[0].numpy()[0], frames[2])
    bare = load_samples("fidelity_test_data:bare", sm)
    assert len(bare) == 3 and bare[0].label is None


def test_sample_frames_fit_a_float_bundle():
    sm = splitinfer.partition(SkipNet().eval(), (torch.randn(1, 3, 32, 32),), name="skip")
    samples = load_samples("splitinfer.tools.frames:sample_frames", sm, limit=4)
    assert len(samples) == 4
    expected = np.asarray(Image.fromarray(sample_frames()[1]).resize(
        (32, 32), Image.Resampling.BILINEAR))
    assert torch.equal(samples[1].inputs[0], torch.from_numpy(normalized(expected[None])))


def _bad_module(monkeypatch, **functions):
    mod = types.ModuleType("fidelity_bad_data")
    for name, fn in functions.items():
        setattr(mod, name, fn)
    monkeypatch.setitem(sys.modules, "fidelity_bad_data", mod)


@pytest.mark.parametrize("name, fn, message", [
    ("float_frame", lambda: [np.zeros((5, 5), np.float32)], r"item 0: input 'frame' is \[5, 5\]:float32; the bundle takes \[-1, 32, 32, 1\]:uint8"),
    ("batch_of_two", lambda: [np.zeros((2, 32, 32, 1), np.uint8)], "batch of 1"),
    ("grey_for_rgb", lambda: [np.zeros((32, 32, 3), np.uint8)], "3 channel"),
    ("float_label", lambda: [(np.zeros((32, 32, 1), np.uint8), 3.5)], "label 3.5"),
    ("text_label", lambda: [(np.zeros((32, 32, 1), np.uint8), "cat")], "label 'cat'"),
    ("negative_label", lambda: [(np.zeros((32, 32, 1), np.uint8), -1)], "label -1"),
    ("mixed_labels", lambda: [(np.zeros((32, 32, 1), np.uint8), 1),
                              np.zeros((32, 32, 1), np.uint8)], "item 1: no label"),
    ("two_inputs", lambda: [(np.zeros((32, 32, 1), np.uint8),) * 3], "3 input"),
    ("a_string", lambda: ["frame.png"], "got str"),
    ("not_iterable", lambda: 42, "returned a int"),
    ("raises", lambda: 1 / 0, "calling it failed: ZeroDivisionError"),
    ("empty", lambda: [], "gave no inputs"),
])
def test_function_source_errors(trained, monkeypatch, name, fn, message):
    _bad_module(monkeypatch, **{name: fn})
    with pytest.raises(SplitInferError, match=message):
        load_samples(f"fidelity_bad_data:{name}", trained[0])


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:frames", "cannot import 'no_such_module_xyz'"),
    ("splitinfer.tools.frames:no_such", "has no attribute 'no_such'"),
    ("splitinfer.tools.frames:CROP", "'CROP' is not a function"),
    ("nothing-here", "not a folder, and not MODULE:FUNCTION"),
])
def test_bad_function_spec(trained, spec, message):
    with pytest.raises(SplitInferError, match=message):
        load_samples(spec, trained[0])


def test_folder_errors(trained, tmp_path):
    sm = trained[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SplitInferError, match="has no images"):
        load_samples(str(empty), sm)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(SplitInferError, match=r"cannot read image .*a\.png"):
        load_samples(str(broken), sm)
    mixed = tmp_path / "mixed"
    _write_png(mixed / "a.png", np.zeros((8, 8), np.uint8))
    (mixed / "cls").mkdir()
    with pytest.raises(SplitInferError, match="both images and subfolders"):
        load_samples(str(mixed), sm)
    classes = tmp_path / "classes"
    _write_png(classes / "a" / "0.png", np.zeros((8, 8), np.uint8))
    (classes / "b").mkdir()
    with pytest.raises(SplitInferError, match=r"class folder .*b has no images"):
        load_samples(str(classes), sm)
    with pytest.raises(SplitInferError, match="is a file"):
        load_samples(str(mixed / "a.png"), sm)
    with pytest.raises(SplitInferError, match="limit 0"):
        load_samples(str(mixed), sm, limit=0)


def test_folder_for_a_bundle_without_image_input(tmp_path):
    sm = splitinfer.partition(Chain().eval(), (torch.randn(1, 16),), name="chain")
    _write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(SplitInferError, match="does not take images"):
        load_samples(str(tmp_path), sm)


# -- the command line ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_files(trained, digits, tmp_path_factory):
    sm = trained[0]
    frames, labels = digits
    root = tmp_path_factory.mktemp("fidelity")
    save_bundle(sm, root / "bundle")
    for i in range(1500, 1520):
        _write_png(root / "data" / f"class{labels[i]}" / f"{i}.png", frames[i][..., 0])
    for i in range(10):  # a class folder per digit, so that indices are the digits
        (root / "data" / f"class{i}").mkdir(parents=True, exist_ok=True)
        _write_png(root / "data" / f"class{i}" / f"train{i}.png", frames[i][..., 0])
    return root


def test_cli_end_to_end(trained, cli_files, tmp_path, capsys):
    sm = trained[0]
    profile = tmp_path / "device.json"
    profile.write_text(json.dumps(_profile(sm).to_json()))
    out = tmp_path / "reports" / "fidelity.json"  # a folder that is not there yet
    rc = main(["fidelity", str(cli_files / "bundle"), "--data", str(cli_files / "data"),
               "--codecs", "fp32,int8,png,jpeg", "--cuts", "0,2", "--limit", "15",
               "--profile", str(profile), "-o", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "KB/request" in printed and "unsplit model: accuracy" in printed
    assert "top-1 agreement is meaningful" in printed
    report = FidelityReport.from_json(json.loads(out.read_text()))
    assert report.n == 15 and {r.cut_id for r in report.rows} == {0, 2}
    assert {r.codec for r in report.rows if r.cut_id == 2} == {"fp32", "int8"}
    assert report.reference_accuracy is not None and report.reference_accuracy > 0.6
    updated = DeviceProfile.from_json(json.loads(profile.read_text()))
    assert updated.error_source.startswith("splitinfer fidelity: 15 inputs from ")
    int8 = {k.codec: k for k in updated.cuts[2].codecs}["int8"]
    assert int8.error == report.row(2, "int8").error_p95
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_json(cli_files, tmp_path, capsys):
    rc = main(["fidelity", str(cli_files / "bundle"), "--data", str(cli_files / "data"),
               "--codecs", "int8", "--cuts", "1", "--limit", "4", "--json",
               "-o", str(tmp_path / "f.json")])
    assert rc == 0
    report = FidelityReport.from_json(json.loads(capsys.readouterr().out))
    assert report.n == 4 and [r.cut_id for r in report.rows] == [1]


@pytest.mark.parametrize("extra, message", [
    (["--cuts", "999"], "cut id 999 out of range"),
    (["--codecs", "zip"], "unknown codec 'zip'"),
    (["--limit", "0"], "--limit 0"),
])
def test_cli_errors(cli_files, tmp_path, capsys, extra, message):
    rc = main(["fidelity", str(cli_files / "bundle"), "--data", str(cli_files / "data"),
               "-o", str(tmp_path / "f.json"), "--quiet", *extra])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "f.json").exists()


def test_cli_keeps_a_profile_of_another_model(trained, cli_files, tmp_path, capsys):
    profile = tmp_path / "device.json"
    text = json.dumps(_profile(trained[0], fingerprint="f" * 64).to_json())
    profile.write_text(text)
    rc = main(["fidelity", str(cli_files / "bundle"), "--data", str(cli_files / "data"),
               "--codecs", "int8", "--cuts", "1", "--limit", "2", "--profile", str(profile),
               "-o", str(tmp_path / "f.json"), "--quiet"])
    assert rc == 2 and "different models" in capsys.readouterr().err
    assert profile.read_text() == text
