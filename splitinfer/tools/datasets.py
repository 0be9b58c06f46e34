"""The user's own inputs for ``splitinfer fidelity``: a folder of images or ``MODULE:FUNCTION``.

``load_samples(spec, sm)`` reads

* a folder of images (``*.jpg``, ``*.jpeg``, ``*.png``, ``*.bmp``, ``*.webp``; names starting
  with "." are ignored): images in the folder itself carry no labels; images in
  ``DIR/<class>/`` subfolders are labelled with the position of ``<class>`` among the sorted
  subfolder names (torchvision ``ImageFolder``'s convention);
* ``MODULE:FUNCTION`` (e.g. ``splitinfer.tools.frames:sample_frames``): called without
  arguments, it returns an iterable of inputs or ``(input, label)`` pairs; an input is a numpy
  array, a torch tensor, or a tuple of them (one per model input).

Images are made to fit the bundle. A bundle that takes a uint8 NHWC frame (an image bundle:
``export --image-input``) gets the frame resized (shorter side to fit, centre crop) to its
H x W; a bundle that takes float (N, 3, H, W) gets it resized, then normalized with ImageNet's
mean and std (``frames.normalized``). A uint8 (H, W, C) array from a function is an image too;
anything else is passed as it is, a batch dim added where missing, and checked against the
bundle's input specs. Every bad input is a SplitInferError naming the file or item.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch

from splitinfer.core.errors import SplitInferError
from splitinfer.core.spec import DYNAMIC, TensorSpec
from splitinfer.measure.fidelity import Sample

from .factory import load_object
from .frames import normalized, resize_crop

if TYPE_CHECKING:
    from splitinfer.model.split_model import SplitModel

__all__ = ["load_samples", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class _ImageFit:
    """How an image becomes the bundle's one input: its size, channels and layout."""

    def __init__(self, spec: TensorSpec, example: torch.Tensor) -> None:
        self.nhwc = spec.dtype == "uint8"
        dims = (1, 2) if self.nhwc else (2, 3)
        self.size = tuple(int(example.shape[d]) if spec.shape[d] == DYNAMIC else spec.shape[d]
                          for d in dims)
        self.channels = spec.shape[3] if self.nhwc else spec.shape[1]

    def __call__(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, C) -> the bundle's input, batch of 1."""
        frame = resize_crop(frame, self.size)
        if self.nhwc:
            return torch.from_numpy(frame[None].copy())  # Pillow's arrays are read-only
        return torch.from_numpy(normalized(frame[None]))


def _image_fit(sm: SplitModel) -> _ImageFit | None:
    """An _ImageFit when the bundle takes one image (uint8 NHWC with 1, 3 or 4 channels, or
    float NCHW with 3), else None."""
    if len(sm.input_specs) != 1:
        return None
    spec = sm.input_specs[0]
    if len(spec.shape) != 4:
        return None
    if spec.dtype == "uint8" and spec.shape[3] in _MODES:
        return _ImageFit(spec, sm.example_inputs[0])
    if spec.dtype in ("float32", "float16", "bfloat16", "float64") and spec.shape[1] == 3:
        return _ImageFit(spec, sm.example_inputs[0])
    return None


def _read_image(path: Path, channels: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert(_MODES[channels]), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SplitInferError(f"cannot read image {path}: {exc}; expected a JPEG, PNG, BMP "
                              "or WebP file") from exc
    return arr[..., None] if arr.ndim == 2 else arr


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def _folder_items(root: Path) -> list[tuple[Path, int | None]]:
    """(image path, label) in order: sorted files, or class by class, round robin so that a
    ``limit`` takes from every class."""
    files = sorted(p for p in root.iterdir() if _is_image(p))
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if files and classes:
        raise SplitInferError(f"{root} holds both images and subfolders "
                              f"({files[0].name}, {classes[0].name}/): put every image in a "
                              "class subfolder (labelled) or none in subfolders (unlabelled)")
    if files:
        return [(p, None) for p in files]
    per_class = []
    for label, folder in enumerate(classes):
        images = sorted(p for p in folder.rglob("*") if _is_image(p))
        if not images:
            raise SplitInferError(f"class folder {folder} has no images "
                                  f"({', '.join(IMAGE_SUFFIXES)}); add some or remove it")
        per_class.append([(p, label) for p in images])
    items = [x for group in itertools.zip_longest(*per_class) for x in group if x is not None]
    if not items:
        raise SplitInferError(f"{root} has no images ({', '.join(IMAGE_SUFFIXES)}) and no class "
                              "subfolders")
    return items


def _from_folder(root: Path, sm: SplitModel, limit: int | None) -> list[Sample]:
    fit = _image_fit(sm)
    if fit is None:
        raise SplitInferError(f"{sm.name} does not take images: its inputs are "
                              f"{_describe(sm.input_specs)}; images fit uint8 (N, H, W, C) or "
                              f"float (N, 3, H, W). Give MODULE:FUNCTION returning its inputs")
    items = _folder_items(root)[:limit]
    return [Sample((fit(_read_image(path, fit.channels)),), label) for path, label in items]


def _describe(specs: Iterable[TensorSpec]) -> str:
    return ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in specs)


def _load_function(spec: str) -> Any:
    where = f"--data {spec!r}: "
    fn = load_object(spec, prefix=where, bad_form=f"{where}not a folder, and not "
                     "MODULE:FUNCTION (e.g. splitinfer.tools.frames:sample_frames)")
    if not callable(fn):
        raise SplitInferError(f"{where}{spec.partition(':')[2]!r} is not a function")
    return fn


def _array_like(x: Any) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def _split_item(item: Any, n_inputs: int, where: str) -> tuple[tuple[Any, ...], Any]:
    """(inputs, label or None) of one item: an input, a tuple of inputs, or (that, label)."""
    if _array_like(item):
        return (item,), None
    if isinstance(item, (tuple, list)):
        if len(item) == 2 and (not _array_like(item[1]) or item[1].ndim == 0):
            first = item[0]
            if _array_like(first):
                return (first,), item[1]
            if isinstance(first, (tuple, list)):
                return tuple(first), item[1]
        if all(_array_like(x) for x in item):
            return tuple(item), None
    raise SplitInferError(f"{where}: got {type(item).__name__}; expected an input (numpy array "
                          f"or torch tensor), a tuple of {n_inputs}, or (input, label)")


def _label(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.ndim == 0 and value.dtype != torch.bool \
            and not value.is_floating_point() and not value.is_complex():
        value = int(value.item())
    elif isinstance(value, (np.ndarray, np.generic)) and value.ndim == 0 \
            and value.dtype.kind in "iu":
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SplitInferError(f"{where}: label {value!r} is not a class index; expected an "
                              "int >= 0")
    return value


def _to_input(x: Any, spec: TensorSpec, fit: _ImageFit | None, where: str) -> torch.Tensor:
    """One input as the bundle takes it: an image fitted, anything else given a batch dim
    where it lacks one and checked against ``spec``."""
    if not _array_like(x):
        raise SplitInferError(f"{where}: input {spec.name!r} is a {type(x).__name__}; expected "
                              "a numpy array or a torch tensor")
    t = torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x.detach().cpu()
    if fit is not None and t.dtype == torch.uint8 and t.ndim in (3, 4) \
            and (t.ndim == 3 or t.shape[0] == 1) and t.shape[-1] in _MODES:
        frame = t.numpy()[0] if t.ndim == 4 else t.numpy()
        if frame.shape[2] != fit.channels:
            raise SplitInferError(f"{where}: image of {frame.shape[2]} channel(s); {spec.name!r} "
                                  f"takes {fit.channels}")
        return fit(frame)
    if t.ndim == len(spec.shape) - 1:
        t = t.unsqueeze(0)
    dtype = str(t.dtype).removeprefix("torch.")
    if not spec.matches(tuple(t.shape), dtype) or t.shape[0] != 1:
        raise SplitInferError(f"{where}: input {spec.name!r} is {list(t.shape)}:{dtype}; the "
                              f"bundle takes {list(spec.shape)}:{spec.dtype} (-1: any size), "
                              "batch of 1")
    return t.contiguous()


def _from_function(spec: str, sm: SplitModel, limit: int | None) -> list[Sample]:
    fn = _load_function(spec)
    try:
        items = fn()
    except Exception as exc:  # the user's code: say whose call failed, keep the cause
        raise SplitInferError(f"--data {spec!r}: calling it failed: {type(exc).__name__}: "
                              f"{exc}") from exc
    try:
        iterator = iter(items)
    except TypeError as exc:
        raise SplitInferError(f"--data {spec!r} returned a {type(items).__name__}; expected "
                              "an iterable of inputs or (input, label) pairs") from exc
    fit = _image_fit(sm)
    samples: list[Sample] = []
    for i, item in enumerate(itertools.islice(iterator, limit)):
        where = f"--data {spec!r}, item {i}"
        inputs, label = _split_item(item, len(sm.input_specs), where)
        if len(inputs) != len(sm.input_specs):
            raise SplitInferError(f"{where}: {len(inputs)} input(s); {sm.name} takes "
                                  f"{len(sm.input_specs)}: {_describe(sm.input_specs)}")
        sample = Sample(tuple(_to_input(x, s, fit, where) for x, s in zip(inputs, sm.input_specs)),
                        _label(label, where))
        if samples and (sample.label is None) != (samples[0].label is None):
            raise SplitInferError(f"{where}: {'no' if sample.label is None else 'a'} label, "
                                  f"item 0 {'has one' if sample.label is None else 'none'}; "
                                  "label every item or none")
        samples.append(sample)
    return samples


def load_samples(spec: str, sm: SplitModel, limit: int | None = None) -> list[Sample]:
    """The samples ``spec`` names (a folder of images or ``MODULE:FUNCTION``), fitted to
    ``sm``'s input, the first ``limit`` of them (all when None). SplitInferError on bad input
    (unreadable image, wrong shape or dtype, empty folder, bad MODULE:FUNCTION, label not an
    int)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise SplitInferError(f"limit {limit!r}: expected None (all) or an int >= 1")
    path = Path(spec)
    if path.is_dir():
        samples = _from_folder(path, sm, limit)
    elif path.exists():
        raise SplitInferError(f"--data {spec!r} is a file; give a folder of images or "
                              "MODULE:FUNCTION")
    else:
        samples = _from_function(spec, sm, limit)
    if not samples:
        raise SplitInferError(f"--data {spec!r} gave no inputs; expected at least one")
    return samples
