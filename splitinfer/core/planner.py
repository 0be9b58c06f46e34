"""Choose where to cut a model and which codec to send with: a cost model and a search.

A pure function of frozen values: ``choose(device_profile, edge_profile, link, ...)`` scores every
(cut, codec) pair that the constraints allow and returns a ``Plan``, with the baselines a split
has to beat scored the same way: the whole model on the device, and the input sent to the edge
with each codec allowed at cut 0 (for a camera: the frame as a JPEG). No clocks, files or sockets:
the profiler measures, the link estimator watches the network, this module only does arithmetic,
so a plan is reproducible from its inputs and cheap enough to recompute whenever the link moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from .errors import PlanningError
from .link import Link
from .profiles import CodecCost, CutCost, DeviceProfile, EdgeProfile

__all__ = ["Breakdown", "Candidate", "Constraints", "Plan", "PowerModel", "OBJECTIVES", "choose",
           "baseline_label"]

# Objective values closer than this (relative) are a tie: measured costs are not that precise,
# and a stable choice beats one that flips on float noise.
_TIE_RTOL = 1e-12


@dataclass(frozen=True)
class Breakdown:
    """Predicted seconds of one request, stage by stage, in the order they happen."""

    head_s: float = 0.0             # device: input -> cut
    encode_s: float = 0.0           # device: encode the crossing tensors
    uplink_s: float = 0.0           # link: request bytes / bandwidth
    rtt_s: float = 0.0              # link: propagation, once per request
    queue_s: float = 0.0            # edge: wait before compute
    edge_decode_s: float = 0.0      # edge: codec decode (the device's / edge speedup) + per MB
    tail_s: float = 0.0             # edge: cut -> output
    response_encode_s: float = 0.0  # edge: encode the answer
    downlink_s: float = 0.0         # link: response bytes / bandwidth
    response_decode_s: float = 0.0  # device: decode the answer

    @property
    def total_s(self) -> float:
        """End-to-end latency: the plain sum of the stages (they run one after another)."""
        return float(sum(getattr(self, f.name) for f in fields(self)))

    @property
    def device_s(self) -> float:
        return self.head_s + self.encode_s + self.response_decode_s

    @property
    def edge_s(self) -> float:
        return self.queue_s + self.edge_decode_s + self.tail_s + self.response_encode_s

    def to_json(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Breakdown":
        return cls(**{f.name: float(obj[f.name]) for f in fields(cls)})


@dataclass(frozen=True)
class PowerModel:
    """Device power draw in watts per activity, for the ``device_energy`` objective."""

    compute_w: float = 2.0
    radio_tx_w: float = 1.0
    radio_rx_w: float = 0.5
    idle_w: float = 0.1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"PowerModel.{f.name} is {value!r}; expected watts >= 0")


@dataclass(frozen=True)
class Constraints:
    """What the plan must respect; every field's default allows everything."""

    #: privacy: cuts with a smaller id are not candidates (>= 1: the raw input never leaves)
    min_device_cut: int = 0
    #: cuts whose head needs more device memory than this are out
    device_memory_bytes: int | None = None
    #: codecs whose measured error is above this are out (device-only has error 0)
    max_codec_error: float | None = None
    allow_edge_only: bool = True
    allow_device_only: bool = True
    #: only these codecs are considered (None: all that were profiled)
    codecs: tuple[str, ...] | None = None
    #: codecs whose measured top-1 agreement (``splitinfer fidelity``) is below this are out,
    #: and so are codecs never measured for it (device-only always agrees)
    min_agreement: float | None = None
    #: the accuracy budget: codecs whose measured top-1 accuracy loss (``splitinfer fidelity``
    #: on labelled data; a fraction, 0.005 = half a point) is above this are out, and so are
    #: codecs never measured for it unless their measured output error is exactly 0 (the same
    #: answers: no loss); device-only loses nothing
    max_accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.codecs, str):
            raise ValueError(f"Constraints.codecs is {self.codecs!r}; expected a tuple of codec "
                             f"names, e.g. ({self.codecs!r},)")
        if self.codecs is not None:
            object.__setattr__(self, "codecs", tuple(self.codecs))
        for name in ("device_memory_bytes", "max_codec_error"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"Constraints.{name} is {value!r}; expected None or a value >= 0")
        value = self.min_agreement
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= 1):
            raise ValueError(f"Constraints.min_agreement is {value!r}; expected None or a "
                             f"fraction in [0, 1] (e.g. 0.99: 99 % of top-1 classes unchanged)")
        value = self.max_accuracy_drop
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= 1):
            raise ValueError(f"Constraints.max_accuracy_drop is {value!r}; expected None or a "
                             f"fraction in [0, 1] (e.g. 0.005: at most half a point of top-1 "
                             f"accuracy lost)")


@dataclass(frozen=True)
class Candidate:
    """One scored (cut, codec) pair; ``codec`` is None for device-only (nothing is sent).

    ``request_bytes``: what one request sends (0 for device-only)."""

    cut_id: int
    cut_name: str
    codec: str | None
    objective_value: float
    breakdown: Breakdown
    head_flops: float
    request_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"cut_id": self.cut_id, "cut_name": self.cut_name, "codec": self.codec,
                "objective_value": self.objective_value, "breakdown": self.breakdown.to_json(),
                "head_flops": self.head_flops, "request_bytes": self.request_bytes}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Candidate":
        return cls(cut_id=int(obj["cut_id"]), cut_name=str(obj["cut_name"]), codec=obj["codec"],
                   objective_value=float(obj["objective_value"]),
                   breakdown=Breakdown.from_json(obj["breakdown"]),
                   head_flops=float(obj["head_flops"]),
                   request_bytes=int(obj.get("request_bytes", 0)))


def baseline_label(candidate: Candidate) -> str:
    """A baseline's name: "device-only", or "edge-only <codec>" (e.g. "edge-only jpeg-q75")."""
    return "device-only" if candidate.codec is None else f"edge-only {candidate.codec}"


@dataclass(frozen=True)
class Plan:
    """The chosen cut and codec, why (breakdown, ranked alternatives), and the baselines.

    ``baselines``: device-only and edge-only with each codec allowed at cut 0, scored like the
    candidates, best first (device-only is there even when a constraint keeps it out of the
    candidates: it is what ``device_only_s`` reports). ``edge_only_s``: the lowest latency of
    the edge-only baselines (None: edge-only not allowed).
    """

    cut_id: int
    cut_name: str
    codec: str | None
    objective: str
    predicted_s: float
    breakdown: Breakdown
    alternatives: tuple[Candidate, ...]
    device_only_s: float
    edge_only_s: float | None
    link: Link
    notes: tuple[str, ...] = ()
    baselines: tuple[Candidate, ...] = ()

    @property
    def best_baseline(self) -> Candidate | None:
        """The best baseline for the objective (None for a plan made without baselines)."""
        return self.baselines[0] if self.baselines else None

    def speedup_over(self, baseline: Candidate) -> float:
        """How many times faster than ``baseline`` the chosen plan is predicted to answer."""
        total = baseline.breakdown.total_s
        return total / self.predicted_s if self.predicted_s > 0 else math.inf

    @property
    def speedup_vs_device_only(self) -> float:
        return self.device_only_s / self.predicted_s if self.predicted_s > 0 else math.inf

    @property
    def speedup_vs_edge_only(self) -> float | None:
        if self.edge_only_s is None:
            return None
        return self.edge_only_s / self.predicted_s if self.predicted_s > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        return {"cut_id": self.cut_id, "cut_name": self.cut_name, "codec": self.codec,
                "objective": self.objective, "predicted_s": self.predicted_s,
                "breakdown": self.breakdown.to_json(),
                "alternatives": [c.to_json() for c in self.alternatives],
                "device_only_s": self.device_only_s, "edge_only_s": self.edge_only_s,
                "link": self.link.to_json(), "notes": list(self.notes),
                "baselines": [c.to_json() for c in self.baselines]}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Plan":
        edge = obj["edge_only_s"]
        return cls(cut_id=int(obj["cut_id"]), cut_name=str(obj["cut_name"]), codec=obj["codec"],
                   objective=str(obj["objective"]), predicted_s=float(obj["predicted_s"]),
                   breakdown=Breakdown.from_json(obj["breakdown"]),
                   alternatives=tuple(Candidate.from_json(c) for c in obj["alternatives"]),
                   device_only_s=float(obj["device_only_s"]),
                   edge_only_s=None if edge is None else float(edge),
                   link=Link.from_json(obj["link"]), notes=tuple(obj.get("notes", ())),
                   baselines=tuple(Candidate.from_json(c) for c in obj.get("baselines", ())))


# --- cost model -----------------------------------------------------------------------------

def _edge_speedup(device: DeviceProfile, edge: EdgeProfile) -> float:
    """How many times faster the edge runs the whole model than the device (1 when either
    time is unknown). The device profile measured the codec's decode on the device; the edge
    decodes as much faster as it computes faster."""
    first, last = device.cuts[0], device.cuts[-1]
    edge_full = edge.tail_s.get(first.cut_id, 0.0)
    device_full = last.head_s - first.head_s
    return device_full / edge_full if edge_full > 0 and device_full > 0 else 1.0


def _breakdown(device: DeviceProfile, edge: EdgeProfile, link: Link, cut: CutCost,
               codec: CodecCost | None) -> Breakdown:
    """Stage times of one request; ``codec`` None means device-only (no link, no edge)."""
    if codec is None:
        return Breakdown(head_s=cut.head_s)
    return Breakdown(
        head_s=cut.head_s,
        encode_s=codec.encode_s,
        uplink_s=link.transfer_s(codec.request_bytes),
        rtt_s=link.rtt_s,
        queue_s=edge.queue_s,
        edge_decode_s=(codec.decode_s / _edge_speedup(device, edge)
                       + edge.decode_s_per_mb * codec.request_bytes / 1e6),
        tail_s=edge.tail_s[cut.cut_id],
        response_encode_s=edge.response_encode_s,
        downlink_s=link.transfer_s(device.response_bytes),
        response_decode_s=device.response_decode_s,
    )


def _latency(b: Breakdown, power: PowerModel) -> float:
    return b.total_s


def _throughput(b: Breakdown, power: PowerModel) -> float:
    # In a stream, device, uplink, edge and downlink work on different frames at once, so the
    # frame rate is set by the slowest stage; RTT only delays frames, it does not space them.
    return max(b.device_s, b.uplink_s, b.edge_s, b.downlink_s)


def _device_energy(b: Breakdown, power: PowerModel) -> float:
    # Joules spent by the device: computing, transmitting, receiving, and idling while it waits
    # for propagation and for the edge.
    return (power.compute_w * b.device_s + power.radio_tx_w * b.uplink_s
            + power.radio_rx_w * b.downlink_s + power.idle_w * (b.rtt_s + b.edge_s))


#: objective name -> value of a breakdown, lower is better
OBJECTIVES: Mapping[str, Callable[[Breakdown, PowerModel], float]] = {
    "latency": _latency, "throughput": _throughput, "device_energy": _device_energy,
}


# --- search ---------------------------------------------------------------------------------

@dataclass
class _Removed:
    """What each constraint removed, to explain an empty search."""

    by: dict[str, list[str]]

    def add(self, constraint: str, what: str) -> None:
        self.by.setdefault(constraint, []).append(what)

    def explain(self) -> str:
        parts = [f"{name} removed {', '.join(items)}" for name, items in self.by.items()]
        return "; ".join(parts) if parts else "the profile has no codec for any cut"


def _cut_allowed(cut: CutCost, index: int, last: int, edge: EdgeProfile, c: Constraints,
                 removed: _Removed) -> bool:
    label = f"cut {cut.cut_id} ({cut.name})"
    if cut.cut_id < c.min_device_cut:
        removed.add(f"min_device_cut={c.min_device_cut}", label)
    elif index == 0 and not c.allow_edge_only:
        removed.add("allow_edge_only=False", label)
    elif index == last and not c.allow_device_only:
        removed.add("allow_device_only=False", label)
    elif c.device_memory_bytes is not None and cut.head_memory_bytes > c.device_memory_bytes:
        removed.add(f"device_memory_bytes={c.device_memory_bytes}",
                    f"{label} needing {cut.head_memory_bytes} bytes")
    elif index != last and cut.cut_id not in edge.tail_s:
        removed.add("edge profile (no tail time)", label)
    else:
        return True
    return False


def _codecs_allowed(cut: CutCost, c: Constraints, removed: _Removed) -> list[CodecCost]:
    kept = []
    for codec in cut.codecs:
        label = f"{codec.codec} at cut {cut.cut_id}"
        if c.codecs is not None and codec.codec not in c.codecs:
            removed.add(f"codecs={list(c.codecs)}", label)
        elif c.max_codec_error is not None and codec.error > c.max_codec_error:
            removed.add(f"max_codec_error={c.max_codec_error}", f"{label} (error {codec.error:g})")
        elif c.min_agreement is not None and codec.agreement is None:
            removed.add(f"min_agreement={c.min_agreement}",
                        f"{label} (not measured: run splitinfer fidelity)")
        elif c.min_agreement is not None and codec.agreement is not None \
                and codec.agreement < c.min_agreement:
            removed.add(f"min_agreement={c.min_agreement}",
                        f"{label} (agreement {codec.agreement:g})")
        elif c.max_accuracy_drop is not None and codec.accuracy_drop is None \
                and codec.error != 0.0:
            removed.add(f"max_accuracy_drop={c.max_accuracy_drop}",
                        f"{label} (not measured: run splitinfer fidelity on labelled data)")
        elif c.max_accuracy_drop is not None and codec.accuracy_drop is not None \
                and codec.accuracy_drop > c.max_accuracy_drop:
            removed.add(f"max_accuracy_drop={c.max_accuracy_drop}",
                        f"{label} (accuracy drop {codec.accuracy_drop:g})")
        else:
            kept.append(codec)
    return kept


def _pairs(device: DeviceProfile, edge: EdgeProfile, c: Constraints, removed: _Removed
           ) -> list[tuple[CutCost, CodecCost | None]]:
    last = len(device.cuts) - 1
    pairs: list[tuple[CutCost, CodecCost | None]] = []
    for index, cut in enumerate(device.cuts):
        if not _cut_allowed(cut, index, last, edge, c, removed):
            continue
        if index == last:
            pairs.append((cut, None))
        else:
            pairs.extend((cut, codec) for codec in _codecs_allowed(cut, c, removed))
    return pairs


def _tie_key(cand: Candidate) -> tuple[float, int, str]:
    return (cand.head_flops, cand.cut_id, cand.codec or "")


def _rank(cands: list[Candidate]) -> tuple[Candidate, ...]:
    """Best first: lowest value; near-ties go to fewer device FLOPs, lower cut id, codec name."""
    ordered = sorted(cands, key=lambda k: (k.objective_value,) + _tie_key(k))
    best_value = ordered[0].objective_value
    tied = [k for k in ordered
            if k.objective_value - best_value <= _TIE_RTOL * abs(best_value)]
    best = min(tied, key=_tie_key)
    return (best,) + tuple(k for k in ordered if k is not best)


def _check_inputs(device: DeviceProfile, edge: EdgeProfile, link: Link, objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {list(OBJECTIVES)}")
    if not isinstance(link, Link):
        raise TypeError(f"link must be a splitinfer.core.link.Link, got {type(link).__name__}")
    if device.fingerprint != edge.fingerprint or device.model != edge.model:
        raise PlanningError(
            f"device profile is for {device.model!r} (fingerprint {device.fingerprint!r}) but "
            f"edge profile is for {edge.model!r} (fingerprint {edge.fingerprint!r}); profile "
            f"both sides with the same bundle")


def _candidate(device: DeviceProfile, edge: EdgeProfile, link: Link, cut: CutCost,
               codec: CodecCost | None, objective: str, power: PowerModel) -> Candidate:
    """(cut, codec) scored for ``objective``; ``codec`` None is device-only."""
    b = _breakdown(device, edge, link, cut, codec)
    return Candidate(cut_id=cut.cut_id, cut_name=cut.name,
                     codec=None if codec is None else codec.codec,
                     objective_value=OBJECTIVES[objective](b, power), breakdown=b,
                     head_flops=cut.head_flops,
                     request_bytes=0 if codec is None else codec.request_bytes)


def _baselines(device: DeviceProfile, edge: EdgeProfile, link: Link, c: Constraints,
               objective: str, power: PowerModel) -> tuple[Candidate, ...]:
    """Device-only, and edge-only with every codec the constraints allow at cut 0, best first."""
    first, last = device.cuts[0], device.cuts[-1]
    found = [_candidate(device, edge, link, last, None, objective, power)]
    ignored = _Removed({})
    if _cut_allowed(first, 0, len(device.cuts) - 1, edge, c, ignored):
        found += [_candidate(device, edge, link, first, k, objective, power)
                  for k in _codecs_allowed(first, c, ignored)]
    return _rank(found)


def choose(device_profile: DeviceProfile, edge_profile: EdgeProfile, link: Link,
           objective: str = "latency", constraints: Constraints = Constraints(),
           power: PowerModel = PowerModel()) -> Plan:
    """The best (cut, codec) for ``objective`` under ``constraints``; raises PlanningError if none.

    ``predicted_s`` is always the end-to-end latency of the chosen pair, whatever the objective.
    """
    _check_inputs(device_profile, edge_profile, link, objective)
    removed = _Removed({})
    cands = [_candidate(device_profile, edge_profile, link, cut, codec, objective, power)
             for cut, codec in _pairs(device_profile, edge_profile, constraints, removed)]
    if not cands:
        raise PlanningError(f"no (cut, codec) is allowed for {device_profile.model!r}: "
                            f"{removed.explain()}; relax one of these constraints")
    ranked = _rank(cands)
    best = ranked[0]
    notes = tuple(f"{name} removed {', '.join(items)}" for name, items in removed.by.items())
    baselines = _baselines(device_profile, edge_profile, link, constraints, objective, power)
    edge_only = [b.breakdown.total_s for b in baselines if b.codec is not None]
    return Plan(cut_id=best.cut_id, cut_name=best.cut_name, codec=best.codec, objective=objective,
                predicted_s=best.breakdown.total_s, breakdown=best.breakdown, alternatives=ranked,
                device_only_s=device_profile.cuts[-1].head_s,
                edge_only_s=min(edge_only) if edge_only else None,
                link=link, notes=notes, baselines=baselines)
