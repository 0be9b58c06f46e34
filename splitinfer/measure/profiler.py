"""Measure what the planner needs on this machine: head latency per cut, bytes and codec times.

``profile_device(sm)`` times every graph node over a few runs of the whole model (one pass per
repeat instead of one per cut), scaled to the plain run time of the whole model (timing each
node has its own cost), and a cut's head latency is the median over runs of that run's time up
to the cut (not a sum of per-node medians, which would miss stalls); it encodes/decodes
every cut's real crossing tensors with every codec that can carry them (``Codec.applies_to``:
image codecs carry uint8 frames, so only cut 0 of an image bundle): bytes sent, encode and
decode time (sizes depend on the data: zstd on post-ReLU activations, JPEG on the frame), and
the error it causes in the model's OUTPUT (the cut's tail run on the decoded tensors against
the tail on the originals, :func:`splitinfer.core.compare.relative_error`, the max over the
batch; 0 without a tail run when every tensor travelled losslessly). Tail runs for the error
happen after a codec's timed runs, never inside them. Real inputs give real figures: pass
frames, not noise, as ``inputs``. Runs are
timed the way requests run: the model after idle (``COLD_IDLE_S``), one run at a time, and
so are what a request does first after a wait (decoding the answer; its head and encoding:
a cut's encoding is timed after idle and its head, as a request runs it). ``slowdown=K``
profiles an emulated device K times slower (:class:`splitinfer.measure.slowdown.SlowDevice`).
``profile_edge_locally(sm)`` measures tail latencies the same way, for offline planning, and
``edge_profile_from_info`` turns an edge node's ``GetModelInfo`` answer into an EdgeProfile.
Results are the frozen values of :mod:`splitinfer.core.profiles` (JSON with ``to_json``).
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from splitinfer.codec import IMAGE_CODECS, EncodedTensor, encoded_nbytes, get_codec, list_codecs
from splitinfer.core.compare import relative_error
from splitinfer.core.profiles import CodecCost, CutCost, DeviceProfile, EdgeProfile
from splitinfer.model.tensors import decode_torch
from splitinfer.wire import convert
from splitinfer.wire.v1 import inference_pb2

from .slowdown import SlowDevice

if TYPE_CHECKING:
    from splitinfer.model.split_model import SplitModel

__all__ = ["profile_device", "profile_edge_locally", "edge_profile_from_info",
           "DEFAULT_CODECS"]

#: the float codecs (with and without zstd; raw aside: fp32 is as big and always applies);
#: the opt-in ones (int4, int2, ecq: ``Codec.opt_in``) only when asked for: on bytes alone they
#: would always win, and their error needs a fidelity budget to be weighed against
_FLOAT_CODECS = tuple(c for c in list_codecs() if not c.startswith("raw")
                      and c not in IMAGE_CODECS and get_codec(c).applies_to("float32", (1, 8))
                      and not get_codec(c).opt_in)
#: the codecs a profile measures unless told otherwise: every float codec, and the image
#: codecs (measured only where a uint8 frame crosses: cut 0 of an image bundle)
DEFAULT_CODECS = _FLOAT_CODECS + tuple(IMAGE_CODECS)


#: idle before a timed call that, in a request, comes first after a wait (decoding the answer;
#: encoding the input at cut 0): after ~20 ms idle a short step took 10-20x its back-to-back
#: CPU time here (caches and clocks gone cold), a cost a request pays every time
COLD_IDLE_S = 0.02


def _timed(fn: Callable[[], Any], device: SlowDevice | None, cold: bool,
           before: Callable[[], Any] | None = None) -> float:
    """Wall time of one call of ``fn``: a step of ``device`` (an emulated slower device) when
    given, after ``COLD_IDLE_S`` of idle if ``cold``, right after an untimed ``before()``
    if given."""
    if cold:
        time.sleep(COLD_IDLE_S)
    if before is not None:
        before()
    start = time.perf_counter()
    if device is None:
        fn()
    else:
        device.run(fn)
    return time.perf_counter() - start


def _median_time(fn: Callable[[], Any], repeats: int, device: SlowDevice | None = None,
                 cold: bool = False, before: Callable[[], Any] | None = None
                 ) -> tuple[float, Any]:
    """Median of ``repeats`` ``_timed`` calls after a warm-up, and the warm-up's result."""
    result = fn() if device is None else device.run(fn)  # warm-up, and the value to return
    return statistics.median(_timed(fn, device, cold, before) for _ in range(repeats)), result


#: error of a codec's decoded tensors (the encodings and the decoded tensors, in order)
_ErrorOf = Callable[[Sequence[EncodedTensor], Sequence[torch.Tensor]], float]


def _codec_cost(name: str, tensors: Sequence[torch.Tensor], repeats: int,
                device: SlowDevice | None = None, cold_encode: bool = False,
                cold_decode: bool = False, before_encode: Callable[[], Any] | None = None,
                error_of: _ErrorOf | None = None) -> CodecCost:
    """Bytes, times and error of sending ``tensors`` with codec ``name``. ``encode_s`` is the
    codec plus building and serializing the message that carries its output, ``decode_s``
    parsing that message plus the codec's decode: the per-request work around the codec,
    which costs a slow device milliseconds, is the sender's and the receiver's too.
    ``cold_encode`` / ``cold_decode``: that side comes first after a wait in a request, so it
    is timed after ``COLD_IDLE_S`` of idle. ``before_encode``: what a request runs right before
    encoding (the head), run untimed after the idle and before each timed encode: back to
    back, the same encode took 0.3-0.5 ms less CPU here than after idle and its head (0.24
    against 0.60 ms at MobileNetV3-Small's cut 6), milliseconds on a slow device.
    ``error_of``: the error, computed after both timings (0 when None)."""
    codec = get_codec(name)
    names = [f"t{i}" for i in range(len(tensors))]

    def encode() -> tuple[list[Any], bytes]:
        encoded = [codec.encode(t, name=n) for t, n in zip(tensors, names)]
        return encoded, _message(encoded).SerializeToString()

    def decode() -> list[torch.Tensor]:
        msg = inference_pb2.InferResponse.FromString(wire)
        return [decode_torch(e) for e in convert.parse_infer_response(msg).outputs]

    encode_s, (encoded, wire) = _median_time(encode, repeats, device, cold_encode,
                                             before_encode)
    decode_s, decoded = _median_time(decode, repeats, device, cold_decode)
    error = 0.0 if error_of is None else error_of(encoded, decoded)
    return CodecCost(codec=name, request_bytes=sum(encoded_nbytes(e) for e in encoded),
                     encode_s=encode_s, decode_s=decode_s, error=error)


def _lossless(encoded: Sequence[EncodedTensor]) -> bool:
    """True when every tensor travelled bit-exact: raw, or fp32 of a float32 tensor."""
    return all(e.codec.startswith("raw")
               or (e.codec.split("+")[0] == "fp32" and e.dtype == "float32") for e in encoded)


def _as_tuple(outputs: Any) -> tuple[Any, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _output_error(make_tail: Callable[[], Callable[..., Any]],
                  crossing: Sequence[torch.Tensor]) -> _ErrorOf:
    """The error a codec causes in the model's output: the cut's tail (``make_tail()``) run on
    the decoded tensors against the tail on the originals (``crossing``); the largest
    per-sample relative L2 error over the outputs. The tail is built and the reference run on
    first need: when every codec is lossless there is no tail run at all."""
    made: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def error_of(encoded: Sequence[EncodedTensor], decoded: Sequence[torch.Tensor]) -> float:
        if _lossless(encoded):
            return 0.0
        with torch.no_grad():
            if not made:
                tail = make_tail()
                made.append((tail, _as_tuple(tail(*crossing))))
            tail, reference = made[0]
            outputs = _as_tuple(tail(*decoded))
        return max((float(relative_error(r, o).max(initial=0.0))
                    for r, o in zip(reference, outputs)), default=0.0)
    return error_of


def _cut_costs(sm: SplitModel, cut_id: int, inputs: Sequence[torch.Tensor],
               crossing: Sequence[torch.Tensor], codecs: Sequence[str], repeats: int,
               device: SlowDevice | None) -> tuple[CodecCost, ...]:
    """Every codec in ``codecs`` that fits ``crossing``, measured at ``cut_id`` as a request
    runs it (after idle and its head), with its output error."""
    fitting = [name for name in codecs if get_codec(name).carries(crossing)]
    if not fitting:
        return ()
    head = sm.head(cut_id)
    # a tail kept for this cut only (cache=False): every cut's tail at once would add up
    error_of = _output_error(lambda: sm.tail(cut_id, cache=False), crossing)
    return tuple(_codec_cost(name, crossing, repeats, device, cold_encode=True,
                             before_encode=None if cut_id == 0 else lambda: head(*inputs),
                             error_of=error_of)
                 for name in fitting)


def _message(encoded: Sequence[EncodedTensor]) -> inference_pb2.InferResponse:
    """A message as big as a request carrying ``encoded`` (an InferResponse: the same repeated
    tensors, without a request's checks on names that do not matter here)."""
    return convert.build_infer_response(request_id="0" * 32, outputs=encoded)


def _node_runs(sm: SplitModel, inputs: Sequence[torch.Tensor], repeats: int,
               device: SlowDevice | None) -> list[list[float]]:
    """Per-node CPU times of ``repeats`` runs of the whole model (the split between nodes).

    Each run comes after idle (and is one step of the emulated device, if any), as a request
    does: the cold start then lands on the first nodes and a cold read of the last layers'
    weights on those; back-to-back warm runs would spread both over every node."""
    clock = time.process_time if device is None else time.thread_time
    sm.segment_time_runs(inputs, 1, clock=clock)  # warm-up

    def one() -> list[float]:
        run: list[float] = sm.segment_time_runs(inputs, 1, clock=clock, warmup=False)[0]
        return run

    runs = []
    for _ in range(repeats):
        time.sleep(COLD_IDLE_S)
        runs.append(one() if device is None else device.run(one))
    return runs


def _plain_run(sm: SplitModel, inputs: Sequence[torch.Tensor], device: SlowDevice | None) -> float:
    """Wall time of one un-instrumented run of the whole model, after idle."""
    return _timed(lambda: sm(*inputs), device, cold=True)


def _scaled(runs: list[list[float]], plains: Sequence[float]) -> list[list[float]]:
    """``runs`` scaled so a run sums to the median plain (un-instrumented) wall time. The
    split between nodes is CPU time, the total is wall time as the device will run it. Why:
    timing every node costs Python work that a throttled device (a CPU quota) stretches with
    everything else (wall-clock per-node sums were ~40 % high), and a throttled thread's
    stalls land on whichever node is running when its budget runs out, which piled whole
    stalls onto a few cuts' heads."""
    timed = statistics.median(sum(run) for run in runs)
    if timed <= 0:
        return runs
    scale = statistics.median(plains) / timed  # wall over CPU: ~1 on an idle core
    return [[t * scale for t in run] for run in runs]


def _calibrated_runs(sm: SplitModel, inputs: Sequence[torch.Tensor], repeats: int
                     ) -> list[list[float]]:
    """Per-node times of ``repeats`` runs scaled to the plain wall time (see ``_scaled``)."""
    with torch.no_grad():
        runs = _node_runs(sm, inputs, repeats, None)
        sm(*inputs)  # warm-up
        return _scaled(runs, [_plain_run(sm, inputs, None) for _ in range(repeats)])


def _median_prefix(runs: Sequence[Sequence[float]], end: int) -> float:
    """Median over runs of the time of nodes [0, end): a head's latency as one run sees it."""
    return float(statistics.median(sum(run[:end]) for run in runs))


def _head_memory(sm: SplitModel, cut_id: int, crossing: Sequence[torch.Tensor]) -> int:
    """Weights the head reads plus what it sends: a floor on the device memory it needs."""
    head = sm.head(cut_id)
    weights = sum(b.numel() * b.element_size() for b in head.buffers())
    return int(weights + sum(t.numel() * t.element_size() for t in crossing))


def profile_device(sm: SplitModel, inputs: Sequence[torch.Tensor] | None = None, *,
                   codecs: Sequence[str] = DEFAULT_CODECS, repeats: int = 5,
                   cut_ids: Sequence[int] | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   slowdown: float = 1.0) -> DeviceProfile:
    """Profile ``sm`` (a SplitModel) on this machine with ``inputs`` (default: its examples).

    ``codecs``: measured at each cut where they can carry every crossing tensor (a codec that
    fits no cut is absent from the profile); their ``error`` is the model's output error.

    ``cut_ids`` limits the cuts measured (the first and last cut are always included).
    ``slowdown`` > 1 profiles an emulated device that many times slower than this thread
    (:class:`splitinfer.measure.slowdown.SlowDevice`: each timed run idles ``slowdown − 1`` times the
    CPU time it used), the device a benchmark emulates with the same ``SlowDevice``.
    ``progress(done, total)`` is called after each profiled cut (the CLI draws a bar with it).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = SlowDevice(slowdown) if slowdown != 1 else None
    for name in codecs:
        get_codec(name)  # unknown names fail before any measuring
    inputs = tuple(inputs) if inputs is not None else tuple(t[:1] for t in sm.example_inputs)
    last = len(sm.cuts) - 1
    ids = sorted({0, last, *(cut_ids if cut_ids is not None else range(len(sm.cuts)))})
    # the plain runs that set the total are spread over the whole profiling, between cuts:
    # a slow spell of a shared machine (a second or more) then moves their median little
    n_plain = max(repeats, min(len(ids), 3 * repeats))
    plain_after = {int(i) for i in np.linspace(0, len(ids) - 1, min(n_plain, len(ids)))}
    measured = []
    plains: list[float] = []
    with torch.no_grad():
        runs = _node_runs(sm, inputs, repeats, device)
        sm(*inputs)  # warm-up
        for done, cut_id in enumerate(ids, 1):
            cut = sm.cut(cut_id)
            crossing = sm.head(cut_id)(*inputs)
            costs = () if cut_id == last else \
                _cut_costs(sm, cut_id, inputs, crossing, codecs, repeats, device)
            measured.append((cut, costs, _head_memory(sm, cut_id, crossing)))
            if done - 1 in plain_after:
                plains.append(_plain_run(sm, inputs, device))
            if progress is not None:
                progress(done, len(ids))
        plains += [_plain_run(sm, inputs, device) for _ in range(n_plain - len(plains))]
        runs = _scaled(runs, plains)
        cuts = [CutCost(cut_id=cut.id, name=cut.name,
                        head_s=_median_prefix(runs, sm.cut_position(cut.id) + 1),
                        head_flops=float(sm.head_flops(cut.id)), head_memory_bytes=memory,
                        head_nodes=cut.head_nodes, codecs=costs)
                for cut, costs, memory in measured]
        outputs = sm.tail(last)(*sm.head(last)(*inputs))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        response = _codec_cost("fp32", outputs, repeats, device, cold_decode=True)
    return DeviceProfile(model=sm.name, fingerprint=sm.fingerprint,
                         threads=torch.get_num_threads(), cuts=tuple(cuts),
                         response_bytes=response.request_bytes,
                         response_decode_s=response.decode_s)


def profile_edge_locally(sm: SplitModel, inputs: Sequence[torch.Tensor] | None = None, *,
                         repeats: int = 5, speedup: float = 1.0) -> EdgeProfile:
    """Tail latency of every cut measured here, divided by ``speedup`` (an edge that is
    ``speedup`` times faster than this machine), for what-if planning without an edge node."""
    if speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    inputs = tuple(inputs) if inputs is not None else tuple(t[:1] for t in sm.example_inputs)
    runs = _calibrated_runs(sm, inputs, repeats)
    tail_s = {c.id: float(statistics.median(sum(run[sm.cut_position(c.id) + 1:])
                                            for run in runs)) / speedup for c in sm.cuts}
    return EdgeProfile(model=sm.name, fingerprint=sm.fingerprint, tail_s=tail_s)


def edge_profile_from_info(info: convert.ModelInfo) -> EdgeProfile:
    """An EdgeProfile from a ``splitinfer.wire.convert.ModelInfo`` (the edge's GetModelInfo)."""
    return EdgeProfile.from_model_info(info)
