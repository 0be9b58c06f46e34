"""The link emulator's own accuracy and behaviour checks, over loopback sockets.

The issue asks that it "delivers the asked rate and delay within 10% for transfers of
100 KB-10 MB". On a quiet machine it does (the rate checks print their figures; docs/netem.md
has them). A test cannot hold a busy machine to 10% (CI failed once at 14.6%: the proxy's thread
was late), so the checks here are tight below (the link is never faster than its shape) and loose
above. Each timing check takes the median of a few trials; every wait is on a read or a queue
with a timeout, never a sleep.
"""

from __future__ import annotations

import queue
import selectors
import signal
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from splitinfer.tools.netem import LinkEmulator, LinkShape, parse_duration, parse_rate

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0


# ---- local servers ------------------------------------------------------------------------------

def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(min(n - len(buf), 1 << 20))
        if not data:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass


class _Sink(socketserver.BaseRequestHandler):
    """Reads framed messages (8-byte length, then body); queues the time each one completed."""

    def handle(self) -> None:
        try:
            while head := self.request.recv(8, socket.MSG_WAITALL):
                (size,) = struct.unpack("!Q", head)
                left = size
                while left:
                    data = self.request.recv(min(left, 1 << 20))
                    if not data:
                        return
                    left -= len(data)
                self.server.done.put((size, time.monotonic()))  # type: ignore[attr-defined]
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


def _serve(handler: type) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), handler)
    server.done = queue.Queue()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture()
def echo() -> Iterator[_Server]:
    yield from _serve(_Echo)


@pytest.fixture()
def sink() -> Iterator[_Server]:
    yield from _serve(_Sink)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _send_timed(sock: socket.socket, sink: _Server, size: int) -> float:
    """Seconds from the first byte sent to the last byte received by the sink."""
    body = b"\x5a" * size
    t0 = time.monotonic()
    sock.sendall(struct.pack("!Q", size) + body)
    got, t1 = sink.done.get(timeout=TIMEOUT)  # type: ignore[attr-defined]
    assert got == size
    return t1 - t0


def _expected(size: int, shape: LinkShape) -> float:
    """Time a transfer should take: the first ``burst`` bytes leave at once, the rest at the
    rate, and the last byte then travels ``delay_s``."""
    assert shape.rate_bps is not None
    return max(size + 8 - shape.burst, 0) / (shape.rate_bps / 8) + shape.delay_s


def _ping_rtts(port: int, n: int) -> list[float]:
    rtts = []
    with _connect(port) as sock:
        for i in range(n):
            msg = (b"%06d" % i) * 16 + b"ping"  # 100 bytes
            t0 = time.monotonic()
            sock.sendall(msg)
            assert _recv_exactly(sock, len(msg)) == msg
            rtts.append(time.monotonic() - t0)
    return rtts


# ---- rate and delay accuracy --------------------------------------------------------------------

@pytest.mark.parametrize("size, rate", [(100_000, 10e6), (1_000_000, 20e6),
                                        (10_000_000, 80e6)], ids=["100KB", "1MB", "10MB"])
def test_rate_is_held(sink, size, rate):
    """The measured time (first byte sent -> last byte at the sink; median of 3 transfers, each
    on a fresh connection with a full bucket) is never shorter than the expected time
    ``(size - burst) / rate + delay`` (less 5% for timer and pacing granularity): the link is
    never faster than its shape, however idle the machine. It is at most 1.5x the expected time:
    on a busy machine the proxy's thread can be late, so the upper bound is loose; on a quiet one
    the time is within 10% (the figure printed here). For 100 KB the burst is a fifth of the
    transfer, so it is counted rather than ignored."""
    shape = LinkShape(rate_bps=rate, delay_s=0.01)
    times = []
    with LinkEmulator(("127.0.0.1", sink.server_address[1]), shape=shape) as link:
        for _ in range(3):
            with _connect(link.port) as sock:
                times.append(_send_timed(sock, sink, size))
        # the proxy counts a piece after its write drained, which can be a moment after the
        # sink has seen the last byte: wait for the count rather than read it at once
        _wait_for(lambda: link.stats.up_bytes == 3 * (size + 8))
    measured, expected = statistics.median(times), _expected(size, shape)
    goodput = size * 8 / (measured - shape.delay_s)
    print(f"{size} B at {rate / 1e6:.0f} Mbit/s: {measured * 1e3:.1f} ms, expected "
          f"{expected * 1e3:.1f} ms, goodput {goodput / 1e6:.2f} Mbit/s")
    assert 0.95 * expected <= measured <= 1.5 * expected, (times, expected)


def test_delay_each_way_is_held(echo):
    """100-byte ping-pong, 20 ms each way: the median RTT is 40 ms (+ loopback); with 30 ms up
    and 10 ms down it is 40 ms too, and with 5 ms down only it is 5 ms. Never shorter than the
    delays; at most 25% + 2 ms longer (a busy machine delays the proxy's thread; a quiet one is
    within 10%)."""
    target = ("127.0.0.1", echo.server_address[1])
    with LinkEmulator(target, shape=LinkShape(rate_bps=None, delay_s=0.02)) as link:
        rtt = statistics.median(_ping_rtts(link.port, 15))
        assert 0.040 <= rtt <= 0.040 * 1.25 + 0.002, rtt
        link.set_shape(up=LinkShape(delay_s=0.03), down=LinkShape(delay_s=0.01))
        rtt = statistics.median(_ping_rtts(link.port, 15))
        assert 0.040 <= rtt <= 0.040 * 1.25 + 0.002, rtt
        link.set_shape(up=LinkShape(), down=LinkShape(delay_s=0.005))
        rtt = statistics.median(_ping_rtts(link.port, 15))
        assert 0.005 <= rtt <= 0.005 * 1.25 + 0.002, rtt
    print(f"median RTT {rtt * 1e3:.2f} ms")


def test_jitter_spreads_delay_and_keeps_order(echo):
    shape = LinkShape(delay_s=0.02, jitter_s=0.005)
    target = ("127.0.0.1", echo.server_address[1])
    with LinkEmulator(target, shape=shape, seed=1) as link:
        rtts = _ping_rtts(link.port, 30)
        # two uniform +-5 ms draws: RTT in [30, 50] ms (+ loopback), clearly spread out
        assert 0.030 <= min(rtts) and max(rtts) <= 0.070, rtts  # loose above: a busy machine
        assert max(rtts) - min(rtts) >= 0.006, rtts
        assert statistics.pstdev(rtts) >= 0.002, rtts
        # a stream of numbered messages, written one by one, comes back whole and in order
        sent = b"".join(struct.pack("!I", i) for i in range(20_000))
        with _connect(link.port) as sock:
            for i in range(0, len(sent), 400):
                sock.sendall(sent[i:i + 400])
            sock.shutdown(socket.SHUT_WR)  # the EOF must follow the bytes, both ways
            got = bytearray()
            while data := sock.recv(65536):
                got += data
        assert bytes(got) == sent


# ---- cut-offs and live changes ------------------------------------------------------------------

def _is_dead(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"x")
        return sock.recv(1) == b""
    except (ConnectionError, OSError):
        return True


def _wait_for(condition, timeout: float = 5.0) -> None:
    """The proxy updates its counters on its own loop, a moment after the effect a test sees."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the proxy's stats never got there"
        time.sleep(0.01)


def test_drop_resets_and_refuses_until_restore(echo):
    with LinkEmulator(("127.0.0.1", echo.server_address[1])) as link:
        old = _connect(link.port)
        old.sendall(b"hi")
        assert _recv_exactly(old, 2) == b"hi"
        link.drop()
        assert _is_dead(old)
        try:
            refused = _connect(link.port)
        except ConnectionError:
            pass  # the reset can beat connect() home: a timeout socket connects non-blocking
        else:
            with refused:
                assert _is_dead(refused)
        _wait_for(lambda: link.stats.refused >= 1)  # counted just after the reset is sent
        link.restore()
        with _connect(link.port) as fresh:
            fresh.sendall(b"back")
            assert _recv_exactly(fresh, 4) == b"back"
        old.close()


def test_blackhole_holds_bytes_until_restore(echo):
    with LinkEmulator(("127.0.0.1", echo.server_address[1])) as link:
        with _connect(link.port) as sock:
            sock.sendall(b"one")
            assert _recv_exactly(sock, 3) == b"one"
            before = link.stats
            link.blackhole()
            sock.sendall(b"two")
            sock.settimeout(0.3)  # proving absence needs some wait; nothing else depends on it
            with pytest.raises(socket.timeout):
                sock.recv(3)
            assert link.stats.up_bytes == before.up_bytes
            sock.settimeout(TIMEOUT)
            link.restore()
            assert _recv_exactly(sock, 3) == b"two"
            assert link.stats.active == 1


def test_set_shape_changes_rate_of_open_connection(sink):
    slow, fast = LinkShape(rate_bps=8e6), LinkShape(rate_bps=40e6)
    with LinkEmulator(("127.0.0.1", sink.server_address[1]), shape=slow) as link:
        with _connect(link.port) as sock:
            t_slow = _send_timed(sock, sink, 300_000)
            link.set_shape(fast)
            t_fast = _send_timed(sock, sink, 1_500_000)
    assert abs(t_slow - _expected(300_000, slow)) <= 0.1 * _expected(300_000, slow), t_slow
    assert abs(t_fast - _expected(1_500_000, fast)) <= 0.1 * _expected(1_500_000, fast), t_fast


# ---- parsing and the CLI ------------------------------------------------------------------------

def test_netem_reads_rates_and_durations_like_the_link_model():
    # one parser for the whole project (splitinfer.core.link); bare numbers are ambiguous: refused
    assert parse_rate("20mbit") == 20e6 and parse_duration("20ms") == pytest.approx(0.02)
    for bad in ("20mbps", "fast", "", "-3mbit", "1000"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)
    with pytest.raises(ValueError, match="us, ms, s"):
        parse_duration("20 min")


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "splitinfer", "netem", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_bad_rate_exits_2():
    proc = _cli("--target", ":50051", "--rate", "20 furlongs")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "splitinfer netem: error" in err and "cannot read rate '20 furlongs'" in err


def test_cli_forwards_until_sigterm(echo):
    proc = _cli("--listen", ":0", "--target", f":{echo.server_address[1]}", "--rate", "20mbit",
                "--delay", "5ms", "--jitter", "1ms")
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=60), "netem printed no listening line"
        line = proc.stdout.readline()
        assert "listening on" in line, line
        port = int(line.split(" -> ")[0].rpartition(":")[2])
        with _connect(port) as sock:
            sock.sendall(b"through the cli")
            assert _recv_exactly(sock, 15) == b"through the cli"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "15 bytes up" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
