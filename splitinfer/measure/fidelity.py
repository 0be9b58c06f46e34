"""Measured fidelity: how far a split model's answer moves from the unsplit model's, per cut and codec.

``measure_fidelity(sm, samples)`` does what deployment does for every cut (device-only
aside) and every codec that can carry that cut's tensors: head, encode each crossing tensor,
decode (``decode_torch``), tail; then compares the answer with the unsplit model's on the
original input (``splitinfer.core.compare``): relative L2 error, cosine, top-1 agreement, and
accuracy when the samples carry labels. One sample is one request (batch of 1), so per-tensor
quantization sees what a request's encoder sees.

Top-1 agreement only means something when the reference answers vary: a model with random
weights gives the same class or two for every input, so any codec "agrees". The report says
so (``agreement_meaningful``) and the output distortion is the figure to read then.
``FidelityReport.apply_to(profile)`` writes the measured errors into a ``DeviceProfile``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch

from splitinfer.codec import IMAGE_CODECS, encoded_nbytes, get_codec
from splitinfer.core import compare
from splitinfer.core.errors import CodecError, SplitInferError
from splitinfer.core.profiles import DeviceProfile
from splitinfer.model.tensors import decode_torch

if TYPE_CHECKING:
    from splitinfer.model.split_model import SplitModel

__all__ = ["Sample", "CodecFidelity", "FidelityReport", "measure_fidelity", "DEFAULT_CODECS",
           "MIN_DISTINCT_TOP1"]

#: the codecs measured unless told otherwise: the lossy numeric ones and the image codecs
#: (which only apply where a uint8 frame crosses: cut 0 of an image bundle)
DEFAULT_CODECS: tuple[str, ...] = ("fp16", "bf16", "int8", "int8+zstd", *IMAGE_CODECS)
#: top-1 agreement counts only when the reference answers span at least min(this, n) classes
MIN_DISTINCT_TOP1 = 5


@dataclass(frozen=True)
class Sample:
    """One input of the model (batch of 1: one tensor per model input) and its class, if known."""

    inputs: tuple[torch.Tensor, ...]
    label: int | None = None


@dataclass(frozen=True)
class CodecFidelity:
    """The figures of one (cut, codec) over ``n`` inputs. Errors are relative L2 errors of the
    model's output against the unsplit model's; ``agreement`` the fraction of inputs whose
    top-1 class stayed the unsplit model's; ``accuracy`` the fraction matching the labels
    (None without labels); ``request_bytes`` the mean encoded size of a request's tensors."""

    cut_id: int
    cut_name: str
    codec: str
    n: int
    error_p50: float
    error_p95: float
    error_max: float
    cosine_mean: float
    cosine_min: float
    agreement: float
    accuracy: float | None
    request_bytes: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "CodecFidelity":
        acc = obj.get("accuracy")
        return cls(cut_id=int(obj["cut_id"]), cut_name=str(obj["cut_name"]),
                   codec=str(obj["codec"]), n=int(obj["n"]),
                   error_p50=float(obj["error_p50"]), error_p95=float(obj["error_p95"]),
                   error_max=float(obj["error_max"]), cosine_mean=float(obj["cosine_mean"]),
                   cosine_min=float(obj["cosine_min"]), agreement=float(obj["agreement"]),
                   accuracy=None if acc is None else float(acc),
                   request_bytes=float(obj["request_bytes"]))


@dataclass(frozen=True)
class FidelityReport:
    """Every (cut, codec) measured on one model over ``n`` inputs from ``source``.

    ``distinct_top1``: distinct top-1 classes among the unsplit model's answers;
    ``agreement_meaningful``: False when the output is not one row of K > 1 scores or those
    answers span fewer than min(5, n) classes (then read the errors, not the agreement).
    ``reference_accuracy``: the unsplit model's accuracy on the labels (None without labels).
    ``notes``: (cut, codec) pairs a codec refused, and codecs that applied nowhere.
    """

    model: str
    fingerprint: str
    source: str
    n: int
    distinct_top1: int
    agreement_meaningful: bool
    reference_accuracy: float | None
    rows: tuple[CodecFidelity, ...]
    notes: tuple[str, ...] = field(default=())

    def row(self, cut_id: int, codec: str) -> CodecFidelity:
        """The figures of one (cut, codec); KeyError when it was not measured."""
        for r in self.rows:
            if r.cut_id == cut_id and r.codec == codec:
                return r
        raise KeyError(f"(cut {cut_id}, codec {codec!r}) was not measured")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "fingerprint": self.fingerprint, "source": self.source,
                "n": self.n, "distinct_top1": self.distinct_top1,
                "agreement_meaningful": self.agreement_meaningful,
                "reference_accuracy": self.reference_accuracy,
                "rows": [r.to_json() for r in self.rows], "notes": list(self.notes)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "FidelityReport":
        acc = obj.get("reference_accuracy")
        return cls(model=str(obj["model"]), fingerprint=str(obj["fingerprint"]),
                   source=str(obj.get("source", "")), n=int(obj["n"]),
                   distinct_top1=int(obj["distinct_top1"]),
                   agreement_meaningful=bool(obj["agreement_meaningful"]),
                   reference_accuracy=None if acc is None else float(acc),
                   rows=tuple(CodecFidelity.from_json(r) for r in obj["rows"]),
                   notes=tuple(str(n) for n in obj.get("notes", ())))

    def apply_to(self, profile: DeviceProfile) -> DeviceProfile:
        """``profile`` with the measured figures in: every CodecCost measured here gets
        ``error`` = the p95 relative error, ``agreement`` = the top-1 agreement (None when
        not meaningful) and ``accuracy_drop`` = the reference accuracy minus the split's (None
        without labels); the rest keep the profiler's. Raises SplitInferError when the profile
        is of another model or has none of the measured (cut, codec) pairs."""
        if profile.fingerprint != self.fingerprint:
            raise SplitInferError(
                f"the profile is of {profile.model!r} (fingerprint {profile.fingerprint[:16]}…), "
                f"the fidelity run of {self.model!r} ({self.fingerprint[:16]}…): they are "
                "different models; profile the same bundle the fidelity run measured")
        measured = {(r.cut_id, r.codec): r for r in self.rows}
        done = total = 0
        cuts = []
        for cut in profile.cuts[:-1]:  # the device-only cut sends nothing: its codecs are moot
            costs = []
            for cost in cut.codecs:
                total += 1
                r = measured.get((cut.cut_id, cost.codec))
                if r is not None:
                    done += 1
                    drop = None if r.accuracy is None or self.reference_accuracy is None \
                        else self.reference_accuracy - r.accuracy
                    cost = replace(cost, error=r.error_p95, agreement=(
                        r.agreement if self.agreement_meaningful else None),
                        accuracy_drop=drop)
                costs.append(cost)
            cuts.append(replace(cut, codecs=tuple(costs)))
        if not done:
            raise SplitInferError(
                f"the profile has none of the {len(measured)} (cut, codec) pairs measured "
                f"(codecs {sorted({r.codec for r in self.rows})}); run the fidelity with the "
                "profile's codecs, or profile with the fidelity's")
        source = f"splitinfer fidelity: {self.n} inputs from {self.source or 'samples'}"
        if done < total:
            source += f" ({done} of {total} codec entries; the rest from the profiler's inputs)"
        return replace(profile, cuts=(*cuts, profile.cuts[-1]), error_source=source)


def _flat(out: Any) -> np.ndarray:
    """The model's answer (a tensor or a tuple of them) as one float64 row per sample."""
    parts = out if isinstance(out, (tuple, list)) else (out,)
    return np.concatenate([compare.as_float_batch(p) for p in parts], axis=1)


def _classes(out: Any) -> int | None:
    """K when the answer is one (1, K) tensor with K > 1 (a classifier's scores), else None."""
    parts = out if isinstance(out, (tuple, list)) else (out,)
    shape = tuple(parts[0].shape) if len(parts) == 1 else ()
    return shape[1] if len(shape) == 2 and shape[0] == 1 and shape[1] > 1 else None


def _check_cuts(sm: SplitModel, cut_ids: Sequence[int] | None) -> list[int]:
    last = len(sm.cuts) - 1
    if cut_ids is None:
        return list(range(last))
    ids = []
    for c in cut_ids:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < last:
            raise SplitInferError(f"cut {c!r}: expected a cut id from 0 to {last - 1} (cut "
                                  f"{last} is device-only: nothing crosses it)")
        ids.append(c)
    if not ids:
        raise SplitInferError("no cuts to measure: give at least one cut id, or None for all")
    return list(dict.fromkeys(ids))


def _check_samples(samples: Sequence[Sample], n_inputs: int) -> None:
    if not samples:
        raise SplitInferError("no samples to measure: give at least one input")
    for i, s in enumerate(samples):
        if not isinstance(s, Sample) or len(s.inputs) != n_inputs \
                or not all(isinstance(t, torch.Tensor) for t in s.inputs):
            raise SplitInferError(f"sample {i}: expected a Sample holding {n_inputs} torch "
                                  f"tensor(s), got {s!r:.120}")
        if s.label is not None and (isinstance(s.label, bool) or not isinstance(s.label, int)
                                    or s.label < 0):
            raise SplitInferError(f"sample {i}: label {s.label!r} is not a class index "
                                  "(an int >= 0)")


def _transmit(codec_name: str, tensors: Sequence[torch.Tensor]
              ) -> tuple[list[torch.Tensor], int] | None:
    """The tensors after encode + decode with ``codec_name``, and the bytes sent; None when
    the codec cannot carry one of them (``applies_to``)."""
    codec = get_codec(codec_name)
    if not codec.carries(tensors):
        return None
    encoded = [codec.encode(t, name=f"t{i}") for i, t in enumerate(tensors)]
    return [decode_torch(e) for e in encoded], sum(encoded_nbytes(e) for e in encoded)


@dataclass
class _Tally:
    errors: list[float] = field(default_factory=list)
    cosines: list[float] = field(default_factory=list)
    agree: int = 0
    correct: int = 0
    nbytes: int = 0


def _measure_cut(sm: SplitModel, cut_id: int, samples: Sequence[Sample],
                 refs: Sequence[np.ndarray], codecs: Sequence[str], notes: list[str],
                 refused: set[str]) -> dict[str, _Tally]:
    """The tallies of every codec that carried this cut for every sample; a codec that
    refused a tensor (``refused`` gets its name) has none: deployment could not use it."""
    head, tail = sm.head(cut_id), sm.tail(cut_id)
    tallies: dict[str, _Tally] = {}
    skipped: set[str] = set()
    for sample, ref in zip(samples, refs):
        crossing = head(*sample.inputs)
        for name in codecs:
            if name in skipped:
                continue
            try:
                sent = _transmit(name, crossing)
            except CodecError as exc:  # e.g. fp16 overflow: deployment would refuse it too
                notes.append(f"cut {cut_id}, {name}: refused: {exc}")
                refused.add(name)
                skipped.add(name)
                tallies.pop(name, None)
                continue
            if sent is None:
                skipped.add(name)
                continue
            decoded, nbytes = sent
            out = _flat(tail(*decoded))
            t = tallies.setdefault(name, _Tally())
            t.errors.append(float(compare.relative_error(ref, out)[0]))
            t.cosines.append(float(compare.cosine(ref, out)[0]))
            t.agree += int(compare.top1(out)[0] == compare.top1(ref)[0])
            t.correct += int(sample.label is not None and compare.top1(out)[0] == sample.label)
            t.nbytes += nbytes
    return tallies


def _row(sm: SplitModel, cut_id: int, codec: str, t: _Tally, labelled: bool) -> CodecFidelity:
    n = len(t.errors)
    errs = np.asarray(t.errors)
    return CodecFidelity(
        cut_id=cut_id, cut_name=sm.cuts[cut_id].name, codec=codec, n=n,
        error_p50=float(np.median(errs)), error_p95=float(np.percentile(errs, 95)),
        error_max=float(errs.max()), cosine_mean=float(np.mean(t.cosines)),
        cosine_min=float(np.min(t.cosines)), agreement=t.agree / n,
        accuracy=t.correct / n if labelled else None, request_bytes=t.nbytes / n)


def _reference(sm: SplitModel, samples: Sequence[Sample]
               ) -> tuple[list[np.ndarray], int | None]:
    """The unsplit model's answers (one float row each) and its class count (None: not a
    single (1, K) output)."""
    refs, classes = [], None
    for i, s in enumerate(samples):
        out = sm(*s.inputs)
        k = _classes(out)
        classes = k if i == 0 else (classes if k == classes else None)
        refs.append(_flat(out))
    return refs, classes


def measure_fidelity(sm: SplitModel, samples: Sequence[Sample], *,
                     codecs: Sequence[str] = DEFAULT_CODECS,
                     cut_ids: Sequence[int] | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     source: str = "") -> FidelityReport:
    """Run every sample through every (cut, codec) and compare with the unsplit model.

    ``codecs``: names (``get_codec``); a codec that cannot carry a cut's tensors is left out
    at that cut (the image codecs apply at cut 0 of image bundles only). ``cut_ids``: the
    cuts to measure (default: all but the device-only one). ``progress(done, total)`` is
    called after each cut. ``source`` says where the samples come from (the report keeps it;
    ``apply_to`` writes it into the profile's ``error_source``).
    """
    ids = _check_cuts(sm, cut_ids)
    _check_samples(samples, len(sm.input_specs))
    names = list(dict.fromkeys(codecs))
    if not names:
        raise SplitInferError("no codecs to measure: give at least one codec name")
    for name in names:
        get_codec(name)  # an unknown name fails here, before any work
    refs, classes = _reference(sm, samples)
    labelled = all(s.label is not None for s in samples)
    if labelled and classes is not None:
        for i, s in enumerate(samples):
            if s.label is not None and s.label >= classes:
                raise SplitInferError(f"sample {i}: label {s.label} is out of range: the model "
                                      f"answers {classes} classes (0..{classes - 1})")
    ref_top1 = [int(compare.top1(r)[0]) for r in refs]
    rows: list[CodecFidelity] = []
    notes: list[str] = []
    refused: set[str] = set()
    for done, cut_id in enumerate(ids, 1):
        tallies = _measure_cut(sm, cut_id, samples, refs, names, notes, refused)
        rows.extend(_row(sm, cut_id, n, tallies[n], labelled) for n in names if n in tallies)
        if progress is not None:
            progress(done, len(ids))
    used = {r.codec for r in rows}
    notes.extend(f"{n}: cannot carry the tensors of any measured cut" for n in names
                 if n not in used and n not in refused)
    distinct = len(set(ref_top1))
    n = len(samples)
    return FidelityReport(
        model=sm.name, fingerprint=sm.fingerprint, source=source, n=n, distinct_top1=distinct,
        agreement_meaningful=classes is not None and distinct >= min(MIN_DISTINCT_TOP1, n),
        reference_accuracy=(sum(int(t == s.label) for t, s in zip(ref_top1, samples)) / n
                            if labelled else None),
        rows=tuple(rows), notes=tuple(notes))
