"""Write and read a model bundle: the exported program, example inputs and a manifest.

A bundle is a directory::

    manifest.json   name, version, fingerprint, input/output specs, cuts, file checksums
    program.pt2     the captured program (torch.export format; no pickled Python classes)
    examples.pt     the example inputs (tensors only; loaded with weights_only=True)

``load_bundle`` rebuilds the :class:`~splitinfer.partition.SplitModel` without the model's
Python class and refuses a bundle whose files are missing, truncated, altered, or whose program
does not match the manifest (fingerprint or cuts). Reading the manifest alone
(``read_manifest``) needs no torch, so a device without torch can still plan and connect.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import BundleError
from .spec import Cut, TensorSpec

__all__ = ["Manifest", "read_manifest", "save_bundle", "load_bundle", "export_bundle",
           "FORMAT", "FORMAT_VERSION"]

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

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "name": self.name, "version": self.version, "fingerprint": self.fingerprint,
            "capture": self.capture, "torch_version": self.torch_version,
            "max_cut_tensors": self.max_cut_tensors,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "cuts": [c.to_json() for c in self.cuts],
            "files": self.files,
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_name(what: str, value: Any) -> str:
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
            name=_check_name("model name", obj["name"]),
            version=_check_name("model version", obj["version"]),
            fingerprint=str(obj["fingerprint"]), capture=str(obj["capture"]),
            inputs=tuple(TensorSpec.from_json(s) for s in obj["inputs"]),
            outputs=tuple(TensorSpec.from_json(s) for s in obj["outputs"]),
            cuts=tuple(Cut.from_json(c) for c in obj["cuts"]),
            files=dict(obj["files"]), max_cut_tensors=int(obj["max_cut_tensors"]),
            torch_version=str(obj.get("torch_version", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: missing or malformed field ({type(exc).__name__}: {exc})"
                          ) from exc
    if [c.id for c in manifest.cuts] != list(range(len(manifest.cuts))) or not manifest.cuts:
        raise BundleError(f"{path}: cut ids must be 0..N-1 in order")
    for fname in (PROGRAM, EXAMPLES):
        entry = manifest.files.get(fname)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or \
                not isinstance(entry.get("bytes"), int):
            raise BundleError(f"{path}: files[{fname!r}] must have 'sha256' and 'bytes'")
    return manifest


def _verify_files(directory: Path, manifest: Manifest) -> None:
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
        digest = _sha256(path)
        if digest != entry["sha256"]:
            raise BundleError(f"{path}: sha256 {digest[:16]}… does not match the manifest "
                              f"({entry['sha256'][:16]}…); the file is corrupt or altered")


def save_bundle(sm: Any, directory: str | os.PathLike[str], *, name: str | None = None,
                version: str = "1", overwrite: bool = False) -> Manifest:
    """Write ``sm`` (a SplitModel captured with torch.export) as a bundle in ``directory``.

    The bundle is written to a temporary directory next to it and renamed into place, so a
    crash never leaves a half-written bundle under the final name.
    """
    import torch

    from .capture import serialize_program

    if sm.program is None:
        raise BundleError(f"model {sm.name!r} was captured with torch.fx (torch.export failed: "
                          f"{sm.export_error}); bundles need a torch.export capture. Make the "
                          "model exportable, then export again.")
    name = _check_name("model name", name or sm.name)
    version = _check_name("model version", str(version))
    target = Path(directory)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise BundleError(f"{target} exists and is not empty; choose another directory or "
                          "pass overwrite=True (--force)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        (tmp / PROGRAM).write_bytes(serialize_program(sm.program))
        buf = io.BytesIO()
        torch.save([t.detach().cpu() for t in sm.example_inputs], buf)
        (tmp / EXAMPLES).write_bytes(buf.getvalue())
        files = {f: {"sha256": _sha256(tmp / f), "bytes": (tmp / f).stat().st_size}
                 for f in (PROGRAM, EXAMPLES)}
        manifest = Manifest(name=name, version=version, fingerprint=sm.fingerprint,
                            capture=sm.capture, inputs=tuple(sm.input_specs),
                            outputs=tuple(sm.output_specs), cuts=tuple(sm.cuts), files=files,
                            max_cut_tensors=sm.max_cut_tensors,
                            torch_version=torch.__version__)
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def load_bundle(directory: str | os.PathLike[str]) -> Any:
    """Rebuild the SplitModel stored in ``directory``; refuses anything that does not check out."""
    import torch

    from .capture import Captured, deserialize_program
    from .partition import SplitModel

    directory = Path(directory)
    manifest = read_manifest(directory)
    _verify_files(directory, manifest)
    try:
        program = deserialize_program((directory / PROGRAM).read_bytes())
    except Exception as exc:  # torch raises zip, JSON and serde errors alike
        raise BundleError(f"{directory / PROGRAM}: cannot be loaded ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); re-export the bundle") from exc
    try:
        examples = torch.load(io.BytesIO((directory / EXAMPLES).read_bytes()),
                              weights_only=True)
        if not isinstance(examples, list) or not all(isinstance(t, torch.Tensor)
                                                     for t in examples):
            raise TypeError(f"expected a list of tensors, got {type(examples).__name__}")
    except Exception as exc:
        raise BundleError(f"{directory / EXAMPLES}: cannot be loaded ({exc})") from exc
    captured = Captured("export", program.graph_module, program,
                        [s.name for s in manifest.outputs])
    try:
        sm = SplitModel(captured, examples, name=manifest.name,
                        max_cut_tensors=manifest.max_cut_tensors,
                        cut_names=[c.name for c in manifest.cuts])
    except Exception as exc:
        raise BundleError(f"{directory}: the program does not match its manifest "
                          f"({type(exc).__name__}: {exc})") from exc
    if sm.fingerprint != manifest.fingerprint:
        raise BundleError(f"{directory}: manifest fingerprint {manifest.fingerprint[:16]}… "
                          f"does not match the program's {sm.fingerprint[:16]}…; the program "
                          "was replaced or the manifest belongs to another model")
    for mine, theirs in zip(sm.cuts, manifest.cuts):
        if mine.tensors != theirs.tensors:
            raise BundleError(f"{directory}: cut {theirs.id} ({theirs.name}) in the manifest "
                              f"crosses {[t.name for t in theirs.tensors]}, the program "
                              f"{[t.name for t in mine.tensors]}; re-export the bundle")
    if len(sm.cuts) != len(manifest.cuts) or sm.input_specs != manifest.inputs or \
            sm.output_specs != manifest.outputs:
        raise BundleError(f"{directory}: the program's cuts or input/output specs differ "
                          "from the manifest; re-export the bundle")
    sm.version = manifest.version
    sm.manifest = manifest
    return sm


def export_bundle(model: Any, example_inputs: Sequence[Any], directory: str | os.PathLike[str],
                  *, name: str | None = None, version: str = "1", overwrite: bool = False,
                  **partition_kwargs: Any) -> Manifest:
    """Partition ``model`` and write it as a bundle in one step."""
    from .partition import partition

    sm = partition(model, example_inputs, name=name, capture="export", **partition_kwargs)
    return save_bundle(sm, directory, name=name, version=version, overwrite=overwrite)
