"""benchmarks.peer's pure parts: overheads, ratios, the floor, targets, and the report section
(its echo server, the floor: tests/integration/test_peer_echo.py)."""

from __future__ import annotations

import json

import pytest

from benchmarks import peer
from benchmarks import report as bench_report


def _row(clients: int, rps: float, p50: float) -> dict[str, float]:
    return {"clients": clients, "requests": int(rps), "rps": rps, "p50_ms": p50,
            "p95_ms": p50 * 1.2, "client_cpu": 0.1, "machine_cpu": 1.0}


def _workload(ours_p50: float, kserve_p50: float, floor_p50: float,
              kind: str = "conv", compute: float = 10.0) -> dict[str, object]:
    return {"label": "toy tail", "kind": kind, "activation_bytes": 401_408,
            "request_bytes": {"splitinfer": 401_534, "kserve": 401_453, "grpc floor": 401_534},
            "reply_bytes": 4082,
            "compute_p50_ms": {"splitinfer": compute, "kserve": compute,
                               "splitinfer in server": compute + 0.5,
                               "kserve in server": compute + 0.4},
            "load": {"splitinfer": [_row(1, 1000 / ours_p50, ours_p50), _row(16, 200, 80.0)],
                     "kserve": [_row(1, 1000 / kserve_p50, kserve_p50), _row(16, 70, 230.0)],
                     "grpc floor": [_row(1, 1700, floor_p50), _row(16, 2500, 6.0)]},
            "stages_ms": {"decode": 0.1, "queue": 0.08, "compute": 10.5, "encode": 0.05}}


def test_overheads_ratios_and_the_floor():
    res = peer.derive({"toy": _workload(11.5, 13.0, 0.6)})["toy"]
    assert res["overhead_ms"] == pytest.approx({"splitinfer": 1.5, "kserve": 3.0,
                                                "grpc floor": 0.6})
    assert res["overhead_ratio"] == pytest.approx(0.5)
    assert res["rps_ratio"][16] == pytest.approx(200 / 70)
    assert res["above_floor_ms"] == pytest.approx(0.9)
    assert res["serving_ms"] == pytest.approx({"splitinfer": 1.0, "kserve": 2.6})
    assert not res["target_below_floor"]  # 0.5 x 3.0 ms = 1.5 ms, over the 0.6 ms floor
    light = peer.derive({"light": _workload(1.6, 3.2, 0.6, kind="light", compute=0.1)})["light"]
    assert light["overhead_ratio"] == pytest.approx(1.5 / 3.1)
    targets = peer.check_targets({"toy": res, "light": light})
    # conv tails give the req/s targets (1 client: 1.13x), light tails the overhead one
    assert {k: t["pass"] for k, t in targets.items()} == {
        "toy (401 KB): req/s vs KServe, 1 client(s)": False,
        "toy (401 KB): req/s vs KServe, 16 client(s)": True,
        "401 KB activation: overhead vs KServe, 1 client": True}
    low = peer.derive({"toy": _workload(11.0, 11.0, 0.6)})["toy"]
    assert low["target_below_floor"]  # KServe's 1.0 ms x 0.5 sits below grpcio's 0.6 ms


def test_the_report_section_reads_the_json_as_written(tmp_path):
    results = peer.derive({"toy": _workload(11.5, 13.0, 0.6)})
    data = json.loads(json.dumps({
        "meta": {"weights": "random", "peer": ["kserve==0.21.0"]}, "workloads": results,
        "hops": {"two_hops_p50_ms": 0.12, "same_thread_p50_ms": 0.01},
        "layouts": {"toy": {"default_ms": 2.0, "channels_last_ms": 2.5}}}))
    text = "\n".join(bench_report.section_peer(data))
    assert "| 16 | 200 / 80.00 | 70 / 230.00 | 2500 / 6.00 | 2.85714 |" in text
    assert "ours **1.50 ms**, KServe 3.00 ms (**0.50x**)" in text
    assert "two thread hops alone" in text and "| toy | 2 | 2.5 |" in text


def _with_tritonclient(work: dict[str, object]) -> dict[str, object]:
    """The tritonclient mode's part of a workload, as ``triton_result`` writes it."""
    work["tritonclient"] = {
        "models": {"splitinfer": "toy.cut7", "kserve": "toy"},
        "inputs": {"splitinfer": "relu_3", "kserve": "input-0"},
        "max_abs_diff": {"splitinfer": 2e-6, "kserve": 3e-6},
        "load": {"splitinfer": [_row(1, 1000 / 12.5, 12.5), _row(16, 180, 88.0)],
                 "kserve": [_row(1, 1000 / 14.0, 14.0), _row(16, 60, 266.0)]}}
    return work


def test_tritonclient_ratios_and_what_the_client_adds_over_bytes():
    res = peer.derive({"toy": _with_tritonclient(_workload(11.5, 13.0, 0.6))})["toy"]
    tc = res["tritonclient"]
    assert tc["rps_ratio"] == pytest.approx({1: 14.0 / 12.5, 16: 3.0})
    assert tc["p50_ratio"] == pytest.approx({1: 12.5 / 14.0, 16: 88.0 / 266.0})
    # the byte replay's p50 at 1 client: 11.5 ms to ours, 13.0 ms to KServe
    assert tc["over_bytes_p50_ms"] == pytest.approx({"splitinfer": 1.0, "kserve": 1.0})
    # the existing measurements and targets are untouched by the mode
    plain = peer.derive({"toy": _workload(11.5, 13.0, 0.6)})["toy"]
    assert {k: v for k, v in res.items() if k != "tritonclient"} == plain
    assert peer.check_targets({"toy": res}) == peer.check_targets({"toy": plain})


def test_the_report_section_shows_the_tritonclient_mode(capsys):
    results = peer.derive({"toy": _with_tritonclient(_workload(11.5, 13.0, 0.6))})
    data = json.loads(json.dumps({
        "meta": {"weights": "random", "peer": ["kserve==0.21.0"]}, "workloads": results}))
    text = "\n".join(bench_report.section_peer(data))
    assert "our node's OIP model `toy.cut7` against KServe's `toy`" in text
    assert "| 16 | 180 / 88.00 / 105.60 | 60 / 266.00 / 319.20 | 3 | 0.330827 |" in text
    assert "ours +1.00 ms" in text
    # results written before the mode have no such part: the section reads them as before
    old = json.loads(json.dumps({"meta": {"weights": "random", "peer": []},
                                 "workloads": peer.derive({"toy": _workload(11.5, 13.0, 0.6)})}))
    assert "tritonclient" not in "\n".join(bench_report.section_peer(old))
    peer.report_triton(results["toy"]["tritonclient"])
    out = capsys.readouterr().out
    assert "'toy.cut7'" in out and "3.00x" in out
