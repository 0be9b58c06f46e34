"""A fake edge node for the client's unit tests: the ``Edge`` seam's methods, no network.

It runs tails with a local ``SplitModel`` (so its answers are the model's), reports a link of
its own through ``probe`` (so tests move "the network" by assignment), and misbehaves on cue:
``errors`` is a queue of status codes the next ``infer`` calls raise, ``always`` a code every
call raises, ``hang`` makes calls wait out their timeout, ``info_error`` refuses GetModelInfo,
``garbled`` answers with payloads that do not decode. The code ``"DRAINING"`` stands for a
draining replica's refusal (UNAVAILABLE with ``ShuttingDown.PREFIX``, as the edge node sends it).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter, deque
from typing import Any

from splitinfer.codec import get_codec, list_codecs
from splitinfer.core.errors import ServingError, ShuttingDown
from splitinfer.core.link import Link
from splitinfer.core.timing import StageTiming
from splitinfer.model.split_model import SplitModel
from splitinfer.model.tensors import decode_torch
from splitinfer.transport import error_for, status_code
from splitinfer.wire import convert
from splitinfer.wire.v1 import inference_pb2


class FakeEdge:
    """An ``Edge`` serving ``sm`` (as version ``version``) over a link of its own."""

    def __init__(self, address: str, sm: SplitModel, *, version: str = "1",
                 link: Link = Link(rtt_s=0.005, bandwidth_bps=100e6),
                 tail_s: dict[int, float] | None = None, fingerprint: str | None = None,
                 ) -> None:
        self.address = address
        self.sm, self.version, self.link = sm, version, link
        self.fingerprint = fingerprint or sm.fingerprint
        n = len(sm.cuts)
        # the tail after cut i: the rest of a 10 ms model (the edge is fast)
        self.tail_s = tail_s if tail_s is not None else {c.id: 0.01 * (n - 1 - c.id) / (n - 1)
                                                         for c in sm.cuts}
        self.errors: deque[str] = deque()
        self.always: str | None = None
        self.hang = False
        self.info_error: str | None = None
        self.stream_fails_after: int | None = None   # answers before a stream breaks
        self.garbled = 0          # how many of the next answers carry a truncated payload
        self.calls: Counter[str] = Counter()
        self.cuts_seen: list[int] = []
        self.closed = False

    # -- the Edge methods ---------------------------------------------------------------------
    async def infer(self, request: inference_pb2.InferRequest, timeout: float
                    ) -> inference_pb2.InferResponse:
        self.calls["infer"] += 1
        await self._misbehave(timeout)
        return self.answer(request)

    def infer_stream(self) -> FakeStream:
        self.calls["infer_stream"] += 1
        return FakeStream(self)

    async def model_info(self, model: str, version: str, timeout: float) -> convert.ModelInfo:
        self.calls["model_info"] += 1
        if self.info_error:
            raise error_for(self.info_error, f"fake {self.info_error}")
        if model != self.sm.name:
            raise error_for("NOT_FOUND", f"unknown model {model!r}")
        sm = self.sm
        return convert.ModelInfo(
            model=sm.name, version=self.version, fingerprint=self.fingerprint,
            cuts=tuple(sm.cuts), inputs=tuple(sm.input_specs), outputs=tuple(sm.output_specs),
            versions=(self.version,), tail_latency_s=dict(self.tail_s), queue_delay_s=0.0,
            codecs=tuple(list_codecs()))

    async def probe(self, size: int, timeout: float) -> float:
        self.calls["probe"] += 1
        if self.always:
            raise error_for(self.always, f"fake {self.always}")
        return self.link.rtt_s + size * 8 / self.link.bandwidth_bps

    async def close(self) -> None:
        self.closed = True

    # -- behaviour ----------------------------------------------------------------------------
    async def _misbehave(self, timeout: float) -> None:
        if self.hang:
            await asyncio.sleep(timeout)
            raise ServingError("fake: no answer before the deadline", code="DEADLINE_EXCEEDED")
        code = self.errors.popleft() if self.errors else self.always
        if code:
            raise error_for(*_status(code))

    def answer(self, request: inference_pb2.InferRequest) -> inference_pb2.InferResponse:
        """What a real edge answers: the tail of the request's cut, fp32."""
        call = convert.parse_infer_request(request)
        self.cuts_seen.append(call.cut_id)
        if call.fingerprint != self.fingerprint:
            raise error_for("FAILED_PRECONDITION", "fake: the head is from another model")
        tensors = [decode_torch(e) for e in call.tensors]
        out = self.sm.tail(call.cut_id)(*tensors)
        outs = out if isinstance(out, tuple) else (out,)
        codec = get_codec("fp32")
        encoded = [codec.encode(o, name=s.name) for o, s in zip(outs, self.sm.output_specs)]
        if self.garbled:
            self.garbled -= 1
            encoded = [dataclasses.replace(e, payload=e.payload[:-4]) for e in encoded]
        return convert.build_infer_response(
            request_id=call.request_id, outputs=encoded, version=self.version,
            timing=StageTiming(compute_s=self.tail_s.get(call.cut_id, 0.0)))


def _status(code: str) -> tuple[str, str]:
    """The status name and message a fake error ``code`` is answered with."""
    if code == "DRAINING":
        return "UNAVAILABLE", f"{ShuttingDown.PREFIX} (fake); retry on another node"
    return code, f"fake {code}"


class FakeStream:
    """``EdgeStream`` of a ``FakeEdge``: answers (or item errors) queued as requests arrive."""

    def __init__(self, edge: FakeEdge) -> None:
        self.edge = edge
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.answered = 0
        self.cancelled = False

    async def write(self, request: inference_pb2.InferRequest) -> None:
        if self.cancelled:
            raise ServingError("fake: stream cancelled", code="CANCELLED")
        fails = self.edge.stream_fails_after
        if fails is not None and self.answered >= fails:
            await self.replies.put(ServingError("fake: stream broke", code="UNAVAILABLE"))
            return
        self.answered += 1
        code = self.edge.errors.popleft() if self.edge.errors else self.edge.always
        if code:  # one bad item: an error answer, the stream goes on
            name, message = _status(code)
            await self.replies.put(convert.build_error_response(
                request_id=request.request_id, code=status_code(name).value[0],
                message=message))
            return
        await self.replies.put(self.edge.answer(request))

    async def read(self) -> inference_pb2.InferResponse | None:
        item = await self.replies.get()
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    async def done_writing(self) -> None:
        await self.replies.put(None)

    def cancel(self) -> None:
        self.cancelled = True
