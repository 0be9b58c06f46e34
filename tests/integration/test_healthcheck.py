"""edge_node.healthcheck (the container's HEALTHCHECK) against a real grpc.health.v1 server."""

from __future__ import annotations

import socket
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edge_node import healthcheck

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def health_server():
    """A real grpc.health.v1 service on loopback port 0: '' SERVING, 'm' NOT_SERVING."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("m", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None).wait()


def test_healthcheck_serving_server(health_server, capsys):
    assert healthcheck.main(["--address", health_server, "--timeout", "5"]) == 0
    assert "SERVING" in capsys.readouterr().out


def test_healthcheck_not_serving_model(health_server, capsys):
    assert healthcheck.main(["--address", health_server, "--service", "m", "--timeout", "5"]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err


def test_healthcheck_unknown_service(health_server, capsys):
    code = healthcheck.main(["--address", health_server, "--service", "nope", "--timeout", "5"])
    assert code == 1
    assert "UNKNOWN" in capsys.readouterr().err


def test_healthcheck_closed_port(capsys):
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert healthcheck.main(["--address", f"127.0.0.1:{port}", "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect" in err or "timeout" in err, err


def test_healthcheck_module_runs_without_torch(health_server):
    # the Docker HEALTHCHECK runs this every few seconds: it must not pull in torch
    code = ("import runpy, sys; sys.modules['torch'] = None\n"
            f"sys.argv = ['healthcheck', '--address', {health_server!r}, '--timeout', '5']\n"
            "runpy.run_module('edge_node.healthcheck', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and "SERVING" in out.stdout
