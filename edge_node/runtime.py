"""Loaded models: the model repository, a bounded cache of built tails, tail profiling.

This is the edge node's compute side. It knows torch and bundles, not gRPC: the servicer hands
it decoded tensors and gets tensors back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from torch import nn

from splitinfer.core.errors import BundleError, NotFound
from splitinfer.core.spec import Cut, check_tensors
from splitinfer.measure.profiler import profile_edge_locally
from splitinfer.model.bundle import load_bundle

if TYPE_CHECKING:
    from splitinfer.model.split_model import SplitModel

log = logging.getLogger(__name__)


def _version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions sort as numbers and after non-numeric ones: '10' > '9' > 'beta'."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


@dataclass
class LoadedModel:
    """One bundle, loaded and ready: its SplitModel and what the node measured about it."""

    name: str
    version: str
    path: Path
    split: SplitModel
    load_time_s: float
    tail_latency_s: dict[int, float] = field(default_factory=dict)
    profiled: threading.Event = field(default_factory=threading.Event)

    @property
    def fingerprint(self) -> str:
        return self.split.fingerprint

    @property
    def cuts(self) -> list[Cut]:
        return self.split.cuts

    def cut(self, cut_id: int) -> Cut:
        if not 0 <= cut_id < len(self.cuts):
            raise NotFound(f"model {self.name} v{self.version} has no cut {cut_id}; its cuts "
                           f"are 0..{len(self.cuts) - 1}")
        return self.cuts[cut_id]

    def check_inputs(self, cut_id: int, tensors: Sequence[Any]) -> None:
        """The request's tensors must be exactly the cut's: count, order, dtype, shape.

        ``tensors``: torch tensors, or encoded ones (their declared dtype and shape)."""
        cut = self.cut(cut_id)
        check_tensors(cut.tensors, tensors, f"cut {cut_id} ({cut.name}) of {self.name} "
                                            f"v{self.version}")


class TailCache:
    """LRU of built tail modules over (model, version, cut); building one takes milliseconds."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str, int], nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: LoadedModel, cut_id: int) -> nn.Module:
        key = (model.name, model.version, cut_id)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        module = model.split.tail(cut_id, cache=False)
        with self._lock:
            self._items[key] = module
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return module

    def __len__(self) -> int:
        return len(self._items)


def profile_tails(model: LoadedModel, repeats: int) -> dict[int, float]:
    """Seconds the tail of every cut takes for one sample of the bundle's example inputs.

    The profiler's own measurement (one timed pass of the whole graph per repeat, a cut's tail
    being the median over runs of the time after it): cheap even for hundreds of cuts.
    """
    sm = model.split
    inputs = tuple(t[:1].to(sm.device) for t in sm.example_inputs)
    return dict(profile_edge_locally(sm, inputs, repeats=repeats).tail_s)


def _stamp(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What must change before a failed bundle is tried again: its files' mtimes and sizes.

    The directory's own mtime is not enough: a file rewritten in place (a copy that was caught
    half-way, a repaired program) leaves it unchanged.
    """
    entries = [path, *sorted(path.iterdir())]
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in entries)


class ModelRepository:
    """The bundles under ``root`` (``<root>/<name>/<version>/``), loaded and looked up."""

    def __init__(self, root: str | Path, *, device: str = "cpu", cache_size: int = 64) -> None:
        self.root = Path(root)
        self.device = device
        self.tails = TailCache(cache_size)
        self._models: dict[str, dict[str, LoadedModel]] = {}
        # bundle dir -> its _stamp when it failed to load
        self._failed: dict[Path, tuple[tuple[str, int, int], ...]] = {}
        self._lock = threading.Lock()

    def _bundle_dirs(self) -> list[tuple[str, str, Path]]:
        found = []
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if model_dir.name.startswith("."):
                continue
            for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                if not version_dir.name.startswith("."):
                    found.append((model_dir.name, version_dir.name, version_dir))
        return found

    def _load(self, name: str, version: str, path: Path) -> LoadedModel:
        start = time.perf_counter()
        sm = load_bundle(path)
        if sm.name != name or sm.version != version:
            raise BundleError(f"{path}: the manifest says {sm.name} v{sm.version}; a bundle "
                              f"must sit at <repo>/{sm.name}/{sm.version}/")
        if self.device != "cpu":
            sm.to(self.device)
        return LoadedModel(name, version, path, sm, time.perf_counter() - start)

    def load_all(self) -> list[LoadedModel]:
        """Load every bundle; any failure is fatal (raised) — this runs at start."""
        if not self.root.is_dir():
            raise BundleError(f"model repository {self.root} is not a directory")
        loaded = []
        for name, version, path in self._bundle_dirs():
            model = self._load(name, version, path)
            self._add(model)
            loaded.append(model)
        if not loaded:
            raise BundleError(f"model repository {self.root} holds no bundles; expected "
                              "<repo>/<name>/<version>/manifest.json (make one with "
                              "`splitinfer export ... -o <repo>/<name>/<version>`)")
        return loaded

    def rescan(self) -> list[LoadedModel]:
        """Load bundles that appeared since; a bad one is logged and skipped, never fatal."""
        loaded = []
        for name, version, path in self._bundle_dirs():
            if version in self._models.get(name, {}):
                continue
            try:
                stamp = _stamp(path)
            except OSError:  # removed while we looked; the next scan tells
                continue
            if self._failed.get(path) == stamp:
                continue
            try:
                model = self._load(name, version, path)
            except Exception as exc:  # a bad bundle must not take the node down
                self._failed[path] = stamp
                log.error("bundle %s not loaded: %s", path, exc,
                          extra={"model": name, "model_version": version})
                continue
            self._add(model)
            loaded.append(model)
        return loaded

    def _add(self, model: LoadedModel) -> None:
        with self._lock:
            self._models.setdefault(model.name, {})[model.version] = model

    def get(self, name: str, version: str = "") -> LoadedModel:
        with self._lock:
            versions = self._models.get(name)
            if not versions:
                raise NotFound(f"unknown model {name!r}; this node serves "
                               f"{sorted(self._models) or 'nothing'}")
            if not version:
                version = max(versions, key=_version_key)
            if version not in versions:
                raise NotFound(f"model {name!r} has no version {version!r}; it has "
                               f"{sorted(versions, key=_version_key)}")
            return versions[version]

    def versions(self, name: str) -> list[str]:
        with self._lock:
            return sorted(self._models.get(name, {}), key=_version_key)

    def all(self) -> list[LoadedModel]:
        with self._lock:
            return [m for versions in self._models.values() for m in versions.values()]

    def profile(self, model: LoadedModel, repeats: int) -> None:
        try:
            model.tail_latency_s = profile_tails(model, repeats)
            log.info("profiled %d tails of %s v%s", len(model.tail_latency_s), model.name,
                     model.version, extra={"model": model.name, "model_version": model.version})
        except Exception:  # profiling is advisory: the model still serves
            log.exception("profiling %s v%s failed", model.name, model.version)
        finally:
            model.profiled.set()
