"""`splitinfer-edge` as operators run it: its own process, its ports, metrics, logs and signals.

Each test starts the real console script on loopback port 0 with a model repository made in the
test, through ``splitinfer.tools.edgeproc`` (the one launcher, shared with the demo and the
benchmarks): it reads the ports from the one line the node prints and waits on the gRPC health
check (polled, with a deadline; never a fixed sleep). A real Prometheus scrapes it when one is
installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from torch import nn

from splitinfer.codec import get_codec
from splitinfer.model.bundle import load_bundle, save_bundle
from splitinfer.model.split_model import partition
from splitinfer.model.tensors import decode_torch
from splitinfer.tools import edgeproc
from splitinfer.tools.edgeproc import EdgeProcess
from splitinfer.wire import convert
from splitinfer.wire.v1 import service_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# ---- the process: splitinfer.tools.edgeproc, the launcher the demo and benchmarks use too ----

def _start_edge(repo: Path, workdir: Path, *flags: str) -> EdgeProcess:
    """A SERVING node with JSON logs, its output kept in ``workdir``."""
    return edgeproc.start_edge(repo, "--log-format", "json", *flags, workdir=workdir)


def _metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# ---- bundles and requests ---------------------------------------------------------------------

class SlowTail(nn.Module):
    """Matmul-bound on purpose (~1 GFLOP a layer): a drain has requests to wait for."""

    def __init__(self, width: int = 2048, depth: int = 32) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.depth):
            x = torch.tanh(self.fc(x))
        return x.mean(dim=1)


def _save(model: nn.Module, example: torch.Tensor, repo: Path, name: str) -> Any:
    """Write the bundle ``repo/name/1``; return it loaded back, as the node loads it."""
    save_bundle(partition(model.eval(), (example,), name=name), repo / name / "1")
    return load_bundle(repo / name / "1")


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    repo = tmp_path_factory.mktemp("resnet_repo")
    model = torchvision.models.resnet18(weights=None)
    return repo, _save(model, torch.randn(1, 3, 64, 64), repo, "resnet18")


@pytest.fixture(scope="module")
def resnet_edge(resnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    # DEBUG: the per-request "infer ok" line carries request_id and model_version. The same
    # thread count as this process: conv kernels sum in a thread-dependent order, and the
    # exactness test compares bits with a local run
    node = _start_edge(resnet[0], tmp_path_factory.mktemp("resnet_edge"), "--log-level", "DEBUG",
                       "--torch-threads", str(torch.get_num_threads()))
    yield node
    node.stop()


@pytest.fixture(scope="module")
def chain_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.models import build_chain

    repo = tmp_path_factory.mktemp("chain_repo")
    _save(build_chain(), torch.randn(1, 16), repo, "chain")
    return repo


def _request(sm: Any, cut_id: int, x: torch.Tensor, request_id: str) -> Any:
    with torch.no_grad():
        crossing = sm.head(cut_id)(x)
    fp32 = get_codec("fp32")
    tensors = [fp32.encode(t, name=spec.name)
               for t, spec in zip(crossing, sm.cut(cut_id).tensors)]
    return convert.build_infer_request(model=sm.name, version=sm.version,
                                       fingerprint=sm.fingerprint, cut_id=cut_id,
                                       tensors=tensors, request_id=request_id)


def _expected(sm: Any, cut_id: int, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sm.tail(cut_id)(*sm.head(cut_id)(x))


def _answer(reply: Any) -> torch.Tensor:
    result = convert.parse_infer_response(reply)
    assert result.error is None, result.error
    (out,) = result.outputs
    return decode_torch(out)


# ---- serving ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_infer_matches_the_local_model_exactly(resnet, resnet_edge):
    local = resnet[1]
    cut = local.cut("layer2.1.conv1")  # two tensors cross: the residual and the main branch
    assert len(cut.tensors) == 2
    with grpc.insecure_channel(resnet_edge.address) as channel:
        stub = service_pb2_grpc.EdgeInferenceStub(channel)
        for i, batch in enumerate((1, 2, 1)):  # one at a time: each runs as its own batch
            x = torch.randn(batch, 3, 64, 64)
            reply = stub.Infer(_request(local, cut.id, x, f"exact-{i}"), timeout=60)
            assert reply.request_id == f"exact-{i}" and reply.version == "1"
            assert torch.equal(_answer(reply), _expected(local, cut.id, x)), "fp32 is exact"


@pytest.mark.slow
def test_requests_show_in_metrics_and_json_logs(resnet, resnet_edge):
    local, node = resnet[1], resnet_edge
    cut = local.cut("layer3.0.relu#2")
    before = node.scrape()
    with grpc.insecure_channel(node.address) as channel:
        stub = service_pb2_grpc.EdgeInferenceStub(channel)
        for i, batch in enumerate((1, 2, 1)):
            stub.Infer(_request(local, cut.id, torch.randn(batch, 3, 64, 64), f"m-{i}"),
                       timeout=60)
        bad = _request(local, cut.id, torch.randn(1, 3, 64, 64), "bad-cut")
        bad.cut_id = 999
        with pytest.raises(grpc.RpcError) as refused:
            stub.Infer(bad, timeout=60)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    after = node.scrape()

    def grew(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    labels = {"model": "resnet18", "version": "1", "cut": str(cut.id)}
    assert grew("splitinfer_edge_requests_total", **labels, status="OK") == 3
    assert grew("splitinfer_edge_requests_total", **{**labels, "cut": "999"},
                status="NOT_FOUND") == 1
    for stage in ("queue", "decode", "compute", "encode"):
        assert grew("splitinfer_edge_stage_seconds_count", model="resnet18", stage=stage) == 3
    assert grew("splitinfer_edge_stage_seconds_sum", model="resnet18", stage="compute") > 0
    assert grew("splitinfer_edge_batch_size_count", model="resnet18") == 3  # batches
    assert grew("splitinfer_edge_batch_size_sum", model="resnet18") == 4  # rows
    assert _metric(after, "splitinfer_edge_model_load_seconds", model="resnet18",
                   version="1") > 0
    assert _metric(after, "splitinfer_edge_models_loaded") == 1

    records = node.log_records()  # every stderr line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    (ok,) = [r for r in records if r.get("request_id") == "m-1"]
    assert (ok["model"], ok["model_version"], ok["cut"], ok["batch_rows"]) == \
        ("resnet18", "1", cut.id, 2)
    (no,) = [r for r in records if r.get("request_id") == "bad-cut"]
    assert no["status"] == "NOT_FOUND" and no["model_version"] == "1"
    assert "no cut 999" in no["msg"]


@pytest.mark.slow
def test_healthcheck_command_and_per_model_health(resnet_edge):
    def healthcheck(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge_node.healthcheck", "--address",
                               resnet_edge.address, *args], capture_output=True, text=True,
                              env=edgeproc.edge_env(), timeout=60)

    served = healthcheck()
    assert served.returncode == 0 and "SERVING" in served.stdout, served.stderr
    assert healthcheck("--service", "resnet18").returncode == 0
    unknown = healthcheck("--service", "nope")
    assert unknown.returncode == 1 and "UNKNOWN" in unknown.stderr


@pytest.fixture(scope="module")  # module scope: skips before the node fixtures start
def prometheus() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not on PATH (Debian package 'prometheus'; .ci/run installs "
                    "it when it can)")
    return binary


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_node(prometheus, resnet, resnet_edge, tmp_path):
    with grpc.insecure_channel(resnet_edge.address) as channel:
        _answer(service_pb2_grpc.EdgeInferenceStub(channel).Infer(
            _request(resnet[1], 0, torch.randn(1, 3, 64, 64), "prom"), timeout=60))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: splitinfer-edge\n    scrape_interval: 1s\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{resnet_edge.metrics_port}']\n")
    web = f"127.0.0.1:{edgeproc.free_port()}"
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen([prometheus, f"--config.file={config}",
                                 f"--web.listen-address={web}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    query = urllib.parse.urlencode({"query": "splitinfer_edge_requests_total"})

    def scraped() -> list | None:
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://{web}/api/v1/query?{query}", timeout=5) as r:
                series = json.loads(r.read())["data"]["result"]
        except OSError:  # not listening yet
            return None
        return [s for s in series if s["metric"]["status"] == "OK" and float(s["value"][1]) > 0]

    try:
        series = edgeproc.wait_for("prometheus to scrape splitinfer_edge_requests_total",
                                   scraped, timeout=30, every=0.5)
    finally:
        edgeproc.terminate(proc)
    assert series[0]["metric"]["job"] == "splitinfer-edge"
    assert (series[0]["metric"]["model"], series[0]["metric"]["version"]) == ("resnet18", "1")


# ---- draining ---------------------------------------------------------------------------------

def _wait_until_all_accepted(node: EdgeProcess, futures: list, n: int) -> None:
    def accepted() -> bool:
        finished = sum(f.done() for f in futures)  # read before the scrape: see below
        in_flight = _metric(node.scrape(), "splitinfer_edge_in_flight_requests")
        return in_flight + finished >= n  # accepted >= in flight now + finished before

    edgeproc.wait_for("all requests to be in the node", accepted, timeout=60, every=0.01)
    assert sum(f.done() for f in futures) < n, "the tail is too fast to test a drain"


@pytest.mark.slow
def test_sigterm_drains_accepted_requests_then_exits_0(tmp_path):
    torch.manual_seed(0)
    sm = _save(SlowTail(), torch.randn(1, 128, 2048), tmp_path / "repo", "slow")
    node = _start_edge(tmp_path / "repo", tmp_path / "edge", "--workers", "1",
                       "--max-batch-size", "1", "--torch-threads", "1",
                       "--profile-tails", "false", "--grace-period-s", "120")
    inputs = [torch.randn(1, 128, 2048) for _ in range(8)]
    channel = grpc.insecure_channel(node.address)
    stub = service_pb2_grpc.EdgeInferenceStub(channel)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                       timeout=120)
    pool = ThreadPoolExecutor(len(inputs))
    try:
        assert next(watch).status == SERVING
        futures = [pool.submit(stub.Infer, _request(sm, 0, x, f"drain-{i}"), timeout=120)
                   for i, x in enumerate(inputs)]
        _wait_until_all_accepted(node, futures, len(inputs))
        node.proc.send_signal(signal.SIGTERM)
        # health turns NOT_SERVING before the node stops taking RPCs ...
        assert next(watch).status == NOT_SERVING
        watch.cancel()  # an open Watch would hold the drain for the whole grace period
        # ... then new RPCs are refused while the accepted ones still run
        edgeproc.wait_for("new RPCs to be refused",
                          lambda: edgeproc.health(node.address) == grpc.StatusCode.UNAVAILABLE,
                          timeout=60)
        with grpc.insecure_channel(node.address) as late_channel, \
                pytest.raises(grpc.RpcError) as late:
            service_pb2_grpc.EdgeInferenceStub(late_channel).Infer(
                _request(sm, 0, inputs[0], "late"), timeout=30)
        assert late.value.code() == grpc.StatusCode.UNAVAILABLE
        for i, (future, x) in enumerate(zip(futures, inputs)):
            got = _answer(future.result(timeout=120))  # raises on UNAVAILABLE / CANCELLED
            torch.testing.assert_close(got, _expected(sm, 0, x), rtol=1e-4, atol=1e-5,
                                       msg=f"drain-{i}")
        assert node.proc.wait(timeout=120) == 0
    finally:
        watch.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        channel.close()
        node.stop()
    messages = [r["msg"] for r in node.log_records()]
    assert any(m.startswith("signal received: draining") for m in messages)
    assert messages[-1] == "edge node stopped"


# ---- the launcher: a start that fails, a metrics port taken meanwhile -------------------------

def test_a_failed_start_raises_with_the_stderr_and_leaves_no_process(tmp_path):
    (tmp_path / "repo").mkdir()
    with pytest.raises(edgeproc.EdgeStartError) as failed:
        edgeproc.start_edge(tmp_path / "repo", workdir=tmp_path / "edge")
    assert "exited with code 1 at start" in str(failed.value)
    assert "holds no bundles" in str(failed.value)  # the node's own stderr line
    assert "holds no bundles" in (tmp_path / "edge" / "stderr.txt").read_text()  # kept
    with pytest.raises(ProcessLookupError):
        os.kill(failed.value.pid, 0)


def test_a_start_that_times_out_ends_the_node(chain_repo):
    # timeout 0: the node cannot have printed its ports yet (it has not imported torch)
    with pytest.raises(edgeproc.EdgeStartError) as failed:
        edgeproc.start_edge(chain_repo, timeout=0)
    assert "printed no ports within 0s" in str(failed.value)
    with pytest.raises(ProcessLookupError):
        os.kill(failed.value.pid, 0)


def test_launch_without_waiting_gives_the_exit_code_and_stderr(tmp_path):
    node = edgeproc.launch(tmp_path, "--log-format", "json")  # an empty repository
    try:
        assert not node.running and node.returncode == 1
        assert "holds no bundles" in node.stderr_tail()
    finally:
        assert node.stop() == 1
    assert not node.workdir.exists()  # the launcher's temporary folder is gone ...
    assert "holds no bundles" in node.text("stderr")  # ... its text kept


@pytest.mark.slow
def test_a_metrics_port_taken_meanwhile_is_retried(chain_repo, tmp_path, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        picks, free_port = iter([taken]), edgeproc.free_port
        # the first pick lost the race to another process; then any free port
        monkeypatch.setattr(edgeproc, "free_port", lambda: next(picks, None) or free_port())
        node = edgeproc.start_edge(chain_repo, workdir=tmp_path)
    try:
        assert node.metrics_port not in (0, taken) and edgeproc.serving(node.address)
        assert node.metric_sum("splitinfer_edge_models_loaded") == 1
    finally:
        node.stop()
    assert f"--metrics-port {taken}" in (tmp_path / "stderr.try0.txt").read_text()


# ---- refusing to start ------------------------------------------------------------------------

def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``splitinfer-edge: error:`` line; no traceback, no 'listening' line."""
    lines = [x for x in proc.stderr.splitlines() if x.startswith("splitinfer-edge: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "listening" not in proc.stdout
    return lines[0]


@pytest.mark.parametrize("damage", ["program", "manifest"])
def test_a_corrupt_bundle_is_fatal_with_one_line_naming_it(chain_repo, tmp_path, damage):
    repo = tmp_path / "repo"
    shutil.copytree(chain_repo, repo)
    bundle = repo / "chain" / "1"
    if damage == "program":  # same size, other bytes: only the checksum can tell
        data = bytearray((bundle / "program.pt2").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bundle / "program.pt2").write_bytes(bytes(data))
    else:
        (bundle / "manifest.json").write_text("{not json")
    proc = edgeproc.run_edge("--model-repository", str(repo), "--listen", "127.0.0.1:0",
                     "--metrics-port", "0", "--log-format", "json")
    assert proc.returncode == 1, proc.stderr
    line = _error_line(proc)
    assert str(bundle) in line and ("sha256" if damage == "program" else "JSON") in line


def test_an_empty_repository_is_fatal(tmp_path):
    proc = edgeproc.run_edge("--model-repository", str(tmp_path), "--listen", "127.0.0.1:0",
                     "--metrics-port", "0")
    assert proc.returncode == 1, proc.stderr
    line = _error_line(proc)
    assert "holds no bundles" in line and str(tmp_path) in line


@pytest.mark.slow
def test_a_busy_metrics_port_is_fatal_with_one_line(chain_repo):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = edgeproc.run_edge("--model-repository", str(chain_repo), "--listen", "127.0.0.1:0",
                         "--metrics-port", str(port))
    assert proc.returncode == 1, proc.stderr
    assert f"--metrics-port {port}" in _error_line(proc)


@pytest.mark.parametrize("flags, named", [
    (["--max-batch-size", "0"], "--max-batch-size must be >= 1, got 0"),
    (["--listen", "nowhere"], "--listen must be HOST:PORT"),
])
def test_a_bad_flag_exits_2_naming_it(tmp_path, flags, named):
    proc = edgeproc.run_edge("--model-repository", str(tmp_path), *flags, timeout=60)
    assert proc.returncode == 2
    assert named in _error_line(proc)
