"""Trained bottlenecks: a small encoder on the device side of a cut, its decoder on the edge side.

``train_bottleneck(sm, cut_id, inputs, channels)`` takes a bundle's model and a cut where one
float tensor crosses, and inserts

* an **encoder** right after the cut: a 1x1 convolution from C channels down to ``channels``
  (NCHW tensors), or a linear layer on the last dim (a (N, F) or (N, T, F) tensor);
* a **decoder** right after it, back up to C, on the edge side; the rest of the model is as it
  was.

Both start as the best linear pair for the activations (PCA over the inputs' head outputs:
the encoder projects on the top ``channels`` principal directions, the decoder maps back and
adds the mean), then train by **distillation**: the loss is the relative squared error of the
bottlenecked model's output against the unsplit model's own output on the same inputs, plus a
tenth of the relative reconstruction error of the cut's tensor. No labels are needed; the head
stays frozen, and so does the tail unless ``train_tail`` (then a copy of it is fine-tuned at a
tenth of the learning rate). With ``snr_db`` the encoder's
output gets uniform noise of the step ``ecq`` would use at that signal-to-noise ratio while
training, so the pair learns to survive the codec it will be sent with.

It returns a new SplitModel (captured again with torch.export: its own fingerprint) whose cut
``report.new_cut_id`` carries the ``channels``-wide tensor; ``save_bundle`` writes it as a new
bundle version. The new bundle takes the same inputs; an image bundle's normalization stays in
its graph, as ops (its manifest has no ``image_input``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence, cast

import torch
from torch import nn

from splitinfer.codec import snr_step
from splitinfer.core.errors import PartitionError

from .capture import usable_input_names
from .split_model import SplitModel, partition

__all__ = ["BottleneckReport", "train_bottleneck", "ENCODER", "DECODER"]

#: the module names of the inserted layers (the new cut is named after the encoder)
ENCODER, DECODER = "encoder", "decoder"
_RECON_WEIGHT = 0.1
_CHUNK = 64  # inputs run through the head at a time


@dataclass(frozen=True)
class BottleneckReport:
    """What ``train_bottleneck`` did. Errors are relative L2 errors of the model's output
    against the unsplit model's, median over the held-out inputs, without a codec: ``pca_error``
    after the PCA start, ``error`` of the weights kept: those of ``best_epoch``, the epoch with
    the lowest held-out error (0: the PCA start was never beaten)."""

    cut_id: int
    cut_name: str
    channels_in: int
    channels: int
    new_cut_id: int
    new_cut_name: str
    train_inputs: int
    held_out: int
    epochs: int
    best_epoch: int
    snr_db: float | None
    pca_error: float
    error: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Bottlenecked(nn.Module):
    """head -> encoder -> decoder -> tail, as one module to capture (``partition`` names its
    inputs as the original model's); its outputs keep the original's names."""

    def __init__(self, head: nn.Module, encoder: nn.Module, decoder: nn.Module,
                 tail: nn.Module, output_names: Sequence[str]) -> None:
        super().__init__()
        self.head, self.tail = head, tail
        setattr(self, ENCODER, encoder)
        setattr(self, DECODER, decoder)
        self.output_names = tuple(output_names)

    def forward(self, *inputs: torch.Tensor) -> Any:
        (crossing,) = tuple(self.head(*inputs))
        restored = getattr(self, DECODER)(getattr(self, ENCODER)(crossing))
        out = self.tail(restored)
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        if self.output_names == ("output",):
            return outs[0]
        return dict(zip(self.output_names, outs))  # named as the original's outputs


_Layer = nn.Conv2d | nn.Linear


def _layers(shape: Sequence[int], channels: int) -> tuple[_Layer, _Layer, int, int]:
    """(encoder, decoder, channel axis, C) for a crossing tensor of ``shape`` (batch first)."""
    if len(shape) == 4:
        c = int(shape[1])
        return nn.Conv2d(c, channels, 1), nn.Conv2d(channels, c, 1), 1, c
    if len(shape) in (2, 3):
        c = int(shape[-1])
        return nn.Linear(c, channels), nn.Linear(channels, c), len(shape) - 1, c
    raise PartitionError(f"a bottleneck needs an (N, C, H, W), (N, F) or (N, T, F) tensor at "
                         f"the cut; this one crosses shape {tuple(shape)}")


def _vectors(acts: torch.Tensor, axis: int) -> torch.Tensor:
    """The activations as rows of C values (one row per position)."""
    return acts.movedim(axis, -1).reshape(-1, acts.shape[axis]).double()


def _pca_init(encoder: _Layer, decoder: _Layer, acts: torch.Tensor, axis: int,
              channels: int) -> None:
    """Encoder = projection on the top ``channels`` principal directions (centred), decoder =
    back, plus the mean: the best linear pair for these activations."""
    rows = _vectors(acts, axis)
    if rows.shape[0] > 200_000:  # a sample is enough for a C x C covariance
        idx = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))
        rows = rows[idx[:200_000]]
    mean = rows.mean(0)
    cov = torch.cov((rows - mean).T)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    top = vecs[:, -channels:].flip(1)  # (C, k)
    assert encoder.bias is not None and decoder.bias is not None  # _layers makes them
    with torch.no_grad():
        enc_w, dec_w = top.T.float(), top.float()
        encoder.weight.copy_(enc_w.reshape(encoder.weight.shape))
        encoder.bias.copy_(-(top.T @ mean).float())
        decoder.weight.copy_(dec_w.reshape(decoder.weight.shape))
        decoder.bias.copy_(mean.float())


def _snr_step(z: torch.Tensor, snr_db: float) -> torch.Tensor:
    """ecq's step for each sample of ``z``: ``snr_step`` scales with the root mean square."""
    rms = z.detach().pow(2).flatten(1).mean(1).clamp_min(1e-30).sqrt()
    return (rms * snr_step(1.0, snr_db)).reshape(-1, *([1] * (z.dim() - 1)))


def _rel_err(ref: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per-sample relative L2 error of ``out`` against ``ref``."""
    num = (out - ref).flatten(1).norm(dim=1)
    return cast(torch.Tensor, num / ref.flatten(1).norm(dim=1).clamp_min(1e-12))


def _first(out: Any) -> torch.Tensor:
    return cast(torch.Tensor, out[0] if isinstance(out, (tuple, list)) else out)


def train_bottleneck(sm: SplitModel, cut_id: int | str, inputs: Sequence[Sequence[torch.Tensor]],
                     channels: int, *, epochs: int = 30, lr: float = 3e-3,
                     batch_size: int = 32, snr_db: float | None = None, held_out: float = 0.2,
                     train_tail: bool = False, seed: int = 0,
                     progress: Callable[[int, float], None] | None = None
                     ) -> tuple[SplitModel, BottleneckReport]:
    """Train a ``channels``-wide bottleneck at ``cut_id`` of ``sm`` on ``inputs`` (each one
    sample: a tuple of tensors, one per model input, batch dim 1), by distillation against
    ``sm``'s own outputs; see the module docstring. ``held_out`` of the inputs (the last ones)
    measure the error and never train. ``train_tail``: the tail (a copy: ``sm`` is never
    changed) learns too, at a tenth of ``lr``; the head always stays as it is (the device
    runs what it ran, plus the encoder). ``progress(epoch, loss)`` is called after each epoch.
    Returns (the new SplitModel, its report). PartitionError names what does not fit."""
    started = time.perf_counter()
    cut = sm.cut(cut_id)
    if cut.id in (0, len(sm.cuts) - 1):
        raise PartitionError(f"cut {cut.id} is the model's {'input' if cut.id == 0 else 'output'}"
                             "; a bottleneck goes between two layers")
    if len(cut.tensors) != 1 or not cut.tensors[0].dtype.startswith(("float", "bfloat")):
        raise PartitionError(f"cut {cut.id} ({cut.name}) crosses {len(cut.tensors)} tensor(s) "
                             f"({', '.join(t.dtype for t in cut.tensors)}); a bottleneck goes "
                             "where one float tensor crosses: pick another cut")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise PartitionError(f"channels is {channels!r}; expected an int >= 1")
    for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise PartitionError(f"{name} is {value!r}; expected an int >= {low}")
    if not 0 <= held_out < 1:
        raise PartitionError(f"held_out is {held_out!r}; expected a fraction in [0, 1)")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise PartitionError(f"lr is {lr!r}; expected a number > 0")
    if snr_db is not None and not 0 < snr_db < math.inf:
        raise PartitionError(f"snr_db is {snr_db!r}; expected a number > 0 or None")
    samples = [tuple(x) for x in inputs]
    n_test = int(len(samples) * held_out)
    if len(samples) - n_test < 2 or (held_out and n_test < 1):
        raise PartitionError(f"{len(samples)} inputs: too few to train and hold out "
                             f"{held_out:.0%}; give at least {max(3, int(2 / (1 - held_out)))}")
    head_gm = cast(nn.Module, sm.head(cut.id).graph_module)
    tail_gm = cast(nn.Module, sm.tail(cut.id).graph_module)
    if train_tail:
        tail_gm = copy.deepcopy(tail_gm)
    for p in list(head_gm.parameters()) + list(tail_gm.parameters()):
        p.requires_grad_(False)
    with torch.no_grad():  # in chunks: the head's own intermediates of every input at once
        parts, outs = [], []  # would be many times the activations kept
        for start in range(0, len(samples), _CHUNK):
            chunk = samples[start:start + _CHUNK]
            batch = [torch.cat([s[i] for s in chunk]) for i in range(len(chunk[0]))]
            parts.append(_first(head_gm(*batch)).contiguous())
            outs.append(_first(tail_gm(parts[-1])).detach())
        acts, teacher = torch.cat(parts), torch.cat(outs)
        del parts, outs
    encoder, decoder, axis, c_in = _layers(acts.shape, channels)
    if channels >= c_in:
        raise PartitionError(f"channels {channels} is not fewer than the {c_in} the cut "
                             "carries: a bottleneck must narrow it")
    torch.manual_seed(seed)
    train = slice(0, len(samples) - n_test)
    test = slice(len(samples) - n_test, len(samples)) if n_test else train
    _pca_init(encoder, decoder, acts[train], axis, channels)

    def run(a: torch.Tensor, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        z = encoder(a)
        if noisy and snr_db is not None:
            z = z + (torch.rand_like(z) - 0.5) * _snr_step(z, snr_db)
        restored = decoder(z)
        return _first(tail_gm(restored)), restored

    def held_error() -> float:
        held_acts, held_ref = acts[test], teacher[test]
        with torch.no_grad():
            errs = [_rel_err(held_ref[i:i + _CHUNK], run(held_acts[i:i + _CHUNK], False)[0])
                    for i in range(0, held_acts.shape[0], _CHUNK)]
        return float(torch.cat(errs).median())

    pca_error = held_error()
    params: list[torch.Tensor] = [*encoder.parameters(), *decoder.parameters()]
    groups: list[dict[str, Any]] = [{"params": params, "lr": lr}]
    if train_tail:
        # a captured graph holds its weights as buffers; BatchNorm's statistics stay fixed
        tail_params = [w for n, w in tail_gm.named_buffers()
                       if w.is_floating_point() and "running_" not in n]
        for w in tail_params:
            w.requires_grad_(True)
        groups.append({"params": tail_params, "lr": lr / 10})
        params = params + tail_params
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    a_train, t_train = acts[train], teacher[train]
    t_power = t_train.pow(2).mean().clamp_min(1e-30)
    a_power = a_train.pow(2).mean().clamp_min(1e-30)
    gen = torch.Generator().manual_seed(seed)
    # the weights at the lowest held-out error win (the PCA start included): training on few
    # inputs, or with much noise, can make things worse, and then it is not kept
    best = (pca_error, 0, [w.detach().clone() for w in params])
    for epoch in range(epochs):
        order = torch.randperm(a_train.shape[0], generator=gen)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out, restored = run(a_train[idx], noisy=True)
            loss = (out - t_train[idx]).pow(2).mean() / t_power \
                + _RECON_WEIGHT * (restored - a_train[idx]).pow(2).mean() / a_power
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        now = held_error()
        if now < best[0]:
            best = (now, epoch + 1, [w.detach().clone() for w in params])
        if progress is not None:
            progress(epoch + 1, total / a_train.shape[0])
    error, best_epoch, weights = best
    with torch.no_grad():
        for w, kept in zip(params, weights):
            w.copy_(kept)
    encoder.eval()
    decoder.eval()
    for w in params:
        w.requires_grad_(False)
    model = _Bottlenecked(head_gm, encoder, decoder, tail_gm,
                          [s.name for s in sm.output_specs]).eval()
    names = [s.name for s in sm.input_specs]
    new = partition(model, sm.example_inputs, name=sm.name, capture="export",
                    max_cut_tensors=sm.max_cut_tensors,
                    input_names=names if usable_input_names(names) else None)
    new_cut = _encoder_cut(new, channels, axis)
    return new, BottleneckReport(
        cut_id=cut.id, cut_name=cut.name, channels_in=c_in, channels=channels,
        new_cut_id=new_cut.id, new_cut_name=new_cut.name, train_inputs=train.stop - train.start,
        held_out=n_test, epochs=epochs, best_epoch=best_epoch, snr_db=snr_db,
        pca_error=pca_error, error=error,
        seconds=round(time.perf_counter() - started, 2))


def _encoder_cut(sm: SplitModel, channels: int, axis: int) -> Any:
    """The new model's cut right after the encoder: one tensor, ``channels`` wide."""
    for cut in sm.cuts:
        if cut.name.split("#")[0] == ENCODER and len(cut.tensors) == 1 \
                and int(cut.tensors[0].shape[axis]) == channels:
            return cut
    raise PartitionError(f"the bottlenecked model has no cut after its {ENCODER} carrying "
                         f"{channels} channels (cuts: {[c.name for c in sm.cuts][:12]}…)")
