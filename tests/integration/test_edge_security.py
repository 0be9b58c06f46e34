"""Bearer-token auth, TLS and mutual TLS on an in-process edge node (Chain model, port 0).

Certificates are made per session with the ``openssl`` command line: a CA, a server certificate
for 127.0.0.1/localhost, a client certificate from that CA, and one from a rogue CA.
"""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitinfer.wire.v1 import probe_pb2, service_pb2_grpc

from .conftest import SERVING, TOKEN, edge_config, make_request, outputs_of, rpc_error

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def chain_request(bundles, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(1, 16)
    return make_request(bundles.chain, 0, [x]), x


def assert_chain_answer(bundles, x, response) -> None:
    with torch.no_grad():
        assert torch.equal(outputs_of(response)[0], bundles.chain_eager(x))


# ---- token ---------------------------------------------------------------------------------------

@pytest.fixture
def token_node(nodes, bundles, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # a trailing newline is not part of the token
    return nodes(edge_config(bundles.repo(tmp_path / "repo", ("chain", "1")),
                             token_file=str(token_file)))


@pytest.mark.parametrize("metadata, why", [
    ((), "missing bearer token"),
    ((("authorization", "Bearer wrong-token"),), "wrong bearer token"),
    ((("authorization", TOKEN),), "wrong bearer token"),  # no "Bearer " scheme
])
def test_rpcs_without_the_right_token_are_unauthenticated(token_node, bundles, metadata, why):
    request, _ = chain_request(bundles)
    stub = token_node.stub
    calls = {
        "Infer": lambda: stub.Infer(request, metadata=metadata, timeout=10),
        "Probe": lambda: stub.Probe(probe_pb2.ProbeRequest(), metadata=metadata, timeout=10),
        "InferStream": lambda: list(stub.InferStream(iter([request]), metadata=metadata,
                                                     timeout=10)),
    }
    for name, call in calls.items():
        err = rpc_error(call)
        assert err.code() == UNAUTHENTICATED, name
        assert why in err.details() and "--token-file" in err.details(), name


def test_the_right_token_works_and_health_needs_none(token_node, bundles):
    auth = (("authorization", f"Bearer {TOKEN}"),)
    request, x = chain_request(bundles, seed=1)
    assert_chain_answer(bundles, x, token_node.stub.Infer(request, metadata=auth, timeout=10))
    (streamed,) = token_node.stub.InferStream(iter([request]), metadata=auth, timeout=10)
    assert_chain_answer(bundles, x, streamed)
    assert token_node.check() == SERVING  # no token: load balancers probe health without one
    assert token_node.check("chain") == SERVING


def test_empty_token_file_is_a_startup_error(loop, bundles, tmp_path):
    from edge_node.server import EdgeNode, StartupError

    token_file = tmp_path / "token"
    token_file.write_text("\n")
    config = edge_config(bundles.repo(tmp_path / "repo", ("chain", "1")),
                         token_file=str(token_file))

    async def start():
        node = EdgeNode(config)
        try:
            await node.start()
        finally:
            await node.stop(0)

    with pytest.raises(StartupError, match="is empty"):
        loop.run(start())


# ---- TLS -----------------------------------------------------------------------------------------

def fails_to_connect(channel: grpc.Channel) -> grpc.RpcError:
    err = rpc_error(lambda: service_pb2_grpc.EdgeInferenceStub(channel).Probe(
        probe_pb2.ProbeRequest(probe_id="p"), timeout=5))
    channel.close()
    return err


def test_tls_needs_a_secure_channel_that_trusts_the_ca(nodes, bundles, tmp_path, tls_files):
    config = edge_config(bundles.repo(tmp_path / "repo", ("chain", "1")),
                         tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key))
    creds = grpc.ssl_channel_credentials(root_certificates=tls_files.ca.read_bytes())
    node = nodes(config, credentials=creds)

    request, x = chain_request(bundles, seed=2)
    assert_chain_answer(bundles, x, node.stub.Infer(request, timeout=10))
    err = fails_to_connect(grpc.insecure_channel(node.target))
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    rogue = grpc.ssl_channel_credentials(root_certificates=tls_files.rogue_ca.read_bytes())
    err = fails_to_connect(grpc.secure_channel(node.target, rogue))  # does not trust our CA
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_mutual_tls_needs_a_client_certificate_from_the_ca(nodes, bundles, tmp_path, tls_files):
    config = edge_config(bundles.repo(tmp_path / "repo", ("chain", "1")),
                         tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key),
                         tls_client_ca=str(tls_files.ca))
    ca = tls_files.ca.read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=ca,
                                         private_key=tls_files.client_key.read_bytes(),
                                         certificate_chain=tls_files.client_cert.read_bytes())
    node = nodes(config, credentials=creds)

    request, x = chain_request(bundles, seed=3)
    assert_chain_answer(bundles, x, node.stub.Infer(request, timeout=10))
    no_cert = grpc.ssl_channel_credentials(root_certificates=ca)
    err = fails_to_connect(grpc.secure_channel(node.target, no_cert))
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    rogue = grpc.ssl_channel_credentials(root_certificates=ca,
                                         private_key=tls_files.rogue_key.read_bytes(),
                                         certificate_chain=tls_files.rogue_cert.read_bytes())
    err = fails_to_connect(grpc.secure_channel(node.target, rogue))
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    # health is open to any client that passes the handshake, and only to those
    health = health_pb2_grpc.HealthStub(node.channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == SERVING


def test_the_health_port_is_plaintext_health_only(nodes, loop, bundles, tmp_path, tls_files):
    # TLS and a token on the main port; --health-port answers grpc.health.v1 in plaintext,
    # without a token (Kubernetes' gRPC probes can do neither), and nothing else
    from splitinfer.tools.edgeproc import free_port

    token = tmp_path / "token"
    token.write_text(TOKEN)
    port = free_port()
    config = edge_config(bundles.repo(tmp_path / "repo", ("chain", "1")),
                         tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key),
                         token_file=str(token), health_port=port)
    node = nodes(config, credentials=grpc.ssl_channel_credentials(
        root_certificates=tls_files.ca.read_bytes()))
    assert node.node.health_port == port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "chain"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == SERVING, service
        err = rpc_error(lambda: service_pb2_grpc.EdgeInferenceStub(channel).Probe(
            probe_pb2.ProbeRequest(probe_id="p"), timeout=5))
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED  # health only: no inference here
        # a drain shows on the health port too, before it closes
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
        assert next(watch).status == SERVING
        stopping = loop.submit(node.node.stop(5.0))
        node.stopped = True
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        stopping.result(30)


def test_a_busy_health_port_fails_the_start_naming_it(nodes, bundles, tmp_path):
    from edge_node.server import EdgeNode, StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = edge_config(bundles.repo(tmp_path / "repo", ("chain", "1")), health_port=port)
        node = EdgeNode(config)

        async def start() -> None:
            try:
                await node.start()
            finally:
                await node.stop(0)

        with pytest.raises(StartupError, match=f"--health-port {port}"):
            asyncio.run(start())
