"""How the CLI prints: plain text off a terminal, rich on one, --json on stdout alone, --quiet."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitinfer.core.errors import SplitInferError
from splitinfer.tools.cli import main
from splitinfer.tools.console import Output, plain_table
from splitinfer.tools.factory import load_factory
from tests.models import SkipNet

ROOT = Path(__file__).resolve().parents[2]
BOX = set("─━│┃┏┓┗┛┌┐└┘├┤┡┩╇┳┻╋┼")
ESC = "\x1b"


@pytest.fixture(autouse=True)
def no_forced_terminal(monkeypatch):
    """rich treats a pipe as a terminal under these; the tests decide for themselves."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def setup(skipnet_plan_files):
    return skipnet_plan_files


def _assert_plain(text: str) -> None:
    assert ESC not in text, text
    assert not BOX & set(text), text
    assert all(line == line.rstrip() for line in text.splitlines()), text


# ---- the console itself --------------------------------------------------------------------

def test_plain_table_aligns_columns():
    lines = plain_table([("id", "right"), "name", ("KB", "right")],
                        [(0, "input", "12.0"), (10, "layer3.1.relu", "1.5")])
    assert lines == ["id  name             KB",
                     " 0  input          12.0",
                     "10  layer3.1.relu   1.5"]


@pytest.mark.parametrize("columns, rows, message", [
    (["a", "b"], [(1,)], "1 cells for 2 columns"),
    ([("a", "middle")], [(1,)], "'left' or 'right'"),
])
def test_plain_table_refuses_bad_shapes(columns, rows, message):
    with pytest.raises(ValueError, match=message):
        plain_table(columns, rows)


def test_not_a_terminal_means_plain_rows():
    out = io.StringIO()
    ui = Output(stdout=out, stderr=io.StringIO())
    assert ui.plain
    ui.line("title", style="bold")
    ui.table([("cut", "right"), "name"], [(1, "stem"), (12, "layer4.1.relu")])
    text = out.getvalue()
    _assert_plain(text)
    assert text.splitlines() == ["title", "cut  name", "  1  stem", " 12  layer4.1.relu"]


def test_a_terminal_gets_a_rich_table():
    out = io.StringIO()
    ui = Output(stdout=out, stderr=io.StringIO(), force_terminal=True, width=80)
    assert not ui.plain
    ui.table([("cut", "right"), "name"], [(1, "stem"), (12, "[-1, 8]:float32")])
    text = out.getvalue()
    assert BOX & set(text), text
    assert "stem" in text and "[-1, 8]:float32" in text  # cells are text, never markup


def test_quiet_is_plain_even_on_a_terminal():
    out, err = io.StringIO(), io.StringIO()
    ui = Output(quiet=True, stdout=out, stderr=err, force_terminal=True)
    assert ui.plain
    ui.table(["a"], [("x",)])
    with ui.progress("profiling", 3) as step:
        for done in range(1, 4):
            step(done, 3)
    with ui.status("capturing"):
        pass
    _assert_plain(out.getvalue())
    assert out.getvalue().splitlines() == ["a", "x"] and err.getvalue() == ""


def test_plain_progress_is_one_line_on_stderr_at_the_end():
    out, err = io.StringIO(), io.StringIO()
    ui = Output(stdout=out, stderr=err)
    with ui.progress("profiling skipnet") as step:
        step(1, 3)
        assert err.getvalue() == ""
        step(3, 3)
    assert out.getvalue() == ""
    (line,) = err.getvalue().splitlines()
    assert line.startswith("profiling skipnet: 3/3 in ")


def test_terminal_progress_draws_a_bar_with_the_count():
    out = io.StringIO()
    ui = Output(stdout=out, stderr=io.StringIO(), force_terminal=True, width=100)
    with ui.progress("exporting ONNX", 2) as step:
        step(1, 2)
        step(2, 2)
    text = out.getvalue()
    assert "exporting ONNX" in text and "2/2" in text and "eta" in text


def test_json_mode_keeps_stdout_for_the_result():
    out, err = io.StringIO(), io.StringIO()
    ui = Output(json_output=True, stdout=out, stderr=err)
    ui.line("wrote bundle")
    ui.table(["a"], [("x",)])
    ui.json({"cuts": 3})
    assert json.loads(out.getvalue()) == {"cuts": 3}
    assert "wrote bundle" in err.getvalue() and "x" in err.getvalue()


# ---- the commands ----------------------------------------------------------------------------

def test_inspect_prints_plain_rows_off_a_terminal(setup, capsys):
    root, sm = setup
    assert main(["inspect", str(root / "bundle")]) == 0
    text = capsys.readouterr().out
    _assert_plain(text)
    lines = text.splitlines()
    assert lines[0].startswith("skipnet v1  capture=")
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["id", "name"])
    rows = lines[header + 1:]
    assert len(rows) == len(sm.cuts)
    assert [r.split()[:2] for r in rows] == [[str(c.id), c.name] for c in sm.cuts]


def test_inspect_json(setup, capsys):
    root, sm = setup
    assert main(["inspect", str(root / "bundle"), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["name"] == "skipnet" and len(manifest["cuts"]) == len(sm.cuts)


def _plan_args(root, out, *extra):
    return ["plan", str(root / "bundle"), "--edge-profile", str(root / "edge.json"),
            "--bandwidth", "20mbit", "--rtt", "30ms", "--no-plot", "-o", str(out), *extra]


def test_plan_json_is_the_plan_and_nothing_else(setup, tmp_path, capsys):
    root, sm = setup
    assert main(_plan_args(root, tmp_path, "--device-profile", str(root / "device.json"),
                           "--json")) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    assert plan == json.loads((tmp_path / "plan.json").read_text())
    assert {"cut_id", "codec", "link", "alternatives"} <= set(plan)
    assert 0 <= plan["cut_id"] < len(sm.cuts)
    assert "chosen:" not in captured.out and "wrote" in captured.err


def test_plan_table_is_plain_off_a_terminal(setup, tmp_path, capsys):
    root, _ = setup
    assert main(_plan_args(root, tmp_path, "--device-profile", str(root / "device.json"),
                           "--top", "3")) == 0
    text = capsys.readouterr().out
    _assert_plain(text)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "cut"])
    assert [line.split()[0] for line in lines[header + 1:header + 4]] == ["1", "2", "3"]
    assert any(line.startswith("chosen: cut ") for line in lines)


@pytest.mark.parametrize("quiet", [[], ["--quiet"], ["--quiet", "global"]])
def test_profiling_progress_and_quiet(setup, tmp_path, capsys, quiet):
    root, sm = setup
    args = _plan_args(root, tmp_path, "--repeats", "1", "--codecs", "fp32")
    if quiet == ["--quiet"]:
        args.append("--quiet")
    elif quiet:
        args.insert(0, "--quiet")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "chosen: cut" in captured.out
    if quiet:
        assert captured.err == ""
    else:
        (line,) = captured.err.splitlines()
        assert line.startswith(f"profiling skipnet on this device: {len(sm.cuts)}/"
                               f"{len(sm.cuts)} in ")


def test_export_json_summary(tmp_path, capsys):
    out = tmp_path / "chain"
    assert main(["export", "tests.models:Chain", "--example-shape", "1,16", "-o", str(out),
                 "--version", "3", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary == {"bundle": str(out), "name": "Chain", "version": "3",
                       "fingerprint": manifest["fingerprint"], "cuts": len(manifest["cuts"]),
                       "onnx": []}
    assert "wrote bundle" in captured.err


def test_export_json_lists_the_onnx_files(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "chain"
    assert main(["export", "tests.models:Chain", "--example-shape", "1,16", "-o", str(out),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", "--from-bundle", str(out), "--onnx", "--cut", "act",
                 "--no-onnx-tail", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["name"] == "Chain" and summary["bundle"] == str(out)
    assert len(summary["onnx"]) == 1 and summary["onnx"][0].endswith("-head.onnx")
    assert Path(summary["onnx"][0]).is_file()
    assert "wrote ONNX heads" in captured.err
    assert "exporting ONNX: 1/1 in " in captured.err  # the progress, on stderr


def test_offline_demo_json(tmp_path, capsys):
    out = tmp_path / "offline.json"
    assert main(["demo", "--offline", "--json", "--model", "tests.models:SkipNet",
                 "--example-shape", "1,3,16,16", "--cuts", "3", "--codecs", "fp32,int8",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result == json.loads(out.read_text())
    assert {"model", "cuts", "fingerprint", "rows"} <= set(result)
    assert len(result["rows"]) == 6
    assert "fp32 split == whole model at every cut shown: yes" in captured.err


def test_errors_stay_one_line_and_exit_2(capsys):
    assert main(["inspect", "/nonexistent/bundle", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("splitinfer inspect: error: ") and "no manifest.json" in line


# ---- the factory loader ----------------------------------------------------------------------

def test_load_factory_finds_and_names_what_is_wrong():
    assert load_factory("tests.models:SkipNet") is SkipNet
    assert load_factory("os.path:join") is os.path.join
    for spec, message in (("tests.models", "use MODULE:FACTORY"),
                          ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
                          ("tests.models:Nope.x", "has no attribute 'Nope.x'")):
        with pytest.raises(SplitInferError, match=message):
            load_factory(spec)


def test_codec_demo_does_not_import_the_cli():
    code = ("import sys, splitinfer.tools.codec_demo; "
            "print('splitinfer.tools.cli' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
