"""A local fleet: several edge processes behind one gRPC name, as on Kubernetes.

Three (then four) real ``splitinfer-edge`` processes listen on 127.0.0.1, 127.0.0.2, 127.0.0.3
(127.0.0.4) with the same port, like the pods behind a headless Service. A small DNS server in
the test (dnslib) answers the name ``fleet.test`` with their addresses, and every client uses
the one target ``dns://127.0.0.1:<dns port>/fleet.test:<port>``: gRPC's c-ares resolver asks
that server, round_robin spreads the calls, client-side health checking skips a replica that is
not SERVING. Clients use ``fallback="error"``, so a local answer cannot hide a failed request.

What it shows, with the numbers printed (``-s``): each replica gets a fair share of the
requests; a rolling restart of every replica, one at a time, under load, fails no request; a
replica that joins the name later gets traffic once the connections age out
(``--max-connection-age-s``), from clients that connected before it existed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from device_client import SplitClient
from splitinfer.model.bundle import load_bundle, save_bundle
from splitinfer.model.split_model import partition
from splitinfer.tools import edgeproc
from splitinfer.tools.edgeproc import EdgeProcess

dnslib = pytest.importorskip("dnslib")
from dnslib.server import BaseResolver, DNSServer  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "fleet.test"
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
LATE = "127.0.0.4"
AGE_S = 3.0  # --max-connection-age-s: short, so the test sees connections age out
CLIENTS = 3


class FleetDNS(BaseResolver):  # type: ignore[misc]
    """Answers A queries for NAME with ``addresses`` (changeable), nothing for other names."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = list(addresses)
        self.queries = 0

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        q = request.q
        if str(q.qname).rstrip(".") == NAME and q.qtype == dnslib.QTYPE.A:
            self.queries += 1
            for address in list(self.addresses):
                reply.add_answer(dnslib.RR(q.qname, dnslib.QTYPE.A, rdata=dnslib.A(address),
                                           ttl=1))
        return reply


class _Quiet:
    """dnslib's logger, silenced (it prints every query)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


@pytest.fixture()
def dns() -> Iterator[tuple[FleetDNS, int]]:
    resolver = FleetDNS(list(HOSTS))
    server = DNSServer(resolver, port=0, address="127.0.0.1", logger=_Quiet())
    server.start_thread()
    try:
        yield resolver, server.server.server_address[1]
    finally:
        server.stop()


def _port_free_on_every_host() -> int:
    """A port free on each fleet address (each node binds its own address with it)."""
    for _ in range(50):
        port = edgeproc.free_port()
        try:
            for host in (*HOSTS, LATE):
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every loopback address of the fleet")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from tests.models import build_chain

    torch.manual_seed(0)
    repo = tmp_path_factory.mktemp("fleet_repo")
    save_bundle(partition(build_chain().eval(), (torch.randn(1, 16),), name="chain"),
                repo / "chain" / "1")
    return repo, load_bundle(repo / "chain" / "1")


class Fleet:
    """The edge processes, by address; counts each one's answered requests across restarts."""

    def __init__(self, repo: Path, port: int, workdir: Path) -> None:
        self.repo, self.port, self.workdir = repo, port, workdir
        self.nodes: dict[str, EdgeProcess] = {}
        self.retired: Counter[str] = Counter()  # OK answers of nodes already stopped
        self.starts = 0

    def start(self, host: str) -> EdgeProcess:
        self.starts += 1
        node = edgeproc.start_edge(
            self.repo, "--max-connection-age-s", str(AGE_S), "--max-connection-age-grace-s",
            "2", "--grace-period-s", "5", "--workers", "1", "--torch-threads", "1",
            "--max-queue-delay-ms", "0", "--log-format", "json",
            workdir=self.workdir / f"{host}-{self.starts}", host=host, port=self.port)
        self.nodes[host] = node
        return node

    def stop(self, host: str) -> int:
        node = self.nodes.pop(host)
        self.retired[host] += self.answered(node)
        return node.stop()

    @staticmethod
    def answered(node: EdgeProcess) -> int:
        return int(sum(v for (name, labels), v in node.scrape().items()
                       if name == "splitinfer_edge_requests_total" and ("status", "OK") in labels))

    def shares(self) -> Counter[str]:
        now = Counter({h: self.answered(n) for h, n in self.nodes.items()})
        return now + self.retired

    def close(self) -> None:
        for host in list(self.nodes):
            self.nodes.pop(host).stop()


class Load:
    """CLIENTS threads, each its own SplitClient on the one fleet target, sending requests one
    after another, and one more client streaming frames (``stream()``, 4 in flight); every
    answer is checked against the local model."""

    def __init__(self, bundle: tuple[Path, Any], target: str) -> None:
        self.path, self.model = bundle[0] / "chain" / "1", bundle[1]
        self.target = target
        self.cut = self.model.cuts[len(self.model.cuts) // 2].id
        self.ok = 0
        self.failed: list[str] = []
        self.wrong = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.streamed = 0
        self._ready = threading.Barrier(CLIENTS + 1)
        self._stream_ready = threading.Barrier(2)
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(CLIENTS)]
        self._streamer = threading.Thread(target=self._stream, daemon=True)
        self.clients: list[SplitClient] = []

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        self._ready.wait(timeout=120)
        return self

    def _run(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        xs = [torch.randn(1, 16, generator=gen) for _ in range(8)]
        with torch.no_grad():
            want = [self.model(x) for x in xs]
        with SplitClient(self.path, edges=[self.target], cut=self.cut, codec="fp32",
                         fallback="error", deadline_s=10.0) as client:
            self.clients.append(client)
            self._ready.wait(timeout=120)
            i = 0
            while not self._stop.is_set():
                x, expected = xs[i % len(xs)], want[i % len(xs)]
                i += 1
                try:
                    got = client.infer(x)
                except Exception as exc:  # counted and shown: the test wants none
                    with self._lock:
                        self.failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    self.ok += 1
                    self.wrong += not torch.allclose(got, expected, atol=1e-5)
                time.sleep(0.005)  # a steady stream, not a CPU race with the edges

    def _stream(self) -> None:
        gen = torch.Generator().manual_seed(99)
        xs = [torch.randn(1, 16, generator=gen) for _ in range(8)]
        with torch.no_grad():
            want = [self.model(x) for x in xs]

        def frames() -> Iterator[torch.Tensor]:
            i = 0
            while not self._stop.is_set():
                yield xs[i % len(xs)]
                i += 1
                time.sleep(0.005)

        with SplitClient(self.path, edges=[self.target], cut=self.cut, codec="fp32",
                         fallback="error", deadline_s=10.0, window=4) as client:
            self.clients.append(client)
            self._stream_ready.wait(timeout=120)
            while not self._stop.is_set():
                try:
                    for i, got in enumerate(client.stream(frames())):
                        with self._lock:
                            self.ok += 1
                            self.streamed += 1
                            self.wrong += not torch.allclose(got, want[i % len(xs)], atol=1e-5)
                except Exception as exc:  # a frame that failed ends its stream: count it
                    with self._lock:
                        self.failed.append(f"stream: {type(exc).__name__}: {exc}")

    def start_stream(self) -> None:
        """The streaming client joins (a stream is one call to one replica: it would skew the
        per-replica shares, so it starts after they are measured)."""
        self._threads.append(self._streamer)
        self._streamer.start()
        self._stream_ready.wait(timeout=120)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, len(self.failed)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _wait(what: str, check: Any, timeout: float) -> float:
    start = time.monotonic()
    edgeproc.wait_for(what, check, timeout, every=0.1)
    return time.monotonic() - start


def test_a_fleet_behind_one_name_balances_rolls_and_grows(bundle, dns, tmp_path):
    resolver, dns_port = dns
    port = _port_free_on_every_host()
    fleet = Fleet(bundle[0], port, tmp_path)
    target = f"dns://127.0.0.1:{dns_port}/{NAME}:{port}"
    try:
        with ThreadPoolExecutor(len(HOSTS)) as pool:
            list(pool.map(fleet.start, HOSTS))
        with Load(bundle, target) as load:
            # 1. a fair share each: round_robin over the three addresses the name resolves to
            _wait("300 answers", lambda: load.snapshot()[0] >= 300, 120)
            shares = fleet.shares()
            total = sum(shares.values())
            print(f"\nshares over {total} requests: "
                  + ", ".join(f"{h} {shares[h] / total:.0%}" for h in HOSTS))
            assert set(shares) == set(HOSTS)
            assert all(shares[h] >= 0.2 * total for h in HOSTS), shares  # fair: 1/3 each

            # 2. a rolling restart, one replica at a time, under load: every request answered
            load.start_stream()
            before = load.snapshot()
            for host in HOSTS:
                assert fleet.stop(host) == 0  # SIGTERM: drain, exit 0
                fleet.start(host)             # back on the same address, SERVING
            _wait("traffic on every restarted replica",
                  lambda: all(fleet.answered(fleet.nodes[h]) > 0 for h in HOSTS), 60)
            after = load.snapshot()
            print(f"rolling restart of {len(HOSTS)} replicas: {after[0] - before[0]} requests "
                  f"answered, {after[1] - before[1]} failed")
            assert load.failed == [], load.failed

            # 3. a replica that joins later gets traffic once connections age out: the clients
            # re-resolve the name when the server's GOAWAY closes a connection
            late = fleet.start(LATE)
            resolver.addresses.append(LATE)
            # within the connection age (+10 % jitter), its grace and a few seconds of slack
            took = _wait(f"traffic on {LATE}", lambda: fleet.answered(late) > 0,
                         AGE_S * 1.1 + 2 + 5)
            print(f"{LATE} joined the name and got its first request after {took:.1f} s "
                  f"(connection age {AGE_S:g} s)")
            assert load.failed == [], load.failed
            assert load.wrong == 0
        per_client = [c.stats for c in load.clients]
        assert all(s.errors == 0 and s.local_fallbacks == 0 for s in per_client), per_client
        # every answer the callers read came from the fleet; the stream may have had up to its
        # window (4) answered but not read when the load stopped
        assert load.ok <= sum(s.answered_by_edge for s in per_client) <= load.ok + 4
        assert load.streamed > 0
        print(f"total: {load.ok} answered ({load.streamed} of them streamed), "
              f"{len(load.failed)} failed, {sum(s.retries for s in per_client)} retried on "
              f"another replica")
    finally:
        fleet.close()
