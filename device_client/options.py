"""What a client is told at construction: ``ClientOptions``, checked once, and the one signature
``SplitClient`` and ``AsyncSplitClient`` share (``ClientArgs``).

Every argument is validated here, before anything connects, and a bad one raises ``ValueError``
(or ``CodecError`` for an unknown codec) naming the argument, the value and what is expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from splitinfer.codec import get_codec
from splitinfer.core.planner import OBJECTIVES, Constraints
from splitinfer.core.profiles import DeviceProfile
from splitinfer.transport import TLS, as_tls
from splitinfer.wire.oip_convert import OIP_CODECS

from .breaker import BreakerPolicy
from .edges import Edge
from .planning import DEFAULT_CLIENT_CODECS

__all__ = ["ClientOptions", "ClientArgs", "EdgeSpec"]

#: what the client speaks to its edges: our own protocol, or the Open Inference Protocol
PROTOCOLS = ("splitinfer", "oip")
#: the codecs planned over with protocol="oip" when ``codecs`` is left at its default
DEFAULT_OIP_CODECS = ("fp32", "fp16", "int8")

#: an edge as given: a gRPC target ("host:port", "dns:///name:port") or an ``Edge`` object
EdgeSpec = str | Edge


@dataclass(frozen=True)
class ClientOptions:
    """Everything but the bundle and the edges; see ``ClientArgs`` for what each one means."""

    cut: int | str = "auto"
    codec: str = "auto"
    deadline_s: float = 1.0
    fallback: str = "local"
    tls: TLS | None = None
    token: str | None = None
    head: str = "auto"
    window: int = 4
    shadow_rate: float = 0.0
    device_profile: DeviceProfile | str | Path | None = None
    objective: str = "latency"
    constraints: Constraints = field(default_factory=Constraints)
    codecs: tuple[str, ...] = DEFAULT_CLIENT_CODECS
    replan: bool = True
    background: bool = True
    probe_interval_s: float = 2.0
    refresh_s: float = 10.0
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    connect_timeout_s: float = 10.0
    max_profile_cuts: int = 24
    threads: int | None = None
    device_slowdown: float = 1.0
    track_device_speed: bool = True
    protocol: str = "splitinfer"

    def __post_init__(self) -> None:
        for name in ("deadline_s", "connect_timeout_s", "probe_interval_s", "refresh_s"):
            _check_seconds(name, getattr(self, name))
        _one_of("fallback", self.fallback, ("local", "error"))
        _one_of("head", self.head, ("auto", "torch", "onnx"))
        _one_of("objective", self.objective, tuple(OBJECTIVES))
        _check_int("window", self.window, 1, 1024)
        _check_int("max_profile_cuts", self.max_profile_cuts, 2, 100_000)
        if self.threads is not None:
            _check_int("threads", self.threads, 1, 1024)
        if isinstance(self.shadow_rate, bool) or not isinstance(self.shadow_rate, (int, float)) \
                or not 0.0 <= self.shadow_rate <= 1.0:
            raise ValueError(f"shadow_rate is {self.shadow_rate!r}; expected a fraction 0..1")
        if isinstance(self.device_slowdown, bool) \
                or not isinstance(self.device_slowdown, (int, float)) \
                or not 1 <= self.device_slowdown < math.inf:
            raise ValueError(f"device_slowdown is {self.device_slowdown!r}; expected a number "
                             f">= 1 (1 = this machine's speed)")
        for name in ("replan", "background", "track_device_speed"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} is {getattr(self, name)!r}; expected True or False")
        if not isinstance(self.constraints, Constraints):
            raise ValueError(f"constraints is a {type(self.constraints).__name__}; expected "
                             f"splitinfer.core.planner.Constraints")
        if not isinstance(self.breaker, BreakerPolicy):
            raise ValueError(f"breaker is a {type(self.breaker).__name__}; expected "
                             f"device_client.BreakerPolicy")
        if isinstance(self.codecs, str):  # type: ignore[unreachable]  # a caller's mistake
            raise ValueError(f"codecs is {self.codecs!r}; expected a sequence of codec names, "
                             f"e.g. ({self.codecs!r},)")
        if self.codec != "auto":
            get_codec(self.codec)  # CodecError names the known codecs
        for name in self.codecs:
            get_codec(name)
        object.__setattr__(self, "codecs", tuple(self.codecs))
        _one_of("protocol", self.protocol, PROTOCOLS)
        if self.protocol == "oip":
            self._oip_codecs()

    def _oip_codecs(self) -> None:
        """Over the Open Inference Protocol only codecs with an OIP form can travel."""
        if self.codec != "auto" and get_codec(self.codec).name not in OIP_CODECS:
            raise ValueError(f"codec {self.codec!r} has no Open Inference Protocol form; with "
                             f"protocol='oip' use one of {list(OIP_CODECS)}")
        if self.codecs == DEFAULT_CLIENT_CODECS:
            object.__setattr__(self, "codecs", DEFAULT_OIP_CODECS)
            return
        bad = [c for c in self.codecs if get_codec(c).name not in OIP_CODECS]
        if bad:
            raise ValueError(f"codecs {bad} have no Open Inference Protocol form; with "
                             f"protocol='oip' plan over {list(OIP_CODECS)}")
        if self.tls is not None and not isinstance(self.tls, TLS):
            raise ValueError(f"tls is {self.tls!r}; expected None or a TLS (as_tls reads the "
                             f"other forms)")

    @property
    def planned_codecs(self) -> tuple[str, ...]:
        """The codecs the planner chooses from: the one given, or ``codecs``."""
        return self.codecs if self.codec == "auto" else (self.codec,)


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} is {value!r}; expected a finite number of seconds > 0")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} is {value!r}; expected an int from {low} to {high}")


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} is {value!r}; expected one of {list(allowed)}")


class ClientArgs:
    """The constructor ``SplitClient`` and ``AsyncSplitClient`` share (see ``__init__``)."""

    def __init__(self, bundle: str | Path, edges: Sequence[EdgeSpec] | EdgeSpec, *,
                 cut: int | str = "auto", codec: str = "auto", deadline_s: float = 1.0,
                 fallback: str = "local", tls: TLS | dict[str, Any] | bool | None = None,
                 token: str | None = None, head: str = "auto", window: int = 4,
                 shadow_rate: float = 0.0,
                 device_profile: DeviceProfile | str | Path | None = None,
                 objective: str = "latency", constraints: Constraints | None = None,
                 codecs: Sequence[str] = DEFAULT_CLIENT_CODECS, replan: bool = True,
                 background: bool = True, probe_interval_s: float = 2.0,
                 refresh_s: float = 10.0, breaker: BreakerPolicy | None = None,
                 connect_timeout_s: float = 10.0, max_profile_cuts: int = 24,
                 threads: int | None = None, device_slowdown: float = 1.0,
                 track_device_speed: bool = True, protocol: str = "splitinfer") -> None:
        """Check every argument (``ValueError`` naming a bad one) before anything connects.

        ``bundle``: the bundle directory (or, with ``head="onnx"``, a folder with
        ``manifest.json`` and ``onnx/``). ``edges``: one or more edge nodes — "host:port", any
        gRPC target such as "dns:///edge.example:50051" (every address it resolves to is used),
        or an ``Edge`` object (e.g. a fake edge in tests).

        ``cut``: "auto" (planned) or a cut id / name; ``codec``: "auto" or a codec name (both
        given: a fixed plan). ``deadline_s``: per request, from the call. ``fallback``: "local"
        (run the tail here when no edge answers in time) or "error" (raise ``EdgeUnavailable``).
        ``tls``: None, True (system roots), a dict(ca=, cert=, key=, server_name=) or ``TLS``;
        ``token``: the edge's bearer token. ``head``: "auto", "torch" or "onnx" (no torch
        needed). ``window``: frames in flight in ``stream``. ``shadow_rate``: fraction of
        requests also run fully on the device to measure divergence. ``device_profile``: a
        ``DeviceProfile`` or its JSON path (else measured at connect when planning needs it, on
        at most ``max_profile_cuts`` cuts). ``objective``: "latency", "throughput" or
        "device_energy"; ``constraints``: the planner's ``Constraints``; ``codecs``: the codecs
        planned over. ``replan``: re-plan when the link or the device's speed moves.
        ``background``: the background duties (a tiny Probe every ``probe_interval_s`` for the
        RTT, the edge's profile re-read every ``refresh_s``, open breakers probed back, edges
        set aside re-checked); off, the client sends nothing but requests (benchmarks; the link
        estimate then moves only with the requests' own round trips, and an open breaker stays
        open). ``breaker``: when an edge's circuit opens. ``connect_timeout_s``: for each edge's
        checks at connect. ``threads``: ONNX Runtime threads. ``device_slowdown``: emulate a
        device that many times slower than this machine, for demos and what-if runs (every piece
        of work on the device thread idles ``device_slowdown - 1`` times the CPU time it used;
        the profile measured at connect is that device's); 1 = off. ``track_device_speed``: time
        the device's work on every request against its profile and re-plan when it runs more
        than 1.25x slower or faster than the plan assumed; turn it off when ``device_profile``
        is a what-if for another device. ``protocol``: "splitinfer" (our edge node) or "oip":
        the Open Inference Protocol (KServe v2 gRPC), to use a KServe or Triton server that
        serves the bundle's tails under the names ``<bundle>`` and ``<bundle>.cut<ID>``, or a
        splitinfer node's OIP service (``device_client.oip_edge``); codecs then are fp32,
        fp16, bf16 and int8 (``codecs`` defaults to fp32, fp16, int8).
        """
        options = ClientOptions(
            cut=cut, codec=codec, deadline_s=deadline_s, fallback=fallback, tls=as_tls(tls),
            token=token, head=head, window=window, shadow_rate=shadow_rate,
            device_profile=device_profile, objective=objective,
            constraints=constraints or Constraints(), codecs=tuple(codecs), replan=replan,
            background=background, probe_interval_s=probe_interval_s, refresh_s=refresh_s,
            breaker=breaker or BreakerPolicy(), connect_timeout_s=connect_timeout_s,
            max_profile_cuts=max_profile_cuts, threads=threads,
            device_slowdown=device_slowdown, track_device_speed=track_device_speed,
            protocol=protocol)
        self._configure(Path(bundle), edge_list(edges), options)

    def _configure(self, bundle: Path, edges: list[EdgeSpec], options: ClientOptions) -> None:
        raise NotImplementedError


def edge_list(edges: Sequence[EdgeSpec] | EdgeSpec) -> list[EdgeSpec]:
    """``edges`` as a non-empty list of targets and ``Edge`` objects, each one checked."""
    given = [edges] if isinstance(edges, (str, Edge)) else list(edges)
    if not given:
        raise ValueError("edges is empty; give at least one 'host:port'")
    for e in given:
        if isinstance(e, Edge):
            continue
        if not isinstance(e, str) or not e.strip() or any(ch.isspace() for ch in e):
            raise ValueError(f"edge address {e!r}; expected 'host:port', a gRPC target such "
                             f"as 'dns:///edge.example:50051', or a device_client.Edge")
    names = [e if isinstance(e, str) else e.address for e in given]
    if len(set(names)) != len(names):
        raise ValueError(f"edges lists an address twice: {names}")
    return given
