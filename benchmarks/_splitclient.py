"""A benchmark's split-inference device: run a head here, send its tensors to an edge, time it.

Timings are what a device user would see: head compute, encoding, the ``Infer`` round trip
(through whatever sits between, e.g. a link emulator) and decoding the answer, end to end with
``perf_counter``. Link measurement uses ``Probe`` (a bare gRPC echo) and ``fit_link``.
With ``device=SlowDevice(k)`` the device's own work (head, encoding and building the request;
parsing and decoding the answer) runs as steps of that emulated slower device; the wait for
the answer does not.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import grpc
import torch

from device_client.link_probe import measure_link
from splitinfer.codec import decode_torch, get_codec
from splitinfer.link import Link
from splitinfer.slowdown import SlowDevice
from splitinfer.wire import convert
from splitinfer.wire.v1 import model_pb2, service_pb2_grpc

_MAX_MESSAGE = 64 << 20  # the edge node's default --max-message-bytes
_TIMEOUT_S = 300.0       # a 1.6 MB request at 1 Mbit/s takes ~13 s; leave room


@dataclass(frozen=True)
class Timing:
    """Seconds of one configuration: every repeat after the warm-up, and their median."""

    cut_id: int
    codec: str | None
    samples: tuple[float, ...]
    request_bytes: int
    device_samples: tuple[float, ...] = ()  # the device's own part of each sample (its steps)
    edge_samples: tuple[float, ...] = ()    # the edge's tail compute in each (its StageTiming)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def device_median_s(self) -> float:
        return statistics.median(self.device_samples)

    @property
    def edge_median_s(self) -> float | None:
        return statistics.median(self.edge_samples) if self.edge_samples else None


class SplitClient:
    """One gRPC channel to ``address`` (the edge, or a proxy in front of it) and one model."""

    def __init__(self, address: str, sm: Any, version: str, inputs: Sequence[torch.Tensor],
                 device: SlowDevice | None = None) -> None:
        self.sm, self.version, self.inputs = sm, version, tuple(inputs)
        self.device = device or SlowDevice(1)
        self.last_cut = len(sm.cuts) - 1
        self.device_s = 0.0  # wall seconds of the device's own steps in the last run
        self.edge_s: float | None = None  # the edge's tail compute in it (None: not sent)
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE)])
        self._stub = service_pb2_grpc.EdgeInferenceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SplitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def model_info(self) -> convert.ModelInfo:
        reply = self._stub.GetModelInfo(model_pb2.ModelInfoRequest(
            model=self.sm.name, version=self.version), timeout=30)
        info = convert.parse_model_info(reply)
        if info.fingerprint != self.sm.fingerprint:
            raise RuntimeError(f"the edge serves {info.model} with fingerprint "
                               f"{info.fingerprint[:16]}…, this bundle has "
                               f"{self.sm.fingerprint[:16]}…: re-export and restart the edge")
        return info

    def probe_link(self, sizes: Sequence[int], rounds: int) -> tuple[Link, list[tuple[int, float]]]:
        """Fit the link from ``rounds`` Probe echoes of every size (server time taken out)."""
        return measure_link(self._stub, sizes, rounds, timeout=_TIMEOUT_S)

    def timed(self, cut_id: int, codec: str | None) -> float:
        """Seconds of one end-to-end run (see ``once``)."""
        start = time.perf_counter()
        self.once(cut_id, codec)
        return time.perf_counter() - start

    def once(self, cut_id: int, codec: str | None) -> int:
        """One run: the bytes of the request sent (0 when ``codec`` is None or ``cut_id`` is
        the last cut: the whole model runs here, no network). ``device_s`` is then the wall
        time of its device steps (head + encode + request; answer's parse + decode) and
        ``edge_s`` the tail compute time the edge reported."""
        self.device_s, self.edge_s = 0.0, None
        if codec is None or cut_id == self.last_cut:
            return self._run_local()
        return self._run_split(cut_id, codec)

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        start = time.perf_counter()
        with self.device.step():
            yield
        self.device_s += time.perf_counter() - start

    def _run_local(self) -> int:
        with self._step(), torch.no_grad():
            self.sm.tail(self.last_cut)(*self.sm.head(self.last_cut)(*self.inputs))
        return 0

    def _run_split(self, cut_id: int, codec_name: str) -> int:
        codec = get_codec(codec_name)
        cut = self.sm.cut(cut_id)
        with self._step():
            with torch.no_grad():
                crossing = self.sm.head(cut_id)(*self.inputs)
            encoded = [codec.encode(t, name=spec.name) for t, spec in zip(crossing, cut.tensors)]
            req = convert.build_infer_request(
                model=self.sm.name, version=self.version, fingerprint=self.sm.fingerprint,
                cut_id=cut_id, tensors=encoded, request_id=uuid.uuid4().hex)
        reply = self._stub.Infer(req, timeout=_TIMEOUT_S)
        with self._step():
            result = convert.parse_infer_response(reply)
            if result.timing is not None:
                self.edge_s = result.timing.compute_s
            if result.error is None:
                for out in result.outputs:
                    decode_torch(out)
        if result.error is not None:
            raise RuntimeError(f"Infer at cut {cut_id} with {codec_name} failed: "
                               f"{result.error.code} {result.error.message}")
        return req.ByteSize()
