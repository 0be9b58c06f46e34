"""`splitinfer plan --edge`: live planning against a real (in-process) edge node."""

from __future__ import annotations

import json

import pytest

from splitinfer.tools.cli import main


@pytest.mark.slow
def test_plan_measures_the_edge_and_the_link_live(main_node, bundles, tmp_path, capsys):
    out = tmp_path / "plan"
    code = main(["plan", str(bundles.path("resnet18", "1")), "--edge", main_node.target,
                 "--repeats", "1", "--probe-repeats", "2", "--codecs", "fp32,int8+zstd",
                 "--quiet", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "chosen: cut" in printed and "device-only" in printed
    plan = json.loads((out / "plan.json").read_text())
    # loopback: the fitted link is fast, and its RTT is well under a second
    assert plan["link"]["bandwidth_bps"] > 1e7 and plan["link"]["rtt_s"] < 0.5
    assert (out / "plan.png").stat().st_size > 0


def test_plan_refuses_an_edge_serving_another_model(main_node, bundles, tmp_path, capsys):
    # the twoin bundle is not served as "chain"... ask the edge about a model it lacks
    code = main(["plan", str(bundles.path("chain", "1")), "--edge", main_node.target,
                 "--repeats", "1", "--quiet", "-o", str(tmp_path)])
    assert code == 2
    assert "NOT_FOUND" in capsys.readouterr().err
