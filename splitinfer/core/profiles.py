"""Measured costs the planner decides from: per-cut device costs, per-codec sizes, edge costs.

Frozen values with a JSON form (``to_json()`` gives plain dicts, ``from_json()`` reads them back);
the profiler fills them, files are the caller's business. Every time is in seconds, every size in
bytes, and all are checked to be finite and >= 0 on construction, so the planner can trust them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping, Protocol

__all__ = ["CodecCost", "CutCost", "DeviceProfile", "EdgeProfile", "ModelInfoLike"]


class ModelInfoLike(Protocol):
    """What an edge's GetModelInfo answer tells a profile (``splitinfer.wire.convert.ModelInfo``
    has it; the core names the shape only, so it needs no protobuf)."""

    @property
    def model(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def tail_latency_s(self) -> Mapping[int, float]: ...
    @property
    def queue_delay_s(self) -> float: ...


def _check(owner: object, *names: str) -> None:
    """Coerce the named fields to float and refuse negatives, NaN and infinity."""
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"{type(owner).__name__}.{name} is {value!r}; expected a finite "
                             f"number >= 0")
        object.__setattr__(owner, name, float(value))


def _check_factor(where: str, factor: object) -> None:
    """A speed factor (``scaled``): a finite number > 0."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) \
            or not 0 < factor < math.inf:
        raise ValueError(f"{where}: factor is {factor!r}; expected a number > 0")


def _check_int(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{type(owner).__name__}.{name} is {value!r}; expected an int >= 0")


@dataclass(frozen=True)
class CodecCost:
    """What sending one cut's tensors with one codec costs.

    ``encode_s`` runs on the device, ``decode_s`` on the edge. ``error`` is how far the model's
    answer moves when this cut's tensors travel through this codec, measured: the relative L2
    error of the outputs against the unsplit model's on the same input (the profiler measures
    it on its inputs; ``splitinfer fidelity`` over a dataset, see ``DeviceProfile.error_source``);
    0 for lossless codecs. ``agreement``: the fraction of inputs whose top-1 class stayed the
    unsplit model's, when a fidelity run measured it (None: not measured). ``accuracy_drop``:
    the unsplit model's top-1 accuracy minus the split's on a fidelity run's labels, as a
    fraction (0.005: half a point; negative: the split scored higher; None: not measured).
    """

    codec: str
    request_bytes: int
    encode_s: float
    decode_s: float
    error: float = 0.0
    agreement: float | None = None
    accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.codec, str) or not self.codec:
            raise ValueError(f"CodecCost.codec is {self.codec!r}; expected a codec name")
        _check_int(self, "request_bytes")
        _check(self, "encode_s", "decode_s", "error")
        if self.agreement is not None:
            value = self.agreement
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= 1:
                raise ValueError(f"CodecCost.agreement is {value!r}; expected None or a "
                                 f"fraction in [0, 1]")
            object.__setattr__(self, "agreement", float(value))
        if self.accuracy_drop is not None:
            value = self.accuracy_drop
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not -1 <= value <= 1:
                raise ValueError(f"CodecCost.accuracy_drop is {value!r}; expected None or a "
                                 f"fraction in [-1, 1] (0.005: half a point)")
            object.__setattr__(self, "accuracy_drop", float(value))

    def to_json(self) -> dict[str, Any]:
        return {"codec": self.codec, "request_bytes": self.request_bytes,
                "encode_s": self.encode_s, "decode_s": self.decode_s, "error": self.error,
                "agreement": self.agreement, "accuracy_drop": self.accuracy_drop}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "CodecCost":
        agreement, drop = obj.get("agreement"), obj.get("accuracy_drop")
        return cls(codec=str(obj["codec"]), request_bytes=int(obj["request_bytes"]),
                   encode_s=float(obj["encode_s"]), decode_s=float(obj["decode_s"]),
                   error=float(obj.get("error", 0.0)),
                   agreement=None if agreement is None else float(agreement),
                   accuracy_drop=None if drop is None else float(drop))


@dataclass(frozen=True)
class CutCost:
    """Device-side cost of one cut: time, FLOPs and memory from the input up to it."""

    cut_id: int
    name: str
    head_s: float
    head_flops: float
    head_memory_bytes: int
    head_nodes: int
    codecs: tuple[CodecCost, ...]

    def __post_init__(self) -> None:
        _check_int(self, "cut_id", "head_memory_bytes", "head_nodes")
        _check(self, "head_s", "head_flops")
        object.__setattr__(self, "codecs", tuple(self.codecs))
        names = [c.codec for c in self.codecs]
        if len(set(names)) != len(names):
            raise ValueError(f"CutCost {self.cut_id} ({self.name!r}) lists a codec twice: {names}")

    def to_json(self) -> dict[str, Any]:
        return {"cut_id": self.cut_id, "name": self.name, "head_s": self.head_s,
                "head_flops": self.head_flops, "head_memory_bytes": self.head_memory_bytes,
                "head_nodes": self.head_nodes, "codecs": [c.to_json() for c in self.codecs]}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "CutCost":
        return cls(cut_id=int(obj["cut_id"]), name=str(obj["name"]), head_s=float(obj["head_s"]),
                   head_flops=float(obj["head_flops"]),
                   head_memory_bytes=int(obj["head_memory_bytes"]),
                   head_nodes=int(obj["head_nodes"]),
                   codecs=tuple(CodecCost.from_json(c) for c in obj["codecs"]))


@dataclass(frozen=True)
class DeviceProfile:
    """The device's costs for every cut of one model, ordered by cut id.

    ``cuts[0]`` sends the model input (edge-only); ``cuts[-1]`` runs the whole model on the
    device (device-only): its tail is empty, nothing is sent and its codecs are ignored.
    """

    model: str
    fingerprint: str
    threads: int
    cuts: tuple[CutCost, ...]
    response_bytes: int
    response_decode_s: float = 0.0
    #: where the codecs' ``error`` / ``agreement`` come from, in words (e.g. "splitinfer
    #: fidelity: 18 inputs from frames/"); empty: the profiler's own inputs
    error_source: str = ""

    def __post_init__(self) -> None:
        _check_int(self, "threads", "response_bytes")
        if not isinstance(self.error_source, str):
            raise ValueError(f"DeviceProfile.error_source is {self.error_source!r}; expected text")
        _check(self, "response_decode_s")
        object.__setattr__(self, "cuts", tuple(self.cuts))
        ids = [c.cut_id for c in self.cuts]
        if len(ids) < 2 or any(a >= b for a, b in zip(ids, ids[1:])):
            raise ValueError(f"DeviceProfile {self.model!r}: cut ids {ids}; expected at least two "
                             f"cuts (edge-only first, device-only last) in increasing id order")

    def scaled(self, factor: float) -> "DeviceProfile":
        """The same device ``factor`` times slower (> 1) or faster (< 1): every time it spends
        (heads, encoding, decoding) times ``factor``; bytes, FLOPs and errors unchanged. For a
        device whose speed moved since it was profiled (a thermal limit, another load): time
        the whole model again and scale by new / profiled."""
        _check_factor("DeviceProfile.scaled", factor)
        cuts = tuple(replace(c, head_s=c.head_s * factor, codecs=tuple(
            replace(k, encode_s=k.encode_s * factor, decode_s=k.decode_s * factor)
            for k in c.codecs)) for c in self.cuts)
        return replace(self, cuts=cuts, response_decode_s=self.response_decode_s * factor)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "fingerprint": self.fingerprint, "threads": self.threads,
                "cuts": [c.to_json() for c in self.cuts], "response_bytes": self.response_bytes,
                "response_decode_s": self.response_decode_s, "error_source": self.error_source}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "DeviceProfile":
        return cls(model=str(obj["model"]), fingerprint=str(obj["fingerprint"]),
                   threads=int(obj["threads"]),
                   cuts=tuple(CutCost.from_json(c) for c in obj["cuts"]),
                   response_bytes=int(obj["response_bytes"]),
                   response_decode_s=float(obj.get("response_decode_s", 0.0)),
                   error_source=str(obj.get("error_source", "")))


@dataclass(frozen=True)
class EdgeProfile:
    """The edge node's costs for one model.

    ``tail_s[cut_id]`` is the time of the tail after that cut; a cut without an entry cannot be
    served. ``decode_s_per_mb`` is the edge's per-megabyte request overhead (receive, parse) on
    top of the codec's own decode time; ``queue_s`` is the expected wait before compute.
    """

    model: str
    fingerprint: str
    tail_s: Mapping[int, float]
    queue_s: float = 0.0
    decode_s_per_mb: float = 0.0
    response_encode_s: float = 0.0

    def __post_init__(self) -> None:
        _check(self, "queue_s", "decode_s_per_mb", "response_encode_s")
        tails: dict[int, float] = {}
        for key, value in dict(self.tail_s).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"EdgeProfile.tail_s[{key!r}] is {value!r}; expected a finite "
                                 f"number of seconds >= 0")
            tails[int(key)] = float(value)
        # read-only view: the dataclass is frozen, its mapping should be too
        object.__setattr__(self, "tail_s", MappingProxyType(dict(sorted(tails.items()))))

    def __hash__(self) -> int:
        return hash((self.model, self.fingerprint, tuple(self.tail_s.items()), self.queue_s,
                     self.decode_s_per_mb, self.response_encode_s))

    def scaled(self, factor: float) -> "EdgeProfile":
        """The same edge ``factor`` times slower (> 1) or faster (< 1): its tails and its
        answer's encoding times ``factor``; the queue (load, not speed) and the per-MB
        overhead unchanged. For an edge whose tails now run slower or faster than when it
        profiled them (compare its answers' ``compute_s`` with ``tail_s``)."""
        _check_factor("EdgeProfile.scaled", factor)
        return replace(self, tail_s={k: v * factor for k, v in self.tail_s.items()},
                       response_encode_s=self.response_encode_s * factor)

    def to_json(self) -> dict[str, Any]:
        # JSON object keys are strings; from_json turns them back into cut ids
        return {"model": self.model, "fingerprint": self.fingerprint,
                "tail_s": {str(k): v for k, v in self.tail_s.items()}, "queue_s": self.queue_s,
                "decode_s_per_mb": self.decode_s_per_mb,
                "response_encode_s": self.response_encode_s}

    @classmethod
    def from_model_info(cls, info: ModelInfoLike) -> "EdgeProfile":
        """From an edge node's GetModelInfo answer (``splitinfer.wire.convert.ModelInfo``):
        its measured tail time per cut and current queue delay."""
        return cls(model=info.model, fingerprint=info.fingerprint,
                   tail_s=dict(info.tail_latency_s), queue_s=info.queue_delay_s)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "EdgeProfile":
        return cls(model=str(obj["model"]), fingerprint=str(obj["fingerprint"]),
                   tail_s={int(k): float(v) for k, v in obj["tail_s"].items()},
                   queue_s=float(obj.get("queue_s", 0.0)),
                   decode_s_per_mb=float(obj.get("decode_s_per_mb", 0.0)),
                   response_encode_s=float(obj.get("response_encode_s", 0.0)))
