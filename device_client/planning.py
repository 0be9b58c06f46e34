"""The plan a client runs with: a cut and a codec, and where they came from.

``ClientPlan`` wraps the planner's ``Plan`` (when there was one to make) with what the caller
fixed: a cut, a codec, or neither. ``make_plan`` is pure: profiles and a link in, plan out.
``codec_misfit`` says why a codec cannot carry a cut's tensors (an image codec carries only a
uint8 frame: cut 0 of an image bundle), so a fixed codec is refused before any request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from splitinfer.codec import get_codec
from splitinfer.core.errors import PlanningError
from splitinfer.core.link import Link
from splitinfer.core.planner import Candidate, Constraints, Plan, choose
from splitinfer.core.profiles import DeviceProfile, EdgeProfile
from splitinfer.core.spec import DYNAMIC, Cut

__all__ = ["ClientPlan", "make_plan", "load_device_profile", "profile_cut_ids",
           "device_work_s", "codec_misfit", "DEFAULT_CLIENT_CODECS"]

#: codecs a client profiles and plans over unless told otherwise: the tensor codecs, and JPEG
#: at quality 90 (what a phone app ships) and PNG, profiled where they fit (an image bundle's
#: frame at cut 0), so edge-only JPEG is a candidate like any split. Lower JPEG qualities
#: (``IMAGE_CODECS``) trade the answer's fidelity for bytes: a client plans over them only when
#: asked (``codecs=``), best with a ``max_codec_error`` or ``min_agreement`` constraint, since
#: the planner minimizes time and the fewest bytes would always win
DEFAULT_CLIENT_CODECS = ("fp32", "fp16", "int8+zstd", "jpeg", "png")


def codec_misfit(codec: str, cut: Cut) -> str | None:
    """Why codec ``codec`` cannot carry the tensors crossing ``cut``; None when it can
    (dynamic dims count as 1)."""
    carrier = get_codec(codec)
    for spec in cut.tensors:
        shape = tuple(1 if d == DYNAMIC else d for d in spec.shape)
        if not carrier.applies_to(spec.dtype, shape):
            return (f"tensor {spec.name!r} crossing cut {cut.id} ({cut.name}) is {spec.dtype} "
                    f"shaped {tuple(spec.shape)}, which {codec!r} cannot carry (an image codec "
                    f"carries uint8 NHWC frames only)")
    return None


@dataclass(frozen=True)
class ClientPlan:
    """The cut and codec in force. ``codec`` None: the whole model runs on the device.

    ``reason``: "planner" (chosen for the measured link), "fixed" (the caller gave cut and
    codec), or why the client runs on the device only ("no edge reachable", ...).
    ``predicted_s`` and ``plan`` (the planner's breakdown and ranked alternatives) are None
    when there were no profiles to plan from.
    """

    cut_id: int
    cut_name: str
    codec: str | None
    reason: str
    predicted_s: float | None = None
    link: Link | None = None
    plan: Plan | None = None

    def describe(self) -> str:
        where = "device only" if self.codec is None else f"cut {self.cut_id} ({self.cut_name}) " \
                                                          f"with {self.codec}"
        pred = "" if self.predicted_s is None else f", predicted {self.predicted_s * 1e3:.1f} ms"
        return f"{where} [{self.reason}{pred}]"


def load_device_profile(value: Any, fingerprint: str) -> DeviceProfile | None:
    """``value``: None, a DeviceProfile, or a path to its JSON; checked against the bundle."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        import json

        try:
            value = DeviceProfile.from_json(json.loads(Path(value).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"device_profile {str(value)!r} is not a readable DeviceProfile "
                             f"JSON ({type(exc).__name__}: {exc})") from exc
    if not isinstance(value, DeviceProfile):
        raise ValueError(f"device_profile is a {type(value).__name__}; expected a DeviceProfile "
                         f"or the path of its JSON")
    if value.fingerprint != fingerprint:
        raise ValueError(f"device_profile is for fingerprint {value.fingerprint[:16]}…, the "
                         f"bundle is {fingerprint[:16]}…; profile this bundle")
    return value


def profile_cut_ids(n_cuts: int, cut: int | None, most: int) -> list[int]:
    """Cuts to profile: the fixed one, or all (at most ``most``, evenly spaced), plus ends."""
    last = n_cuts - 1
    if cut is not None:
        return sorted({0, cut, last})
    if n_cuts <= most:
        return list(range(n_cuts))
    return sorted({0, last, *(int(round(c)) for c in np.linspace(0, last, most))})


def make_plan(device: DeviceProfile, edge: EdgeProfile, link: Link, *, cut: int | None,
              codec: str | None, objective: str, constraints: Constraints,
              cut_names: Sequence[str]) -> ClientPlan:
    """Plan over the profiles; a fixed ``cut``/``codec`` narrows the candidates to it."""
    if codec is not None:
        constraints = dataclasses.replace(constraints, codecs=(codec,))
    plan = choose(device, edge, link, objective=objective, constraints=constraints)
    best: Candidate | None = plan.alternatives[0]
    if cut is not None:
        best = next((a for a in plan.alternatives if a.cut_id == cut), None)
        if best is None:
            raise PlanningError(f"cut {cut} is not a candidate: {'; '.join(plan.notes) or 'the '}"
                                f"edge has not profiled it yet or a constraint removes it")
        plan = dataclasses.replace(plan, cut_id=best.cut_id, cut_name=best.cut_name,
                                   codec=best.codec, predicted_s=best.breakdown.total_s,
                                   breakdown=best.breakdown)
    if best is None:  # choose() raises rather than plan nothing: no alternative, no plan
        raise PlanningError("the planner returned no candidate")
    return ClientPlan(cut_id=best.cut_id, cut_name=cut_names[best.cut_id], codec=best.codec,
                      reason="fixed" if cut is not None and codec is not None else "planner",
                      predicted_s=best.breakdown.total_s, link=link, plan=plan)


def objective_of(plan: Plan, cut_id: int, codec: str | None) -> float | None:
    """The objective value ``plan`` gives (cut_id, codec), or None if it is not a candidate."""
    return next((a.objective_value for a in plan.alternatives
                 if a.cut_id == cut_id and a.codec == codec), None)


def device_work_s(profile: DeviceProfile | None, cut_id: int, codec: str | None
                  ) -> float | None:
    """What ``profile`` predicts for one request's device work before it is sent: the head to
    ``cut_id`` plus encoding (and building the request) with ``codec``; with ``codec`` None,
    the whole model (device-only). None when the profile does not cover it."""
    if profile is None:
        return None
    if codec is None:
        return profile.cuts[-1].head_s
    cut = next((c for c in profile.cuts if c.cut_id == cut_id), None)
    if cut is None:
        return None
    cost = next((k for k in cut.codecs if k.codec == codec), None)
    return None if cost is None else cut.head_s + cost.encode_s
