"""Run a bundle's exported ONNX heads and tails with ONNX Runtime: the device's torch-free path.

Compute module: no network, and no torch (numpy and onnxruntime only). A device directory needs
just ``manifest.json`` and ``onnx/`` (``splitinfer export --onnx --cut ID`` writes them; the
torch program may be left out). ``OnnxSegments`` checks the index against the manifest and every
file's size and sha256 before it runs anything, so a head from another model, or a truncated
or altered file, is refused with a BundleError naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from splitinfer.core.errors import BundleError, InvalidRequest, NotFound
from splitinfer.core.spec import TensorSpec, check_tensors
from splitinfer.model.manifest import Manifest, read_manifest

__all__ = ["OnnxSegments"]

log = logging.getLogger(__name__)

_INDEX_FORMAT = "splitinfer-onnx"  # splitinfer.model.onnx_export.INDEX_FORMAT (that module needs torch)
_INDEX_FORMAT_VERSION = 1
_MAX_INDEX_BYTES = 4 << 20


class OnnxSegments:
    """The ONNX heads (and tails) of one bundle, run with ONNX Runtime.

    ``providers``: ONNX Runtime execution providers (default: CPU). ``threads``: intra-op
    threads per session (default: ONNX Runtime's choice). Sessions are made on first use.
    """

    def __init__(self, bundle_dir: str | os.PathLike[str], *,
                 providers: Sequence[Any] | None = None, threads: int | None = None) -> None:
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
        self.directory = Path(bundle_dir)
        self.manifest: Manifest = read_manifest(self.directory)
        self._onnx_dir = self.directory / "onnx"
        self._entries = _read_index(self._onnx_dir, self.manifest)
        self._providers = list(providers) if providers else ["CPUExecutionProvider"]
        self._threads = threads
        self._sessions: dict[tuple[int, str], Any] = {}
        self._lock = threading.Lock()

    @property
    def cut_ids(self) -> tuple[int, ...]:
        """Cuts with an exported head, in id order."""
        return tuple(sorted(c for c, e in self._entries.items() if e.get("head")))

    def has_tail(self, cut_id: int) -> bool:
        """True when a tail was exported for ``cut_id``."""
        return bool(self._entries.get(cut_id, {}).get("tail"))

    def run_head(self, cut_id: int, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """The model inputs → the tensors that cross ``cut_id``, in the cut's tensor order."""
        cut = self._cut(cut_id, "head")
        arrays = _check_inputs(self.manifest.inputs, inputs, f"head of cut {cut_id}")
        if self._entries[cut_id]["head"].get("identity"):
            by_name = {s.name: a for s, a in zip(self.manifest.inputs, arrays)}
            return tuple(by_name[t.name] for t in cut.tensors)
        return self._run(cut_id, "head", self.manifest.inputs, cut.tensors, arrays)

    def run_tail(self, cut_id: int, crossing: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """The tensors that cross ``cut_id`` → the model outputs, in output-spec order."""
        cut = self._cut(cut_id, "tail")
        arrays = _check_inputs(cut.tensors, crossing, f"tail of cut {cut_id}")
        return self._run(cut_id, "tail", cut.tensors, self.manifest.outputs, arrays)

    # -- internals --------------------------------------------------------------------------
    def _cut(self, cut_id: int, part: str) -> Any:
        entry = self._entries.get(cut_id) if isinstance(cut_id, int) else None
        if not entry or not entry.get(part):
            have = [c for c, e in sorted(self._entries.items()) if e.get(part)]
            raise NotFound(f"{self.directory}: no ONNX {part} for cut {cut_id!r} (exported "
                           f"{part}s: {have}); add it with `splitinfer export --from-bundle "
                           f"DIR --onnx --cut {cut_id}`" +
                           (" (a tail needs torch on the exporting machine, not here)"
                            if part == "tail" else ""))
        return self.manifest.cuts[cut_id]

    def _run(self, cut_id: int, part: str, in_specs: Sequence[TensorSpec],
             out_specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]
             ) -> tuple[np.ndarray, ...]:
        session = self._session(cut_id, part)
        feed = {s.name: a for s, a in zip(in_specs, arrays)}
        try:
            outs = session.run([s.name for s in out_specs], feed)
        except Exception as exc:  # onnxruntime's own error types; shapes that do not fit
            shapes = [list(a.shape) for a in arrays]
            raise InvalidRequest(f"{part} of cut {cut_id}: ONNX Runtime refused inputs of "
                                 f"shapes {shapes} ({exc})") from exc
        return tuple(outs)

    def _session(self, cut_id: int, part: str) -> Any:
        key = (cut_id, part)
        with self._lock:  # one session per file, even when threads race to make it
            if key not in self._sessions:
                import onnxruntime as ort

                options = ort.SessionOptions()
                if self._threads is not None:
                    options.intra_op_num_threads = self._threads
                path = self._onnx_dir / self._entries[cut_id][part]["file"]
                try:
                    self._sessions[key] = ort.InferenceSession(str(path), options,
                                                               providers=self._providers)
                except Exception as exc:
                    raise BundleError(f"{path}: ONNX Runtime cannot load it ({exc}); "
                                      "export it again") from exc
                log.debug("loaded %s", path)
            return self._sessions[key]

    def __repr__(self) -> str:
        return (f"OnnxSegments({str(self.directory)!r}, model={self.manifest.name!r}, "
                f"cuts={list(self.cut_ids)})")


def _check_inputs(specs: Sequence[TensorSpec], given: Sequence[np.ndarray] | np.ndarray,
                  what: str) -> list[np.ndarray]:
    """``given`` checked against ``specs`` (``check_tensors``), as contiguous numpy arrays."""
    arrays: list[np.ndarray] = [given] if isinstance(given, np.ndarray) else list(given)
    for spec, a in zip(specs, arrays):
        if not isinstance(a, np.ndarray):
            raise InvalidRequest(f"{what}: {spec.name!r} must be a numpy array, got "
                                 f"{type(a).__name__}")
    check_tensors(specs, arrays, what, "input")
    return [np.ascontiguousarray(a) for a in arrays]


def _read_index(onnx_dir: Path, manifest: Manifest) -> dict[int, dict[str, Any]]:
    """Parse ``onnx/index.json``, check it against the manifest and check every file."""
    path = onnx_dir / "index.json"
    if not path.is_file():
        raise BundleError(f"{onnx_dir.parent}: no onnx/index.json; write the ONNX head with "
                          f"`splitinfer export --from-bundle {onnx_dir.parent} --onnx --cut ID`")
    if path.stat().st_size > _MAX_INDEX_BYTES:
        raise BundleError(f"{path}: over the {_MAX_INDEX_BYTES}-byte limit for an index")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); export the ONNX files again"
                          ) from exc
    if not isinstance(index, dict) or index.get("format") != _INDEX_FORMAT or \
            index.get("format_version") != _INDEX_FORMAT_VERSION or \
            not isinstance(index.get("cuts"), dict):
        raise BundleError(f"{path}: not a {_INDEX_FORMAT} v{_INDEX_FORMAT_VERSION} index; "
                          "export the ONNX files again with this splitinfer")
    if index.get("fingerprint") != manifest.fingerprint:
        raise BundleError(f"{path}: fingerprint {str(index.get('fingerprint'))[:16]}… does not "
                          f"match the manifest's {manifest.fingerprint[:16]}…; these ONNX files "
                          "belong to another model: export them again from this bundle")
    entries: dict[int, dict[str, Any]] = {}
    for key, entry in index["cuts"].items():
        if not key.isdigit() or int(key) >= len(manifest.cuts) or not isinstance(entry, dict):
            raise BundleError(f"{path}: bad cut entry {key!r}: the manifest has cuts "
                              f"0..{len(manifest.cuts) - 1}")
        for part in ("head", "tail"):
            _check_file(onnx_dir, path, key, part, entry.get(part))
        entries[int(key)] = entry
    return entries


def _check_file(onnx_dir: Path, index_path: Path, key: str, part: str, entry: Any) -> None:
    if entry is None or (isinstance(entry, dict) and entry.get("identity") is True):
        return
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or \
            not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("bytes"), int):
        raise BundleError(f"{index_path}: cut {key} {part} needs 'file', 'sha256' and 'bytes'")
    name = entry["file"]
    if "/" in name or os.sep in name or name.startswith("."):
        raise BundleError(f"{index_path}: bad file name {name!r} (cut {key} {part})")
    file = onnx_dir / name
    if not file.is_file():
        raise BundleError(f"{file} is missing (cut {key} {part}); copy the whole onnx/ "
                          "directory, or export it again")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise BundleError(f"{file}: {size} bytes, the index says {entry['bytes']}; the file "
                          "is truncated or was replaced")
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != entry["sha256"]:
        raise BundleError(f"{file}: sha256 {h.hexdigest()[:16]}… does not match the index "
                          f"({entry['sha256'][:16]}…); the file is corrupt or altered")
