"""The plan state of one client, owned in one place: the plan in force, the link estimate, the
device's speed, the profiles, and what requests report back.

Requests, streams and the background duties never write this state themselves: they tell the
``Session`` what they saw (``observe_transfer``, ``observe_rtt``, ``observe_device``,
``note_local_tail``, ``set_edge_profile``) and read the plan it keeps. Re-planning has
hysteresis twice over: the link (or the device's speed, ``DeviceSpeed``) must move past the
estimator's thresholds, and a new (cut, codec) must beat the current one by ``SWITCH_MARGIN``.
Plans are made for the device profile scaled to the device's speed now.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from splitinfer.core.errors import PlanningError
from splitinfer.core.link import Link
from splitinfer.core.profiles import DeviceProfile, EdgeProfile

from .estimator import DeviceSpeed, LinkEstimator
from .planning import ClientPlan, codec_misfit, device_work_s, make_plan, objective_of

if TYPE_CHECKING:
    from splitinfer.model.manifest import Manifest

    from .options import ClientOptions
    from .runners import Runner
    from .stats import StatsRecorder

__all__ = ["Session", "SWITCH_MARGIN"]

log = logging.getLogger(__name__)

#: a re-plan switches cut/codec only when the new choice is this much better (relative)
SWITCH_MARGIN = 0.05


class Session:
    """Plan, estimator, device speed and profiles of one client; see the module docstring.

    ``cut_id``: the cut the caller fixed (None: planned); ``stats`` counts re-plans.
    A ``codec`` given that cannot carry the fixed cut's tensors (or any cut's) is a
    ValueError here, before anything is sent."""

    def __init__(self, options: ClientOptions, manifest: Manifest, runner: Runner,
                 cut_id: int | None, device_profile: DeviceProfile | None,
                 stats: StatsRecorder) -> None:
        self.options, self.manifest, self.runner = options, manifest, runner
        self.cut_id = cut_id
        self._check_codec()
        self.device_profile = device_profile
        self.edge_profile: EdgeProfile | None = None
        self.stats = stats
        self._plan: ClientPlan | None = None
        self._estimator: LinkEstimator | None = None
        self._speed = DeviceSpeed() if options.track_device_speed else None
        self._plan_link: Link | None = None
        self._plan_speed = 1.0  # the device speed factor the plan in force was made for
        self._tail_s: dict[int, float] = {}  # measured local tail time per cut, for reserves

    # -- what others read ---------------------------------------------------------------------
    @property
    def plan(self) -> ClientPlan:
        """The cut and codec in force."""
        if self._plan is None:
            raise RuntimeError("no plan yet: connect the client first")
        return self._plan

    @property
    def has_plan(self) -> bool:
        return self._plan is not None

    @property
    def link(self) -> Link | None:
        """The link estimate now (None before the first measurement)."""
        return self._estimator.link if self._estimator is not None else None

    @property
    def device_speed(self) -> float:
        """How many times slower than its profile the device runs now (1.0 when untracked)."""
        return self._speed.factor if self._speed is not None else 1.0

    @property
    def fixed(self) -> bool:
        """Cut and codec both given: nothing to choose."""
        return self.cut_id is not None and self.options.codec != "auto"

    def cut_name(self, cut_id: int) -> str:
        return self.manifest.cuts[cut_id].name

    def _sends(self, cut_id: int) -> bool:
        """Whether a request at ``cut_id`` sends tensors (the torch runner's last cut does not)."""
        return cut_id != self.runner.last_cut or self.runner.kind != "torch"

    def check_fits(self, codec: str, cut_id: int) -> None:
        """ValueError when ``codec`` cannot carry ``cut_id``'s tensors and would have to."""
        why = codec_misfit(codec, self.manifest.cuts[cut_id]) if self._sends(cut_id) else None
        if why is not None:
            raise ValueError(f"codec={codec!r} cannot be used at cut {cut_id}: {why}; give a "
                             f"tensor codec (e.g. 'int8+zstd'), or cut=0 on an image bundle")

    def _check_codec(self) -> None:
        codec = self.options.codec
        if codec == "auto":
            return
        if self.cut_id is not None:
            self.check_fits(codec, self.cut_id)
        elif self._first_fit(codec) is None:
            raise ValueError(f"codec={codec!r} fits no cut of {self.manifest.name}: "
                             f"{codec_misfit(codec, self.manifest.cuts[0])}; give a tensor "
                             f"codec (e.g. 'int8+zstd')")

    def _first_fit(self, codec: str) -> int | None:
        """The first cut whose tensors ``codec`` carries (None: none)."""
        return next((c.id for c in self.manifest.cuts[:-1] if codec_misfit(codec, c) is None),
                    None)

    # -- planning -----------------------------------------------------------------------------
    def start(self, link: Link | None, edge_profile: EdgeProfile | None) -> None:
        """The first plan: for ``link`` (None: no edge reachable, so the device works alone)."""
        if link is None:
            self._plan = self.local_plan("no edge reachable at connect")
            return
        self._estimator = LinkEstimator(link)
        self._plan_link = link
        self.edge_profile = edge_profile
        self._plan = self.make(link)

    def set_device_profile(self, profile: DeviceProfile) -> None:
        self.device_profile = profile

    def local_plan(self, why: str) -> ClientPlan:
        """What runs without an edge: the whole model here (torch), or the fixed cut."""
        given = self.cut_id is not None and self.options.codec != "auto" \
            and self.cut_id != self.runner.last_cut
        if self.runner.kind == "torch" and not given:
            last = self.runner.last_cut
            return ClientPlan(last, self.cut_name(last), None, f"device only: {why}")
        codec = self.options.codec if self.options.codec != "auto" else None
        cut = self.cut_id if self.cut_id is not None else \
            (self._first_fit(codec) if codec is not None else None) or 0
        return ClientPlan(cut, self.cut_name(cut), codec, f"fixed; {why}")

    def make(self, link: Link) -> ClientPlan:
        """A plan for ``link`` and the device's speed now (does not put it in force)."""
        names = [cut.name for cut in self.manifest.cuts]
        codec = None if self.options.codec == "auto" else self.options.codec
        if self.cut_id == self.runner.last_cut and self.runner.kind == "torch":
            return self.local_plan("the cut given is the model's output")
        if self.device_profile is None or self.edge_profile is None:
            if self.fixed and self.cut_id is not None:
                return ClientPlan(self.cut_id, names[self.cut_id], codec, "fixed", link=link)
            return self.local_plan("no profiles to plan from")
        self._plan_speed = self.device_speed
        device = self.device_profile if self._plan_speed == 1.0 else \
            self.device_profile.scaled(self._plan_speed)
        try:
            return make_plan(device, self.edge_profile, link, cut=self.cut_id, codec=codec,
                             objective=self.options.objective,
                             constraints=self.options.constraints, cut_names=names)
        except PlanningError as exc:
            log.warning("planner: %s", exc)
            if self.fixed and self.cut_id is not None:
                return ClientPlan(self.cut_id, names[self.cut_id], codec, "fixed", link=link)
            return self.local_plan(f"planner found nothing: {exc}")

    def plan_for(self, cut_id: int, codec: str | None) -> ClientPlan:
        """The plan of one request that names its own cut and codec (checked: ValueError when
        the codec cannot carry the cut's tensors)."""
        if not self._sends(cut_id):
            codec = None
        elif codec is not None:
            self.check_fits(codec, cut_id)
        predicted = None
        if self._plan is not None and self._plan.plan is not None:
            predicted = next((a.breakdown.total_s for a in self._plan.plan.alternatives
                              if a.cut_id == cut_id and a.codec == codec), None)
        return ClientPlan(cut_id, self.cut_name(cut_id), codec, "given for this request",
                          predicted_s=predicted, link=self.link)

    def maybe_replan(self, force: bool = False) -> None:
        """Re-plan when the link or the device's speed moved past the hysteresis (or
        ``force``); switch cut/codec only when the new choice is clearly better now."""
        est, cur = self._estimator, self._plan
        if not self.options.replan or est is None or cur is None or self._plan_link is None:
            return
        if self.fixed:
            return  # nothing to choose
        speed = self._speed
        if not force and not est.moved(self._plan_link) \
                and (speed is None or not speed.moved(self._plan_speed)):
            return
        link = est.link
        self._plan_link = link
        new = self.make(link)
        self.stats.add(replans=1)
        if new.plan is None:
            return
        if (new.cut_id, new.codec) == (cur.cut_id, cur.codec):
            self._plan = new
            return
        now_value = objective_of(new.plan, cur.cut_id, cur.codec)
        new_value = objective_of(new.plan, new.cut_id, new.codec)
        if now_value is None or new_value is None or new_value < now_value * (1 - SWITCH_MARGIN):
            log.info("link now %.1f ms, %.2f Mbit/s, device %.2fx its profile: switching from "
                     "%s to %s", link.rtt_s * 1e3, link.bandwidth_bps / 1e6, self._plan_speed,
                     cur.describe(), new.describe())
            self._plan = new
            self.stats.add(plan_switches=1)

    # -- what requests and probes report ------------------------------------------------------
    def reset_link(self, link: Link) -> None:
        """A fresh measurement of the link (``AsyncSplitClient.measure_link``): the estimate
        starts again from it, and the plan follows if it moved."""
        if self._estimator is None:
            return
        self._estimator = LinkEstimator(link)
        self.maybe_replan()

    def observe_transfer(self, nbytes: int, network_s: float) -> None:
        """One answered request: ``nbytes`` both ways took ``network_s`` on the network."""
        if self._estimator is not None:
            self._estimator.add_transfer(nbytes, network_s)
            self.maybe_replan()

    def observe_rtt(self, seconds: float) -> None:
        """A tiny Probe's round trip."""
        if self._estimator is not None:
            self._estimator.add_rtt(seconds)
            self.maybe_replan()

    def bandwidth_probe_bytes(self) -> int:
        """A probe that takes ~50 ms at the estimated bandwidth (16 KB to 1 MB)."""
        link = self.link
        bps = link.bandwidth_bps if link is not None else 8e6
        return int(min(max(bps / 8 * 0.05, 16 << 10), 1 << 20))

    def observe_device(self, took_s: float, expected_s: float | None) -> None:
        """One piece of device work: ``took_s`` it took, ``expected_s`` the profile said."""
        if expected_s is not None and self._speed is not None:
            self._speed.add(took_s, expected_s)
            self.maybe_replan()

    def expected_device_s(self, plan: ClientPlan) -> float | None:
        """The profile's prediction for ``plan``'s device work (head and encoding, or the
        whole model): the yardstick of the speed estimate (None when not tracked)."""
        if self._speed is None:
            return None
        return device_work_s(self.device_profile, plan.cut_id, plan.codec)

    def set_edge_profile(self, profile: EdgeProfile) -> None:
        """The edge's tail times or queue moved: re-plan now."""
        if profile != self.edge_profile:
            self.edge_profile = profile
            self.maybe_replan(force=True)

    def note_local_tail(self, cut_id: int, took_s: float) -> None:
        """A local tail took ``took_s``: the reserve kept for the next one follows it."""
        old = self._tail_s.get(cut_id)
        self._tail_s[cut_id] = took_s if old is None else 0.7 * old + 0.3 * took_s

    def local_reserve_s(self, cut_id: int) -> float:
        """Time to keep for a local tail before the deadline (0 when fallback is off)."""
        if self.options.fallback != "local" or not self.runner.can_run_tail(cut_id):
            return 0.0
        if cut_id in self._tail_s:
            return 1.5 * self._tail_s[cut_id] + 0.002
        prof = self.device_profile
        if prof is not None:
            heads = {c.cut_id: c.head_s for c in prof.cuts}
            if cut_id in heads:
                return 1.5 * self.device_speed \
                    * max(heads[prof.cuts[-1].cut_id] - heads[cut_id], 0.0) + 0.002
        return 0.0

    def attempt_timeout_s(self, remaining: float, others_usable: bool) -> float:
        """How long one edge gets. With another usable edge still untried, a hung edge must
        not eat the whole deadline: it gets 3x the predicted latency (at least 50 ms), or
        half the time left when there is no prediction; the last edge gets all that is left."""
        if not others_usable:
            return remaining
        predicted = self._plan.predicted_s if self._plan is not None else None
        share = remaining / 2 if predicted is None else max(3 * predicted, 0.05)
        return min(remaining, share)
