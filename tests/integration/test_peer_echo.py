"""benchmarks.peer's bare grpc.aio echo server (the floor it measures the node against), on
loopback: it answers any bytes with as many bytes as the method asks for."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import grpc
import pytest

from benchmarks import peer


def test_the_echo_server_answers_any_bytes_with_the_length_asked_for():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.peer", "--echo-server",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        address = f"127.0.0.1:{port}"
        peer.wait_for("the echo server", lambda: peer._answers(address, peer.ECHO + "1", b"x"),
                      timeout=60)
        got = asyncio.run(peer.closed_loop(address, peer.ECHO + "4082", bytes(401_534), 2,
                                           0.05, 0.3))
        assert got["latencies"] and got["seconds"] == 0.3
        with grpc.insecure_channel(address) as channel:
            assert len(channel.unary_unary(peer.ECHO + "4082")(b"abc", timeout=10)) == 4082
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary("/bench.Echo/Other")(b"abc", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        proc.terminate()
        proc.wait(20)
