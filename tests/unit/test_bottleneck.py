"""Trained bottlenecks (splitinfer.model.bottleneck) and `splitinfer bottleneck train`.

The model is a small CNN trained here on scikit-learn's digits as uint8 frames (real data, real
accuracy); the bottleneck is distilled on one part of the digits, judged on another.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import splitinfer
from splitinfer.codec import get_codec
from splitinfer.core.errors import PartitionError
from splitinfer.model.bottleneck import train_bottleneck
from splitinfer.model.bundle import load_bundle, save_bundle
from tests.models import SkipNet, digit_frames, train_digits_net

pytest.importorskip("sklearn.datasets")

CUT = "max_pool2d"  # after conv1: 8 channels of 16x16


@pytest.fixture(scope="module")
def digits():
    """(SplitModel of a DigitsNet trained on the first 1000 digits, frames, labels)."""
    frames, labels = digit_frames()
    model = train_digits_net(frames[:1000], labels[:1000], epochs=4)
    sm = splitinfer.partition(model, (torch.from_numpy(frames[:1]),), name="digits")
    return sm, frames, labels


def _inputs(frames: np.ndarray) -> list[tuple[torch.Tensor]]:
    return [(torch.from_numpy(frames[i:i + 1].copy()),) for i in range(len(frames))]


def _accuracy(out: torch.Tensor, labels: np.ndarray) -> float:
    return float((out.argmax(1).numpy() == labels).mean())


def test_a_bottleneck_narrows_the_cut_and_keeps_the_answers(digits):
    """Distilled on unlabelled digits 1000-1400 (none used to train the model), judged on
    1400-1797: the new cut carries 2 of 8 channels, the new model keeps the accuracy within a
    point, the original is untouched, and ecq-18db there sends under half a JPEG q90 frame."""
    sm, frames, labels = digits
    test_x, test_y = torch.from_numpy(frames[1400:]), labels[1400:]
    before = sm(test_x)
    cut = sm.cut(CUT)
    new, report = train_bottleneck(sm, CUT, _inputs(frames[1000:1400]), 2, epochs=25,
                                   snr_db=18, train_tail=True)
    assert torch.equal(sm(test_x), before)  # sm (and its cached tail) unchanged
    assert report.channels_in == 8 and report.channels == 2 and report.held_out == 80
    assert report.error < report.pca_error and report.best_epoch > 0  # training helped
    ncut = new.cut(report.new_cut_id)
    assert ncut.name == "encoder" and ncut.tensors[0].shape == (-1, 2, 16, 16)
    assert new.fingerprint != sm.fingerprint
    assert new.input_specs == sm.input_specs and new.output_specs == sm.output_specs
    after = new(test_x)
    assert abs(_accuracy(after, test_y) - _accuracy(before, test_y)) <= 0.01
    # the split as deployed: head, ecq-18db, tail
    codec = get_codec("ecq-18db")
    sent = [codec.encode(new.head(ncut.id)(x)[0]) for x in test_x.split(1)]
    out = torch.cat([new.tail(ncut.id)(torch.from_numpy(codec.decode(e))) for e in sent])
    assert abs(_accuracy(out, test_y) - _accuracy(before, test_y)) <= 0.01
    jpeg = np.median([get_codec("jpeg").encode(x).nbytes for x in test_x.split(1)])
    assert np.median([e.nbytes for e in sent]) < 0.5 * jpeg
    before_bytes = np.median([get_codec("ecq-18db").encode(sm.head(cut.id)(x)[0]).nbytes
                              for x in test_x.split(1)])
    assert np.median([e.nbytes for e in sent]) < 0.5 * before_bytes


def test_bottlenecked_model_saves_and_loads_as_a_bundle(digits, tmp_path):
    sm, frames, _ = digits
    new, report = train_bottleneck(sm, CUT, _inputs(frames[1000:1100]), 3, epochs=1)
    manifest = save_bundle(new, tmp_path / "b", name="digits", version="1-b3")
    back = load_bundle(tmp_path / "b")
    assert manifest.fingerprint == back.fingerprint == new.fingerprint
    x = torch.from_numpy(frames[1700:1710])
    assert torch.equal(back(x), new(x))
    assert back.cut(report.new_cut_id).tensors[0].shape == (-1, 3, 16, 16)


def test_training_that_only_hurts_keeps_the_pca_start(digits):
    """A learning rate far too high wrecks every epoch: the PCA pair is what comes back."""
    sm, frames, _ = digits
    held = torch.from_numpy(frames[1100:1120])
    _, report = train_bottleneck(sm, CUT, _inputs(frames[1000:1100]), 2, epochs=2, lr=50.0)
    assert report.best_epoch == 0 and report.error == report.pca_error
    new, _ = train_bottleneck(sm, CUT, _inputs(frames[1000:1100]), 2, epochs=0)
    ref = sm(held)
    err = ((new(held) - ref).norm(dim=1) / ref.norm(dim=1)).median()
    assert float(err) < 0.5  # the PCA start alone already keeps most of the answer


def test_linear_bottleneck_on_a_feature_vector():
    """(N, F) tensors get a linear pair; a SkipNet-free MLP cut works the same way."""
    from tests.models import Chain

    torch.manual_seed(0)
    sm = splitinfer.partition(Chain(), (torch.randn(1, 16),))  # random data: mechanics only
    cut = next(c for c in sm.cuts if c.tensors[0].shape == (-1, 32))
    new, report = train_bottleneck(sm, cut.id, [(torch.randn(1, 16),) for _ in range(20)], 4,
                                   epochs=2)
    assert new.cut(report.new_cut_id).tensors[0].shape == (-1, 4)


@pytest.mark.parametrize("cut, channels, kw, match", [
    (0, 2, {}, "the model's input"),
    (-1, 2, {}, "the model's output"),
    (CUT, 8, {}, "channels 8 is not fewer than the 8"),
    (CUT, 0, {}, "channels is 0"),
    (CUT, 2, {"epochs": -1}, "epochs is -1"),
    (CUT, 2, {"held_out": 1.0}, "held_out is 1.0"),
    (CUT, 2, {"snr_db": 0}, "snr_db is 0"),
    (CUT, 2, {"lr": -1.0}, "lr is -1.0"),
    ("no-such-cut", 2, {}, "no cut named 'no-such-cut'"),
])
def test_bad_arguments_are_named(digits, cut, channels, kw, match):
    sm, frames, _ = digits
    cut = len(sm.cuts) - 1 if cut == -1 else cut
    with pytest.raises(PartitionError, match=match):
        train_bottleneck(sm, cut, _inputs(frames[:20]), channels, **kw)


def test_too_few_inputs_and_a_cut_of_several_tensors_are_refused(digits):
    sm, frames, _ = digits
    with pytest.raises(PartitionError, match="2 inputs: too few"):
        train_bottleneck(sm, CUT, _inputs(frames[:2]), 2)
    skip = splitinfer.partition(SkipNet(), (torch.randn(1, 3, 8, 8),))
    multi = next(c for c in skip.cuts if len(c.tensors) > 1)
    with pytest.raises(PartitionError, match="crosses 2 tensor\\(s\\).*pick another cut"):
        train_bottleneck(skip, multi.id, [(torch.randn(1, 3, 8, 8),)] * 10, 2)


# -- the CLI -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(digits, tmp_path_factory):
    sm, frames, _ = digits
    root = tmp_path_factory.mktemp("bn")
    save_bundle(sm, root / "digits")
    module = root / "bn_data.py"
    np.save(root / "frames.npy", frames[1000:1200])
    module.write_text("import numpy as np, pathlib\n"
                      "def frames():\n"
                      f"    return list(np.load(pathlib.Path({str(root)!r}) / 'frames.npy'))\n")
    return root


def _cli(root, *extra):
    from splitinfer.tools.cli import main

    return main(["bottleneck", "train", str(root / "digits"), "--data", "bn_data:frames",
                 *extra])


def test_cli_writes_a_new_bundle_version(bundle, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(bundle))
    out = bundle / "digits-b2"
    assert _cli(bundle, "--cut", CUT, "--channels", "2", "--epochs", "3", "-o", str(out),
                "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == "1-b2" and result["name"] == "digits"
    sm = load_bundle(out)
    assert sm.fingerprint == result["fingerprint"]
    cut = sm.cut(result["report"]["new_cut_id"])
    assert cut.tensors[0].shape == (-1, 2, 16, 16)
    sizes = result["bytes_per_request"]["ecq"]
    assert 0 < sizes["after"] < sizes["before"]  # mean bytes per request, as numbers
    # an existing bundle is not overwritten without --force
    assert _cli(bundle, "--cut", CUT, "--channels", "2", "--epochs", "1", "-o", str(out)) != 0
    assert "exists and is not empty" in capsys.readouterr().err
    assert load_bundle(out).fingerprint == result["fingerprint"]


@pytest.mark.parametrize("args, match", [
    (("--cut", CUT, "--channels", "0"), "--channels"),
    (("--cut", CUT, "--channels", "2", "--epochs", "x"), "--epochs"),
    (("--cut", "nowhere", "--channels", "2"), "no cut named 'nowhere'"),
    (("--cut", "0", "--channels", "2"), "the model's input"),
])
def test_cli_bad_flags_are_named(bundle, monkeypatch, capsys, tmp_path, args, match):
    monkeypatch.syspath_prepend(str(bundle))
    try:
        code = _cli(bundle, *args, "--epochs", "1", "-o", str(tmp_path / "o")) \
            if "--epochs" not in args else _cli(bundle, *args, "-o", str(tmp_path / "o"))
    except SystemExit as exc:
        code = exc.code
    assert code != 0
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
