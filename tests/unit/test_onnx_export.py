"""ONNX heads and tails: exported files match torch, the index merges, damage is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from device_client.onnx_head import OnnxSegments  # noqa: E402
from splitinfer.core.errors import BundleError, InvalidRequest, NotFound, PartitionError  # noqa: E402
from splitinfer.model import onnx_export
from splitinfer.model.bundle import save_bundle  # noqa: E402
from splitinfer.model.onnx_export import export_onnx  # noqa: E402
from splitinfer.model.split_model import partition  # noqa: E402
from splitinfer.tools.cli import main  # noqa: E402
from tests.models import SkipNet, TwoInTwoOut, build_chain  # noqa: E402


def _examples(name: str) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    if name == "tio":
        return torch.randn(1, 5, 4, generator=gen), torch.randint(0, 2, (1, 5), generator=gen)
    if name == "skipnet":
        return (torch.randn(1, 3, 8, 8, generator=gen),)
    return (torch.randn(1, 16, generator=gen),)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return {"chain": build_chain, "skipnet": SkipNet, "tio": TwoInTwoOut}[name]().eval()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """One bundle per test model, with the SplitModel it was saved from."""
    out = {}
    for name in ("chain", "skipnet", "tio"):
        sm = partition(_model(name), _examples(name), name=name)
        directory = tmp_path_factory.mktemp(name) / "bundle"
        save_bundle(sm, directory)
        out[name] = (directory, sm)
    return out


@pytest.fixture(scope="module")
def chain_onnx(bundles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chain bundle with ONNX heads and tails for cuts 1 and 2 (copy it before damaging)."""
    directory = tmp_path_factory.mktemp("chain_onnx") / "bundle"
    shutil.copytree(bundles["chain"][0], directory, ignore=shutil.ignore_patterns("onnx"))
    export_onnx(directory, [1, 2])
    return directory


def _inputs(name: str, batch: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(batch)
    if name == "tio":
        return torch.randn(batch, 5, 4, generator=gen), torch.randint(0, 2, (batch, 5),
                                                                      generator=gen)
    shape = (batch, 3, 8, 8) if name == "skipnet" else (batch, 16)
    return (torch.randn(*shape, generator=gen),)


def _assert_matches_torch(directory: Path, sm, cut_ids, model_name: str, batch: int) -> None:
    seg = OnnxSegments(directory)
    x = _inputs(model_name, batch)
    with torch.no_grad():
        whole = sm(*x)
    whole = whole if isinstance(whole, tuple) else (whole,)
    for cut_id in cut_ids:
        with torch.no_grad():
            want = sm.head(cut_id)(*x)
        got = seg.run_head(cut_id, [t.numpy() for t in x])
        assert len(got) == len(sm.cut(cut_id).tensors)
        for g, w in zip(got, want):
            assert g.dtype == w.numpy().dtype and g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)
        out = seg.run_tail(cut_id, got)
        assert len(out) == len(sm.output_specs)
        for g, w in zip(out, whole):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"cut {cut_id}")


@pytest.mark.parametrize("name", ["chain", "skipnet", "tio"])
def test_heads_and_tails_match_torch_at_other_batch_sizes(bundles, name):
    directory, sm = bundles[name]
    last = len(sm.cuts) - 1
    cut_ids = sorted({0, 1, last // 2, last})  # the identity head and the identity tail too
    export_onnx(directory, cut_ids)
    for batch in (1, 4):  # the export ran at batch 2
        _assert_matches_torch(directory, sm, cut_ids, name, batch)
    index = json.loads((directory / "onnx" / "index.json").read_text())
    assert index["cuts"]["0"]["head"] == {"identity": True}
    assert {e["head"].get("exporter") for k, e in index["cuts"].items() if k != "0"} == \
        {"dynamo"}


def test_onnx_names_and_dynamic_batch(bundles):
    import onnx

    directory, sm = bundles["tio"]
    cut = sm.cuts[5]
    export_onnx(directory, [cut.id])
    model = onnx.load(str(directory / "onnx" / f"cut-{cut.id}-head.onnx"))
    assert [i.name for i in model.graph.input] == ["x", "mask"]
    assert [o.name for o in model.graph.output] == [t.name for t in cut.tensors]
    for value in (*model.graph.input, *model.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        assert dim0.dim_param and not dim0.HasField("dim_value"), value.name
    tail = onnx.load(str(directory / "onnx" / f"cut-{cut.id}-tail.onnx"))
    assert [o.name for o in tail.graph.output] == ["hidden", "logits"]


@pytest.mark.slow
def test_resnet18_cuts_match_torch(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    sm = partition(torchvision.models.resnet18(weights=None).eval(),
                   (torch.randn(1, 3, 64, 64),), name="resnet18")
    save_bundle(sm, tmp_path / "r18")
    cut_ids = [sm.cut("layer2.1.conv1").id, sm.cut("layer3.1.relu").id]
    export_onnx(tmp_path / "r18", cut_ids)
    seg = OnnxSegments(tmp_path / "r18", threads=1)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        whole = sm(x).numpy()
    for cut_id in cut_ids:
        crossing = seg.run_head(cut_id, [x.numpy()])
        assert len(crossing) == len(sm.cut(cut_id).tensors)
        with torch.no_grad():
            want = sm.head(cut_id)(x)
        for g, w in zip(crossing, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4)
        (out,) = seg.run_tail(cut_id, crossing)
        np.testing.assert_allclose(out, whole, rtol=1e-4, atol=1e-4)


def test_exporting_more_cuts_merges_the_index(bundles, tmp_path):
    directory = tmp_path / "b"
    shutil.copytree(bundles["chain"][0], directory)
    shutil.rmtree(directory / "onnx", ignore_errors=True)
    export_onnx(directory, [1], tail=False)
    first = json.loads((directory / "onnx" / "index.json").read_text())
    assert first["cuts"]["1"]["tail"] is None
    assert (first["model"], first["format"], first["format_version"]) == \
        ("chain", "splitinfer-onnx", 1)
    export_onnx(directory, ["act"])  # by name
    index = json.loads((directory / "onnx" / "index.json").read_text())
    act = bundles["chain"][1].cut("act").id
    assert set(index["cuts"]) == {"1", str(act)}
    assert index["cuts"]["1"] == first["cuts"]["1"]
    assert index["cuts"][str(act)]["tail"]["file"] == f"cut-{act}-tail.onnx"
    seg = OnnxSegments(directory)
    assert seg.cut_ids == (1, act) and not seg.has_tail(1) and seg.has_tail(act)
    with pytest.raises(NotFound, match="no ONNX tail for cut 1"):
        seg.run_tail(1, seg.run_head(1, [np.zeros((2, 16), np.float32)]))
    assert not list((directory / "onnx").glob(".*")), "no temporary files left behind"


def test_a_device_directory_needs_only_the_manifest_and_onnx(chain_onnx, tmp_path):
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(chain_onnx / "manifest.json", device)
    shutil.copytree(chain_onnx / "onnx", device / "onnx")
    seg = OnnxSegments(device, threads=1)
    (y,) = seg.run_head(1, [np.ones((3, 16), np.float32)])
    assert y.shape == (3, 32)


def _damaged(chain_onnx: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(chain_onnx, copy)
    return copy


def test_a_flipped_byte_is_refused_naming_the_file(chain_onnx, tmp_path):
    copy = _damaged(chain_onnx, tmp_path)
    path = copy / "onnx" / "cut-2-tail.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="cut-2-tail.onnx: sha256 .* corrupt or altered"):
        OnnxSegments(copy)


def test_a_truncated_or_missing_file_is_refused(chain_onnx, tmp_path):
    copy = _damaged(chain_onnx, tmp_path)
    path = copy / "onnx" / "cut-1-head.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BundleError, match="cut-1-head.onnx: .* bytes, the index says"):
        OnnxSegments(copy)
    path.unlink()
    with pytest.raises(BundleError, match="cut-1-head.onnx is missing"):
        OnnxSegments(copy)


def test_onnx_files_of_another_model_are_refused(chain_onnx, tmp_path):
    copy = _damaged(chain_onnx, tmp_path)
    index_path = copy / "onnx" / "index.json"
    index = json.loads(index_path.read_text())
    index["fingerprint"] = "0" * 64
    index_path.write_text(json.dumps(index))
    with pytest.raises(BundleError, match="fingerprint 0000.* belong to another model"):
        OnnxSegments(copy)
    shutil.rmtree(copy / "onnx")
    with pytest.raises(BundleError, match="no onnx/index.json.*--from-bundle"):
        OnnxSegments(copy)


def test_inputs_are_checked(chain_onnx):
    seg = OnnxSegments(chain_onnx)
    x = np.zeros((2, 16), np.float32)
    with pytest.raises(InvalidRequest, match="takes 1 input"):
        seg.run_head(1, [x, x])
    with pytest.raises(InvalidRequest, match="'x' has .*dtype float64; .* expects .*dtype float32.*astype"):
        seg.run_head(1, [x.astype(np.float64)])
    with pytest.raises(InvalidRequest, match=r"shape \[16\] \(rank 1, expected rank 2\)"):
        seg.run_head(1, [x[0]])
    with pytest.raises(InvalidRequest, match=r"shape \[2, 15\]"):
        seg.run_head(1, [x[:, :15]])
    with pytest.raises(NotFound, match="no ONNX head for cut 3"):
        seg.run_head(3, [x])


def test_an_export_failure_names_the_cut(bundles, tmp_path, monkeypatch):
    directory = tmp_path / "b"
    shutil.copytree(bundles["chain"][0], directory, ignore=shutil.ignore_patterns("onnx"))

    def refuse(*args, **kwargs):
        raise RuntimeError("no ONNX translation for aten::frobnicate.default")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(PartitionError, match=r"cut 1 \(.*\) head cannot be exported.*"
                                             r"aten::frobnicate.*try another cut"):
        export_onnx(directory, [1])
    assert not (directory / "onnx" / "cut-1-head.onnx").exists()


def test_torchscript_exporter_is_the_fallback(bundles, tmp_path, monkeypatch):
    directory = tmp_path / "b"
    shutil.copytree(bundles["chain"][0], directory, ignore=shutil.ignore_patterns("onnx"))
    real = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("dynamo exporter unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    export_onnx(directory, [1, 3])
    index = json.loads((directory / "onnx" / "index.json").read_text())
    assert {e[p]["exporter"] for e in index["cuts"].values() for p in ("head", "tail")} == \
        {"torchscript"}
    _assert_matches_torch(directory, bundles["chain"][1], [1, 3], "chain", 5)


def test_a_mismatch_is_refused():
    spec = onnx_export.TensorSpec("y", (-1, 4), "float32")
    want = np.ones((2, 4), np.float32)
    onnx_export._compare(spec, want + 5e-5, want, "cut 3 head")  # within tolerance
    with pytest.raises(PartitionError, match="cut 3 head: ONNX differs from torch by 0.01"):
        onnx_export._compare(spec, want + 0.01, want, "cut 3 head")


# ---- the command line -------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["tests.models:Chain", "--from-bundle", "B", "--onnx", "--cut", "1"], "not both"),
    (["--onnx", "--cut", "1"], "nothing to export"),
    (["--from-bundle", "B", "--cut", "1"], "add --onnx"),
    (["--from-bundle", "B", "--onnx"], "--onnx needs at least one --cut"),
    (["--from-bundle", "B", "--onnx", "--cut", "99"], "unknown --cut '99'"),
    (["--from-bundle", "B", "--onnx", "--cut", "nope"], "unknown --cut 'nope'"),
    (["--from-bundle", "B", "--onnx", "--cut", "1", "-o", "x"], "drop -o"),
    (["tests.models:Chain", "-o", "x"], "needs --example-shape and -o"),
])
def test_cli_errors(chain_onnx, capsys, args, message):
    args = [str(chain_onnx) if a == "B" else a for a in args]
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_adds_onnx_to_a_bundle_and_exports_with_onnx(bundles, tmp_path, capsys):
    directory = tmp_path / "b"
    shutil.copytree(bundles["chain"][0], directory)
    shutil.rmtree(directory / "onnx", ignore_errors=True)
    assert main(["export", "--from-bundle", str(directory), "--onnx", "--cut", "act",
                 "--no-onnx-tail"]) == 0
    assert "wrote ONNX heads for cut(s)" in capsys.readouterr().out
    seg = OnnxSegments(directory)
    assert seg.cut_ids == (bundles["chain"][1].cut("act").id,) and not seg.has_tail(3)

    out = tmp_path / "new"
    assert main(["export", "tests.models:build_chain", "--example-shape", "1,16", "-o", str(out),
                 "--onnx", "--cut", "1", "--cut", "2"]) == 0
    assert OnnxSegments(out).cut_ids == (1, 2)


def test_cli_help_documents_onnx(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert "--from-bundle" in text and "--onnx" in text and "--cut" in text
