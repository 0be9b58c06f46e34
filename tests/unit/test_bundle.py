"""Bundles: write, reload without the model class, and refuse anything damaged or mismatched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import splitinfer
from splitinfer import BundleError
from splitinfer.model.bundle import load_bundle, read_manifest, save_bundle
from tests.models import Chain, SkipNet, TwoInTwoOut


@pytest.fixture(scope="module")
def skipnet_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = SkipNet().eval()
    sm = splitinfer.partition(model, (torch.randn(1, 3, 16, 16),), name="skipnet")
    path = tmp_path_factory.mktemp("b") / "skipnet"
    save_bundle(sm, path, version="3")
    return model, sm, path


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _rehash(path: Path, fname: str) -> None:
    """Make the manifest's checksum agree with a replaced file (a consistent-looking forgery)."""
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / fname).read_bytes()
    manifest["files"][fname] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip_rebuilds_the_same_split_model(skipnet_bundle):
    model, sm, path = skipnet_bundle
    assert sorted(p.name for p in path.iterdir()) == ["examples.pt", "manifest.json",
                                                       "program.pt2"]
    loaded = load_bundle(path)
    assert loaded.fingerprint == sm.fingerprint
    assert loaded.cuts == sm.cuts
    assert (loaded.name, loaded.version) == ("skipnet", "3")
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    for cut in loaded.cuts:
        assert torch.equal(loaded.tail(cut.id)(*loaded.head(cut.id)(x)), ref), cut.name


def test_bundles_load_from_several_threads_at_once(skipnet_bundle):
    # torch.export.load keeps process-wide state while it runs: unguarded, two threads loading
    # at once failed with "_CURRENT_DESERIALIZER is already set" (clients made in parallel)
    from concurrent.futures import ThreadPoolExecutor

    _, sm, path = skipnet_bundle
    with ThreadPoolExecutor(6) as pool:
        loaded = list(pool.map(lambda _: load_bundle(path), range(12)))
    assert all(b.fingerprint == sm.fingerprint for b in loaded)


def test_round_trip_with_several_inputs_and_outputs(tmp_path):
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    x, mask = torch.randn(1, 7, 4), torch.ones(1, 7, dtype=torch.int64)
    sm = splitinfer.partition(model, (x, mask))
    save_bundle(sm, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    assert loaded.input_specs == sm.input_specs and loaded.output_specs == sm.output_specs
    x, mask = torch.randn(2, 7, 4), torch.ones(2, 7, dtype=torch.int64)
    with torch.no_grad():
        ref = model(x, mask)
    for cut in loaded.cuts:
        hidden, logits = loaded.tail(cut.id)(*loaded.head(cut.id)(x, mask))
        assert torch.equal(hidden, ref["hidden"]) and torch.equal(logits, ref["logits"])


def test_manifest_reads_without_torch(skipnet_bundle):
    _, sm, path = skipnet_bundle
    code = ("import sys; sys.modules['torch'] = None\n"
            "from splitinfer.model.bundle import read_manifest\n"
            f"m = read_manifest({str(path)!r})\n"
            "print(m.name, len(m.cuts), m.fingerprint)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["skipnet", str(len(sm.cuts)), sm.fingerprint]


def test_missing_manifest(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)


def test_corrupt_program_byte_is_refused(skipnet_bundle, tmp_path):
    path = _copy(skipnet_bundle[2], tmp_path / "b")
    data = bytearray((path / "program.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "program.pt2").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 .* does not match"):
        load_bundle(path)


def test_truncated_program_is_refused(skipnet_bundle, tmp_path):
    path = _copy(skipnet_bundle[2], tmp_path / "b")
    data = (path / "program.pt2").read_bytes()
    (path / "program.pt2").write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(path)


def test_garbage_program_with_matching_checksum_is_refused(skipnet_bundle, tmp_path):
    path = _copy(skipnet_bundle[2], tmp_path / "b")
    (path / "program.pt2").write_bytes(b"PK\x03\x04 not really a zip" * 10)
    _rehash(path, "program.pt2")
    with pytest.raises(BundleError, match="program.pt2: cannot be loaded"):
        load_bundle(path)


def test_program_from_another_model_is_refused(skipnet_bundle, tmp_path):
    path = _copy(skipnet_bundle[2], tmp_path / "b")
    torch.manual_seed(1)  # same architecture, other weights
    other = splitinfer.partition(SkipNet().eval(), (torch.randn(1, 3, 16, 16),))
    save_bundle(other, tmp_path / "other")
    (path / "program.pt2").write_bytes((tmp_path / "other" / "program.pt2").read_bytes())
    _rehash(path, "program.pt2")
    with pytest.raises(BundleError, match="fingerprint .* does not match the program"):
        load_bundle(path)


def test_program_of_another_architecture_is_refused(skipnet_bundle, tmp_path):
    path = _copy(skipnet_bundle[2], tmp_path / "b")
    other = splitinfer.partition(Chain().eval(), (torch.randn(1, 16),))
    save_bundle(other, tmp_path / "other")
    for f in ("program.pt2", "examples.pt"):
        (path / f).write_bytes((tmp_path / "other" / f).read_bytes())
        _rehash(path, f)
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(path)


def test_edited_fingerprint_is_refused(skipnet_bundle, tmp_path):
    path = _copy(skipnet_bundle[2], tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="fingerprint"):
        load_bundle(path)


@pytest.mark.parametrize("edit, match", [
    (lambda m: "{not json", "not valid JSON"),
    (lambda m: {**m, "format": "other"}, "not a splitinfer manifest"),
    (lambda m: {**m, "format_version": 99}, "format_version 99"),
    (lambda m: {k: v for k, v in m.items() if k != "cuts"}, "missing or malformed"),
    (lambda m: {**m, "name": "../evil"}, "bad model name"),
    (lambda m: {**m, "cuts": m["cuts"][::-1]}, "cut ids must be 0..N-1"),
    (lambda m: {**m, "files": {**m["files"], "../x": {"sha256": "0", "bytes": 1}}},
     "bad file name"),
    (lambda m: {**m, "cuts": [{**c, "tensors": [{"name": "t", "shape": [1], "dtype": "complex"}]}
                              for c in m["cuts"]]}, "unknown dtype"),
])
def test_malformed_manifest_is_refused(skipnet_bundle, tmp_path, edit, match):
    path = _copy(skipnet_bundle[2], tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    edited = edit(manifest)
    (path / "manifest.json").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(BundleError, match=match):
        load_bundle(path)


def test_renamed_cut_in_manifest_is_refused(skipnet_bundle, tmp_path):
    path = _copy(skipnet_bundle[2], tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["cuts"][2]["tensors"][0]["name"] = "something_else"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cut 2"):
        load_bundle(path)


def test_save_refuses_non_empty_directory_and_keeps_it(skipnet_bundle, tmp_path):
    _, sm, _ = skipnet_bundle
    target = tmp_path / "b"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not empty"):
        save_bundle(sm, target)
    assert (target / "precious.txt").read_text() == "keep me"
    save_bundle(sm, target, overwrite=True)
    assert read_manifest(target).fingerprint == sm.fingerprint
    assert not (target / "precious.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temp dirs left behind


def test_fx_captured_model_cannot_be_bundled(tmp_path):
    from tests.unit.test_partition import _Opaque

    sm = splitinfer.partition(_Opaque().eval(), (torch.randn(1, 4),))
    assert sm.capture == "fx"
    with pytest.raises(BundleError, match="bundles need a torch.export capture"):
        save_bundle(sm, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_bad_version_string_is_refused(skipnet_bundle, tmp_path):
    with pytest.raises(BundleError, match="bad model version"):
        save_bundle(skipnet_bundle[1], tmp_path / "b", version="1/../../x")
