"""What a bundle says about itself: ``manifest.json``, read and checked without torch.

A bundle is a directory::

    manifest.json   name, version, fingerprint, input/output specs, cuts, file checksums,
                    and for an image bundle ``image_input`` (uint8 NHWC frames, mean/std)
    program.pt2     the captured program (torch.export format; no pickled Python classes)
    examples.pt     the example inputs (tensors only; loaded with weights_only=True)

``read_manifest`` parses and checks the manifest alone (no torch), so a device without torch can
still plan and connect; ``verify_files`` checks every file's size and sha256 against it.
Writing and loading the program is :mod:`splitinfer.model.bundle`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitinfer.core.errors import BundleError
from splitinfer.core.spec import Cut, TensorSpec

from .image_input import ImageInput

__all__ = ["Manifest", "read_manifest", "verify_files", "sha256_file", "write_text_atomic",
           "check_name", "check_image_spec",
           "FORMAT", "FORMAT_VERSION", "MANIFEST", "PROGRAM", "EXAMPLES"]

FORMAT = "splitinfer-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRAM = "program.pt2"
EXAMPLES = "examples.pt"
_MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class Manifest:
    """What a bundle says about itself (the parsed ``manifest.json``)."""

    name: str
    version: str
    fingerprint: str
    capture: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    cuts: tuple[Cut, ...]
    files: dict[str, dict[str, Any]]
    max_cut_tensors: int
    torch_version: str = ""
    #: how the bundle's uint8 NHWC frame input is normalized; None: not an image bundle
    image_input: ImageInput | None = None

    def to_json(self) -> dict[str, Any]:
        extra = {} if self.image_input is None else {"image_input": self.image_input.to_json()}
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "name": self.name, "version": self.version, "fingerprint": self.fingerprint,
            "capture": self.capture, "torch_version": self.torch_version,
            "max_cut_tensors": self.max_cut_tensors,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "cuts": [c.to_json() for c in self.cuts],
            "files": self.files,
            **extra,
        }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a
    failure (a full disk, a kill) leaves the old file whole and no temporary file behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 128 or \
            not all(c.isalnum() or c in "-_." for c in value) or value.startswith("."):
        raise BundleError(f"bad {what} {value!r}: use 1-128 characters from letters, digits, "
                          "'-', '_' and '.', not starting with '.'")
    return value


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Parse and check ``manifest.json`` (no torch needed). Raises BundleError."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{directory}: no {MANIFEST}; is this a bundle directory? "
                          "(make one with `splitinfer export`)")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: {path.stat().st_size} bytes, over the "
                          f"{_MAX_MANIFEST_BYTES}-byte limit for a manifest")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); the bundle is corrupt") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise BundleError(f"{path}: not a splitinfer manifest (format is "
                          f"{obj.get('format') if isinstance(obj, dict) else type(obj)!r}, "
                          f"expected {FORMAT!r})")
    if obj.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {obj.get('format_version')!r} is not "
                          f"supported (this splitinfer reads {FORMAT_VERSION}); re-export it")
    try:
        manifest = Manifest(
            name=check_name("model name", obj["name"]),
            version=check_name("model version", obj["version"]),
            fingerprint=str(obj["fingerprint"]), capture=str(obj["capture"]),
            inputs=tuple(TensorSpec.from_json(s) for s in obj["inputs"]),
            outputs=tuple(TensorSpec.from_json(s) for s in obj["outputs"]),
            cuts=tuple(Cut.from_json(c) for c in obj["cuts"]),
            files=dict(obj["files"]), max_cut_tensors=int(obj["max_cut_tensors"]),
            torch_version=str(obj.get("torch_version", "")),
            image_input=_image_input(path, obj.get("image_input")))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: missing or malformed field ({type(exc).__name__}: {exc})"
                          ) from exc
    if manifest.image_input is not None:
        check_image_spec(path, manifest.inputs, manifest.image_input)
    if [c.id for c in manifest.cuts] != list(range(len(manifest.cuts))) or not manifest.cuts:
        raise BundleError(f"{path}: cut ids must be 0..N-1 in order")
    for fname in (PROGRAM, EXAMPLES):
        entry = manifest.files.get(fname)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or \
                not isinstance(entry.get("bytes"), int):
            raise BundleError(f"{path}: files[{fname!r}] must have 'sha256' and 'bytes'")
    return manifest


def _image_input(path: Path, obj: Any) -> ImageInput | None:
    if obj is None:  # bundles from before image inputs have no field: not an image bundle
        return None
    try:
        return ImageInput.from_json(obj)
    except ValueError as exc:
        raise BundleError(f"{path}: bad image_input ({exc}); re-export the bundle") from exc


def check_image_spec(where: Any, inputs: tuple[TensorSpec, ...], image: ImageInput) -> None:
    """Raise BundleError unless ``inputs`` are one uint8 (N, H, W, C) frame that ``image`` fits."""
    spec = inputs[0] if len(inputs) == 1 else None
    if spec is None or spec.dtype != "uint8" or len(spec.shape) != 4 or \
            spec.shape[3] not in (1, 3, 4) or image.channels not in (1, spec.shape[3]):
        got = [f"{s.name}: {s.dtype}{list(s.shape)}" for s in inputs]
        raise BundleError(f"{where}: image_input needs one uint8 NHWC input with "
                          f"{image.channels} channel(s), the bundle's inputs are {got}; the "
                          "manifest is inconsistent, re-export the bundle")


def verify_files(directory: Path, manifest: Manifest) -> None:
    for fname, entry in manifest.files.items():
        path = directory / fname
        if os.sep in fname or fname.startswith("."):
            raise BundleError(f"{directory}: bad file name {fname!r} in the manifest")
        if not path.is_file():
            raise BundleError(f"{directory}: {fname} is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(f"{path}: {size} bytes, the manifest says {entry['bytes']}; "
                              "the file is truncated or was replaced")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise BundleError(f"{path}: sha256 {digest[:16]}… does not match the manifest "
                              f"({entry['sha256'][:16]}…); the file is corrupt or altered")
