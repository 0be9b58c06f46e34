"""`splitinfer plan` in what-if mode: table, plan.json, plots, and clear errors."""

from __future__ import annotations

import json

import pytest

from splitinfer.tools.cli import main


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
