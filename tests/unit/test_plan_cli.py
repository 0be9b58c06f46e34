"""`splitinfer plan` in what-if mode: table, plan.json, plots, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

import splitinfer
from splitinfer.codec import encoded_nbytes, get_codec
from splitinfer.core.profiles import CodecCost, CutCost, DeviceProfile
from splitinfer.model.bundle import save_bundle
from splitinfer.model.preprocess import IMAGENET
from splitinfer.tools import frames
from splitinfer.tools.cli import main
from tests.models import SkipNet


@pytest.fixture(scope="module")
def setup(skipnet_plan_files):
    return skipnet_plan_files


def _plan(root, *extra):
    return main(["plan", str(root / "bundle"), "--device-profile", str(root / "device.json"),
                 "--edge-profile", str(root / "edge.json"), "--quiet", *extra])


def test_what_if_plan_writes_json_and_plots(setup, tmp_path, capsys):
    root, sm = setup
    assert _plan(root, "--bandwidth", "1gbit", "--rtt", "1ms", "--sweep", "-o",
                 str(tmp_path)) == 0
    printed = capsys.readouterr().out
    assert "chosen: cut" in printed and "rank" in printed
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["link"] == {"rtt_s": 0.001, "bandwidth_bps": 1e9}
    assert 0 <= plan["cut_id"] < len(sm.cuts)
    # the candidates say what they send; the baselines are a table of their own
    assert "KB" in printed.split("\n", 2)[1]
    assert [b["codec"] for b in plan["baselines"]].count(None) == 1  # device-only, once
    assert {b["codec"] for b in plan["baselines"]} == {None, "fp32", "int8+zstd"}
    baselines = printed[printed.index("baselines"):]
    for name in ("device-only", "edge-only fp32", "edge-only int8+zstd"):
        assert name in baselines
    best = plan["baselines"][0]
    label = "device-only" if best["codec"] is None else f"edge-only {best['codec']}"
    assert f"x over {label} (the best baseline)" in printed
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_constraints_reach_the_planner(setup, tmp_path):
    root, sm = setup
    assert _plan(root, "--bandwidth", "1gbit", "--rtt", "1ms", "--min-device-cut", "3",
                 "--no-device-only", "-o", str(tmp_path)) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert 3 <= plan["cut_id"] < len(sm.cuts) - 1


@pytest.mark.parametrize("extra, message", [
    ([], "give the link: --edge HOST:PORT"),
    (["--bandwidth", "1mbit", "--rtt", "1ms", "--min-device-cut", "99", "--no-device-only"],
     "min_device_cut"),
])
def test_errors_name_the_problem(setup, tmp_path, capsys, extra, message):
    root, _ = setup
    assert _plan(root, *extra, "-o", str(tmp_path)) == 2
    assert message in capsys.readouterr().err


def test_bad_rate_is_an_argument_error(setup, capsys):
    root, _ = setup
    with pytest.raises(SystemExit) as exit_info:
        _plan(root, "--bandwidth", "fast", "--rtt", "1ms")
    assert exit_info.value.code == 2
    assert "fast" in capsys.readouterr().err


# --- what-if profiles with the frame as a JPEG -----------------------------------------------

def _with_jpeg(root, tmp_path, agreement=None, slower=100.0, accuracy_drop=None):
    """The SkipNet device profile ``slower`` times slower, plus a 2 kB "jpeg" of its input at
    cut 0."""
    dev = DeviceProfile.from_json(json.loads((root / "device.json").read_text()))
    dev = dev.scaled(slower)
    first = dev.cuts[0]
    jpeg = CodecCost("jpeg", 2_000, 0.0001, 0.0001, 0.01, agreement, accuracy_drop)
    cuts = (CutCost(first.cut_id, first.name, first.head_s, first.head_flops,
                    first.head_memory_bytes, first.head_nodes, first.codecs + (jpeg,)),
            *dev.cuts[1:])
    path = tmp_path / "device_jpeg.json"
    path.write_text(json.dumps(DeviceProfile(dev.model, dev.fingerprint, dev.threads, cuts,
                                             dev.response_bytes,
                                             dev.response_decode_s).to_json()))
    return path


def _plan_with(root, device_json, *extra):
    return main(["plan", str(root / "bundle"), "--device-profile", str(device_json),
                 "--edge-profile", str(root / "edge.json"), "--quiet", *extra])


def test_edge_only_jpeg_is_planned_and_is_the_baseline_to_beat(setup, tmp_path, capsys):
    root, _ = setup
    device_json = _with_jpeg(root, tmp_path)
    assert _plan_with(root, device_json, "--bandwidth", "100mbit", "--rtt", "1ms", "-o",
                      str(tmp_path)) == 0
    printed = capsys.readouterr().out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert (plan["cut_id"], plan["codec"]) == (0, "jpeg")
    assert plan["baselines"][0]["codec"] == "jpeg" and plan["baselines"][0]["request_bytes"] \
        == 2000
    assert "1.00x over edge-only jpeg (the best baseline)" in printed
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"
    # each row says what the codec does to the answer: the jpeg's measured 0.01
    baselines = printed[printed.index("baselines"):].splitlines()
    assert "error" in baselines[1] or "error" in baselines[0]
    jpeg_row = next(line for line in baselines if line.strip().startswith("edge-only jpeg"))
    assert jpeg_row.split()[-1] == "0.01"
    # a device as fast as this machine on a slow link: a late cut sends a few bytes where
    # the JPEG sends 2 kB (800 ms at 20 kbit/s); the split wins, and says by how much
    device_json = _with_jpeg(root, tmp_path, slower=1.0)
    assert _plan_with(root, device_json, "--bandwidth", "20kbit", "--rtt", "1ms", "-o",
                      str(tmp_path), "--no-device-only", "--no-plot") == 0
    printed = capsys.readouterr().out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["cut_id"] > 0
    jpeg_ms = next(b for b in plan["baselines"] if b["codec"] == "jpeg")["breakdown"]
    speedup = sum(jpeg_ms.values()) / plan["predicted_s"]
    assert speedup > 1 and f"{speedup:.2f}x" in printed[printed.index("baselines"):]


def _budget_keeps_then_drops_jpeg(root, device_json, out, args, flag, keeps, drops):
    """Plan into ``out`` with ``flag keeps`` (JPEG at cut 0 is chosen), then ``flag drops``:
    that plan."""
    assert _plan_with(root, device_json, *args, flag, keeps) == 0
    assert json.loads((out / "plan.json").read_text())["codec"] == "jpeg"
    assert _plan_with(root, device_json, *args, flag, drops) == 0
    return json.loads((out / "plan.json").read_text())


def test_min_agreement_reaches_the_planner(setup, tmp_path, capsys):
    root, _ = setup
    device_json = _with_jpeg(root, tmp_path, agreement=0.9)
    args = ("--bandwidth", "100mbit", "--rtt", "1ms", "-o", str(tmp_path), "--no-plot")
    plan = _budget_keeps_then_drops_jpeg(root, device_json, tmp_path, args,
                                         "--min-agreement", "0.9", "0.95")
    assert plan["codec"] is None  # nothing else was measured by a fidelity run
    assert any("jpeg at cut 0 (agreement 0.9)" in n and "not measured" in n
               for n in plan["notes"])
    with pytest.raises(SystemExit):
        _plan_with(root, device_json, *args, "--min-agreement", "1.5")
    assert "expected a number from 0 to 1" in capsys.readouterr().err


def test_max_accuracy_drop_reaches_the_planner_in_points(setup, tmp_path, capsys):
    root, _ = setup
    device_json = _with_jpeg(root, tmp_path, accuracy_drop=0.004)
    args = ("--bandwidth", "100mbit", "--rtt", "1ms", "-o", str(tmp_path), "--no-plot")
    plan = _budget_keeps_then_drops_jpeg(root, device_json, tmp_path, args,
                                         "--max-accuracy-drop", "0.5", "0.3pt")
    assert plan["codec"] != "jpeg"
    assert any("jpeg at cut 0 (accuracy drop 0.004)" in n for n in plan["notes"])
    # the name for --max-codec-error
    assert _plan_with(root, device_json, *args, "--max-output-error", "0.001") == 0
    assert json.loads((tmp_path / "plan.json").read_text())["codec"] != "jpeg"
    for bad in ("-1", "101", "half", "nan"):
        with pytest.raises(SystemExit):
            _plan_with(root, device_json, *args, "--max-accuracy-drop", bad)
        assert "--max-accuracy-drop" in capsys.readouterr().err


# --- an image bundle, profiled here ---------------------------------------------------------

@pytest.fixture(scope="module")
def frame_bundle(tmp_path_factory):
    torch.manual_seed(0)
    frame = torch.from_numpy(frames.batch(1, 32).copy())
    sm = splitinfer.partition(SkipNet().eval(), (frame,), name="framenet", image_input=IMAGENET)
    root = tmp_path_factory.mktemp("frames")
    save_bundle(sm, root / "bundle")
    return root / "bundle"


def _cut0(out):
    prof = json.loads((out / "device_profile.json").read_text())
    return {k["codec"]: k for k in prof["cuts"][0]["codecs"]}


def test_an_image_bundle_is_profiled_on_a_real_frame_with_the_image_codecs(frame_bundle,
                                                                            tmp_path):
    assert main(["plan", str(frame_bundle), "--bandwidth", "10mbit", "--rtt", "5ms",
                 "--repeats", "1", "--codecs", "fp32,jpeg,png", "--save-profiles",
                 "--no-plot", "--quiet", "-o", str(tmp_path)]) == 0
    cut0 = _cut0(tmp_path)
    assert set(cut0) == {"fp32", "jpeg", "png"} and cut0["jpeg"]["error"] > 0
    frame = frames.batch(1, 32)  # the first sample frame: what a plan without --data measures
    assert cut0["png"]["request_bytes"] == encoded_nbytes(get_codec("png").encode(frame, "t0"))
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert {b["codec"] for b in plan["baselines"]} == {None, "fp32", "jpeg", "png"}


def test_data_is_what_the_profile_measures(frame_bundle, tmp_path, capsys):
    from PIL import Image

    other = frames.sample_frames(32)[5]
    (tmp_path / "data").mkdir()
    Image.fromarray(other).save(tmp_path / "data" / "five.png")
    assert main(["plan", str(frame_bundle), "--bandwidth", "10mbit", "--rtt", "5ms",
                 "--repeats", "1", "--codecs", "fp32,png", "--save-profiles", "--no-plot",
                 "--quiet", "--data", str(tmp_path / "data"), "-o", str(tmp_path)]) == 0
    png = get_codec("png")
    mine = encoded_nbytes(png.encode(other[None], "t0"))
    assert mine != encoded_nbytes(png.encode(frames.batch(1, 32), "t0"))
    assert _cut0(tmp_path)["png"]["request_bytes"] == mine
    assert main(["plan", str(frame_bundle), "--bandwidth", "10mbit", "--rtt", "5ms",
                 "--device-profile", str(tmp_path / "device_profile.json"), "--quiet",
                 "--data", str(tmp_path / "data"), "-o", str(tmp_path)]) == 2
    assert "drop one of them" in capsys.readouterr().err


def test_baselines_that_send_the_same_upload_share_a_row():
    from splitinfer.core.planner import Breakdown, Candidate
    from splitinfer.tools.plan import _distinct_baselines

    def cand(codec, nbytes, total):
        return Candidate(0 if codec else 9, "input" if codec else "output", codec, total,
                         Breakdown(head_s=total), 0.0, nbytes)

    # every tensor codec sends a uint8 frame as it is: the same bytes, the same (zero) error
    baselines = (cand(None, 0, 0.01), cand("jpeg", 14_000, 0.04), cand("fp32", 150_528, 0.10),
                 cand("fp16", 150_528, 0.1001), cand("png", 75_000, 0.08))
    errors = {(0, "jpeg"): "0.015", (0, "fp32"): "0", (0, "fp16"): "0", (0, "png"): "0"}
    rows = _distinct_baselines(baselines, errors)
    assert [label for _, label in rows] == ["device-only", "edge-only jpeg",
                                            "edge-only fp32 (= fp16)", "edge-only png"]
    # a different error is a different upload, even at the same size
    errors[(0, "fp16")] = "0.001"
    assert len(_distinct_baselines(baselines, errors)) == 5
