"""Fixtures for edge node integration tests: real bundles, in-process nodes on port 0, a gate.

Every node runs on one background asyncio loop (grpc.aio wants one loop per process); tests talk
to it through ordinary synchronous ``grpc`` channels. Nodes are ready when health says SERVING
(a Watch stream, no sleeps). :class:`Gate` holds every tail call until the test opens it, which
turns "the worker is busy" into a fact the test controls instead of a timing it hopes for.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

import splitinfer
from edge_node.config import EdgeConfig
from edge_node.server import EdgeNode
from splitinfer.codec import EncodedTensor, get_codec
from splitinfer.model.bundle import save_bundle
from splitinfer.model.tensors import decode_torch
from splitinfer.wire import convert
from splitinfer.wire.v1 import inference_pb2, service_pb2_grpc
from tests.models import Chain, TwoInTwoOut

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TOKEN = "s3cret-token"


# ---- helpers ------------------------------------------------------------------------------------

def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


def encode_cut(sm: Any, cut_id: int, tensors: Sequence[torch.Tensor],
               codec: str = "fp32") -> list[EncodedTensor]:
    """``tensors`` encoded with ``codec`` under the names of ``sm``'s cut."""
    specs = sm.cuts[cut_id].tensors
    return [get_codec(codec).encode(t, name=spec.name) for t, spec in zip(tensors, specs)]


def make_request(sm: Any, cut_id: int, tensors: Sequence[torch.Tensor], *, codec: str = "fp32",
                 request_id: str = "", model: str | None = None, version: str = "",
                 fingerprint: str | None = None, output_codec: str = "",
                 encoded: Sequence[EncodedTensor] | None = None) -> inference_pb2.InferRequest:
    """An InferRequest for a cut of ``sm``; ``encoded`` replaces encoding ``tensors``."""
    encs = encode_cut(sm, cut_id, tensors, codec) if encoded is None else encoded
    return convert.build_infer_request(
        model=sm.name if model is None else model, version=version,
        fingerprint=sm.fingerprint if fingerprint is None else fingerprint, cut_id=cut_id,
        tensors=encs, request_id=request_id, output_codec=output_codec)


def outputs_of(response: inference_pb2.InferResponse) -> list[torch.Tensor]:
    """The decoded outputs of a successful response."""
    result = convert.parse_infer_response(response)
    assert result.error is None, result.error
    return [decode_torch(e) for e in result.outputs]


def as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, dict):
        return tuple(out.values())
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    """Call ``fn``, which must fail with a gRPC error; return that error."""
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


class Gate:
    """Wraps a node's tails so each call blocks until :meth:`open`; counts calls that entered."""

    def __init__(self) -> None:
        self._opened = threading.Event()
        self._cv = threading.Condition()
        self.entered = 0

    def install(self, node: EdgeNode) -> "Gate":
        tails = node.repo.tails
        real_get = tails.get

        def get(model: Any, cut_id: int) -> Callable[..., Any]:
            tail = real_get(model, cut_id)

            def gated(*tensors: torch.Tensor) -> Any:
                with self._cv:
                    self.entered += 1
                    self._cv.notify_all()
                if not self._opened.wait(30):
                    raise RuntimeError("test gate was never opened")
                return tail(*tensors)

            return gated

        tails.get = get  # type: ignore[method-assign]
        return self

    def wait_entered(self, n: int = 1, timeout: float = 20.0) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: self.entered >= n, timeout):
                raise AssertionError(f"only {self.entered} tail call(s) started, expected {n}")

    def open(self) -> None:
        self._opened.set()


# ---- the event loop and the nodes ---------------------------------------------------------------

class LoopThread:
    """An asyncio loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="edge-test-loop",
                                       daemon=True)
        self.thread.start()

    def submit(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Any, timeout: float = 120.0) -> Any:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class RunningNode:
    """A started node and a channel to it."""

    node: EdgeNode
    loop: LoopThread
    channel: grpc.Channel
    target: str
    stopped: bool = False
    gate: Gate | None = None

    @property
    def stub(self) -> service_pb2_grpc.EdgeInferenceStub:
        return service_pb2_grpc.EdgeInferenceStub(self.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    def check(self, service: str = "") -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=service),
                                 timeout=10).status

    def stop(self, grace: float = 0.0) -> None:
        if not self.stopped:
            self.stopped = True
            self.loop.run(self.node.stop(grace))
        self.channel.close()


def wait_serving(channel: grpc.Channel, service: str = "", timeout: float = 90.0) -> None:
    """Block until health says SERVING for ``service`` (a Watch stream: no polling, no sleep)."""
    call = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    try:
        for response in call:
            if response.status == SERVING:
                return
    finally:
        call.cancel()
    raise AssertionError(f"health watch on {service!r} ended before SERVING")


async def create_and_start(config: EdgeConfig) -> EdgeNode:
    node = EdgeNode(config)  # made on the loop: its health servicer's conditions live there
    try:
        await node.start()
    except BaseException:
        await node.stop(0)
        raise
    return node


def start_node(loop: LoopThread, config: EdgeConfig,
               credentials: grpc.ChannelCredentials | None = None) -> RunningNode:
    node = loop.run(create_and_start(config))
    target = f"127.0.0.1:{node.port}"
    channel = (grpc.secure_channel(target, credentials) if credentials is not None
               else grpc.insecure_channel(target))
    running = RunningNode(node, loop, channel, target)
    try:
        wait_serving(channel)
    except BaseException:
        running.stop()
        raise
    return running


def edge_config(repo: Path, **overrides: Any) -> EdgeConfig:
    """A test node's config: loopback port 0, no metrics port, fast profiling."""
    values: dict[str, Any] = dict(model_repository=str(repo), listen="127.0.0.1:0",
                                  metrics_port=0, workers=1, profile_tails=True,
                                  profile_repeats=1, grace_period_s=0.0)
    values.update(overrides)
    return EdgeConfig(**values)


@pytest.fixture(scope="session")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def nodes(loop: LoopThread) -> Iterator[Callable[..., RunningNode]]:
    """Factory: ``nodes(config, credentials=None, gate=None)`` starts a node; stopped after."""
    started: list[RunningNode] = []

    def start(config: EdgeConfig, credentials: grpc.ChannelCredentials | None = None,
              gate: Gate | None = None) -> RunningNode:
        running = start_node(loop, config, credentials)
        started.append(running)
        if gate is not None:
            running.gate = gate.install(running.node)
        return running

    yield start
    for running in reversed(started):
        if running.gate is not None:
            running.gate.open()  # a worker blocked in the gate would hold up the drain forever
        running.stop()


# ---- bundles ------------------------------------------------------------------------------------

@dataclass
class Bundles:
    """Split models, their eager originals and their saved bundles (``<root>/<name>/<ver>``)."""

    root: Path
    resnet: Any
    resnet_eager: torch.nn.Module
    twoin9: Any
    twoin10: Any
    twoin_eager: torch.nn.Module
    chain: Any
    chain_eager: torch.nn.Module

    def path(self, name: str, version: str) -> Path:
        return self.root / name / version

    def repo(self, where: Path, *entries: tuple[str, str], copy: bool = False) -> Path:
        """A model repository at ``where`` holding ``entries`` (linked, or copied)."""
        where.mkdir(parents=True, exist_ok=True)
        for name, version in entries:
            dest = where / name / version
            dest.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copytree(self.path(name, version), dest)
            else:
                dest.symlink_to(self.path(name, version), target_is_directory=True)
        return where


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    import torchvision

    root = tmp_path_factory.mktemp("bundles")
    torch.manual_seed(0)
    resnet_eager = torchvision.models.resnet18().eval()
    resnet = splitinfer.partition(resnet_eager, (torch.randn(1, 3, 64, 64),), name="resnet18")
    save_bundle(resnet, root / "resnet18" / "1", version="1")

    example = (torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.int64))
    torch.manual_seed(0)
    twoin_eager = TwoInTwoOut().eval()
    twoin9 = splitinfer.partition(twoin_eager, example, name="twoin")
    save_bundle(twoin9, root / "twoin" / "9", version="9")
    torch.manual_seed(1)
    twoin10 = splitinfer.partition(TwoInTwoOut().eval(), example, name="twoin")
    save_bundle(twoin10, root / "twoin" / "10", version="10")

    torch.manual_seed(0)
    chain_eager = Chain().eval()
    chain = splitinfer.partition(chain_eager, (torch.randn(2, 16),), name="chain")
    for version in ("1", "2"):
        save_bundle(chain, root / "chain" / version, version=version)
    return Bundles(root, resnet, resnet_eager, twoin9, twoin10, twoin_eager, chain, chain_eager)


# ---- TLS material -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path  # another CA, and a client certificate from it
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _make_leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line tool is not installed; it makes the test certs")
    d = tmp_path_factory.mktemp("tls")
    _make_ca(d, "ca")
    _make_ca(d, "rogue-ca")
    _make_leaf(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                  "extendedKeyUsage=serverAuth\n")
    _make_leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _make_leaf(d, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
                    d / "client.key", d / "rogue-ca.pem", d / "rogue.pem", d / "rogue.key")


# ---- the shared node ----------------------------------------------------------------------------

#: the shared node's small limits, which the error tests push against
MAIN_MAX_TENSOR_BYTES = 1 << 20
MAIN_MAX_PROBE_BYTES = 4096


@pytest.fixture(scope="session")
def main_node(loop: LoopThread, bundles: Bundles,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """resnet18 v1 and twoin v9 + v10; batching off, so answers are bit-exact per request."""
    repo = bundles.repo(tmp_path_factory.mktemp("main-repo"), ("resnet18", "1"), ("twoin", "9"),
                        ("twoin", "10"))
    config = edge_config(repo, workers=2, max_batch_size=1, profile_repeats=3,
                         max_tensor_bytes=MAIN_MAX_TENSOR_BYTES,
                         max_probe_bytes=MAIN_MAX_PROBE_BYTES)
    running = start_node(loop, config)
    yield running
    running.stop()
