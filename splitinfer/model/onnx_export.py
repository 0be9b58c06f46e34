"""Export the head (and tail) of a bundle's cuts to ONNX, so a device can run them without torch.

``export_onnx(bundle_dir, cut_ids)`` loads the bundle and writes, beside it::

    onnx/cut-<ID>-head.onnx    model inputs -> the tensors that cross cut ID
    onnx/cut-<ID>-tail.onnx    those tensors -> the model outputs (unless tail=False)
    onnx/index.json            which cuts have files, with their sha256 and size

Tensor names are the bundle's spec names, every dynamic (-1) dim of a spec stays dynamic in the
ONNX graph. Every file is checked with ONNX Runtime against torch at batch 1 and batch 3 before
it is listed in the index; a cut that does not export or does not match is refused with a
:class:`~splitinfer.core.errors.PartitionError` naming it. Exporting more cuts later adds them to the
index. ``device_client.onnx_head.OnnxSegments`` reads the result without torch.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript) is tried first, the
TorchScript exporter (``dynamo=False``) second. With torch 2.14 / onnxscript 0.7 the dynamo path
exports every cut tried in the tests (Chain, SkipNet, TwoInTwoOut with an int64 mask and two
outputs, torchvision resnet18), tails at the last cut (an identity) included. The head of a cut
whose crossing tensors are the model inputs themselves (cut 0) is listed as
``{"identity": true}`` with no file: ONNX cannot give an output an input's name, and the runner
passes the inputs on as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from splitinfer.core.errors import BundleError, PartitionError, SplitInferError
from splitinfer.core.spec import DYNAMIC, TensorSpec

from .bundle import load_bundle
from .manifest import write_text_atomic

__all__ = ["export_onnx", "INDEX", "ONNX_DIR", "INDEX_FORMAT", "INDEX_FORMAT_VERSION"]

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
INDEX = "index.json"
INDEX_FORMAT = "splitinfer-onnx"
INDEX_FORMAT_VERSION = 1

#: batch sizes the export runs at (2: a size torch.export does not specialize) and is checked at
_EXPORT_BATCH = 2
_CHECK_BATCHES = (1, 3)
#: largest accepted |onnx - torch|, relative to the output's largest magnitude (at least 1)
_RTOL = 1e-4


def export_onnx(bundle_dir: str | os.PathLike[str], cut_ids: Sequence[int | str], *,
                tail: bool = True, opset: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> Path:
    """Write ONNX heads (and tails) for ``cut_ids`` (ids or names) into ``<bundle_dir>/onnx``.

    ``progress(done, total)`` is called after each cut is written and checked. Returns the
    ``onnx`` directory. Raises BundleError for a bad bundle, PartitionError for an
    unknown cut or one that cannot be exported or does not match torch.
    """
    from .capture import example_batches

    _require_onnx()
    directory = Path(bundle_dir)
    sm = load_bundle(directory)
    cuts = [sm.cut(c) for c in cut_ids]  # PartitionError names an unknown id or name
    if not cuts:
        raise PartitionError("no cuts to export: give at least one cut id or name")
    out = directory / ONNX_DIR
    out.mkdir(exist_ok=True)
    index = _read_index(out, sm.name, sm.fingerprint)
    export_in, *check_in = example_batches(sm.example_inputs, (_EXPORT_BATCH, *_CHECK_BATCHES))
    for done, cut in enumerate(cuts, 1):
        entry: dict[str, Any] = {"head": None, "tail": None}
        head = sm.head(cut.id)
        input_names = {s.name for s in sm.input_specs}
        if all(t.name in input_names for t in cut.tensors):
            # fx names are unique: these are the inputs themselves (cut 0), and an ONNX graph
            # cannot name an output like an input, so no file: the runner passes them on
            entry["head"] = {"identity": True}
        else:
            entry["head"] = _export_checked(
                head, export_in, check_in, sm.input_specs, cut.tensors,
                out / f"cut-{cut.id}-head.onnx", f"cut {cut.id} ({cut.name}) head", opset)
        if tail:
            with torch.no_grad():
                tail_in = tuple(head(*export_in))
                tail_check = [tuple(head(*x)) for x in check_in]
            entry["tail"] = _export_checked(
                sm.tail(cut.id, cache=False), tail_in, tail_check, cut.tensors,
                sm.output_specs, out / f"cut-{cut.id}-tail.onnx",
                f"cut {cut.id} ({cut.name}) tail", opset)
        else:
            entry["tail"] = index["cuts"].get(str(cut.id), {}).get("tail")
        index["cuts"][str(cut.id)] = entry
        write_text_atomic(out / INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
        log.info("exported cut %d (%s) to ONNX in %s", cut.id, cut.name, out)
        if progress is not None:
            progress(done, len(cuts))
    return out


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SplitInferError(f"ONNX export needs {', '.join(missing)} (and onnxscript): "
                              "pip install 'splitinfer[onnx]'")


def _read_index(out: Path, name: str, fingerprint: str) -> dict[str, Any]:
    """The existing index to merge into, or a fresh one (also when it is for another model)."""
    fresh = {"format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION, "model": name,
             "fingerprint": fingerprint, "torch_version": torch.__version__, "cuts": {}}
    path = out / INDEX
    if not path.is_file():
        return fresh
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); delete the onnx directory and "
                          "export again") from exc
    if not isinstance(old, dict) or old.get("format") != INDEX_FORMAT or \
            old.get("format_version") != INDEX_FORMAT_VERSION or \
            not isinstance(old.get("cuts"), dict):
        raise BundleError(f"{path}: not a {INDEX_FORMAT} v{INDEX_FORMAT_VERSION} index; delete "
                          "the onnx directory and export again")
    if old.get("fingerprint") != fingerprint:
        log.warning("%s belongs to another model (fingerprint %s); starting a new index", path,
                    str(old.get("fingerprint"))[:16])
        return fresh
    return {**fresh, "cuts": dict(old["cuts"])}


def _export_checked(module: torch.nn.Module, args: tuple[torch.Tensor, ...],
                    checks: list[tuple[torch.Tensor, ...]], in_specs: Sequence[TensorSpec],
                    out_specs: Sequence[TensorSpec], path: Path, what: str,
                    opset: int | None) -> dict[str, Any]:
    """Export ``module`` to ``path`` (via a temporary file), check it, return its index entry."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        exporter = _export(module, args, in_specs, out_specs, tmp, what, opset)
        _check(module, tmp, checks, in_specs, out_specs, what)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"file": path.name, "sha256": digest, "bytes": path.stat().st_size,
            "exporter": exporter}


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...],
            in_specs: Sequence[TensorSpec], out_specs: Sequence[TensorSpec], path: Path,
            what: str, opset: int | None) -> str:
    """Write the ONNX file; returns the exporter that worked ("dynamo" or "torchscript")."""
    # placeholder names for the export: the real ones may clash with the names torch gives
    # the values inside the graph; _rename_io puts the real ones in afterwards
    in_names = [f"splitinfer_in_{i}" for i in range(len(in_specs))]
    out_names = [f"splitinfer_out_{i}" for i in range(len(out_specs))]
    # *tensors is one varargs parameter: its dynamic shapes are one tuple, one dict per tensor
    dims = tuple({i: torch.export.Dim.DYNAMIC for i, d in enumerate(s.shape) if d == DYNAMIC}
                 or None for s in in_specs)
    errors = []
    try:
        with _quiet():
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=in_names,
                              output_names=out_names, dynamic_shapes=(dims,),
                              opset_version=opset, external_data=False, verbose=False)
        _rename_io(path, in_names, out_names, in_specs, out_specs)
        return "dynamo"
    except Exception as exc:  # torch.export, decomposition and onnxscript errors alike
        errors.append(f"dynamo: {_why(exc)}")
        log.info("%s: dynamo ONNX export failed, trying TorchScript: %s", what, errors[-1])
    axes = {n: {i: f"{s.name}_dim{i}" for i, d in enumerate(s.shape) if d == DYNAMIC}
            for n, s in zip([*in_names, *out_names], [*in_specs, *out_specs])}
    try:
        with _quiet():
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=in_names,
                              output_names=out_names, dynamic_axes=axes,
                              opset_version=opset or 17, verbose=False)
        _rename_io(path, in_names, out_names, in_specs, out_specs)
        return "torchscript"
    except Exception as exc:
        errors.append(f"torchscript: {_why(exc)}")
    raise PartitionError(f"{what} cannot be exported to ONNX ({'; '.join(errors)}); try "
                         "another cut (`splitinfer inspect` lists them), or a newer "
                         "torch/onnxscript")


def _rename_io(path: Path, in_names: Sequence[str], out_names: Sequence[str],
               in_specs: Sequence[TensorSpec], out_specs: Sequence[TensorSpec]) -> None:
    """Give the graph's inputs and outputs their spec names; move inner values out of the way."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    wanted = dict(zip([*in_names, *out_names], [s.name for s in (*in_specs, *out_specs)]))
    taken = set(wanted.values())
    rename = dict(wanted)
    for name in _value_names(graph):
        if name in taken and name not in rename:
            rename[name] = f"{name}__inner"
            while rename[name] in taken:
                rename[name] += "_"
            taken.add(rename[name])
    # a head that passes a model input on names the output like the input (fx names are
    # unique): ONNX allows that only when the output *is* the input, so point it there
    generic_in = {s.name: n for s, n in zip(in_specs, in_names)}
    inputs = {i.name for i in graph.input}
    for out, generic, spec in zip(graph.output, out_names, out_specs):
        source = generic_in.get(spec.name)
        if source is not None:
            for k in reversed(range(len(graph.node))):
                node = graph.node[k]
                if node.op_type == "Identity" and list(node.output) == [out.name]:
                    del graph.node[k]
            out.name = source
        elif out.name in inputs:  # an input passed on under another name: a value of its own
            graph.node.append(onnx.helper.make_node("Identity", [out.name], [generic]))
            out.name = generic
        else:
            rename[out.name] = spec.name
    for vi in (*graph.input, *graph.output, *graph.value_info):
        vi.name = rename.get(vi.name, vi.name)
    for init in graph.initializer:
        init.name = rename.get(init.name, init.name)
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    onnx.save(model, str(path))


def _value_names(graph: Any) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names.update(i.name for i in graph.initializer)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    names.discard("")
    return names


def _why(exc: BaseException) -> str:
    """The useful part of an exporter error: the ops it names, else its first lines."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    ops = sorted(set(re.findall(r"aten[.:]+[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?", text)))
    if ops:
        return f"{type(exc).__name__}, unsupported or failing op(s): {', '.join(ops[:5])}"
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    summary = next((x for x in lines if "Exception summary" not in x and x.startswith("<")),
                   lines[0] if lines else "")
    return f"{type(exc).__name__}: {summary[:300]}"


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress and warnings; keep them out of the user's terminal."""
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _check(module: torch.nn.Module, path: Path, checks: list[tuple[torch.Tensor, ...]],
           in_specs: Sequence[TensorSpec], out_specs: Sequence[TensorSpec], what: str) -> None:
    """Run the file with ONNX Runtime on every batch in ``checks``; it must match torch."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise PartitionError(f"{what}: ONNX Runtime cannot load the exported file ({exc}); "
                             "try another cut") from exc
    out_names = [s.name for s in out_specs]
    for args in checks:
        with torch.no_grad():
            want = module(*args)
        want = tuple(want) if isinstance(want, (tuple, list)) else (want,)
        feed = {s.name: t.numpy() for s, t in zip(in_specs, args)}
        try:
            got = session.run(out_names, feed)
        except Exception as exc:
            raise PartitionError(f"{what}: ONNX Runtime failed at batch {args[0].shape[0]} "
                                 f"({exc}); try another cut") from exc
        for spec, g, w in zip(out_specs, got, want):
            _compare(spec, np.asarray(g), w.numpy(), f"{what}, output {spec.name!r} at batch "
                     f"{args[0].shape[0]}")


def _compare(spec: TensorSpec, got: np.ndarray, want: np.ndarray, what: str) -> None:
    if got.shape != want.shape or got.dtype != want.dtype:
        raise PartitionError(f"{what}: ONNX gives {got.dtype}{list(got.shape)}, torch "
                             f"{want.dtype}{list(want.shape)}; try another cut")
    if want.dtype.kind in "biu":
        if not np.array_equal(got, want):
            raise PartitionError(f"{what}: ONNX and torch differ; try another cut")
        return
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max(initial=0.0))
    if not diff <= _RTOL * scale:  # also catches NaN
        raise PartitionError(f"{what}: ONNX differs from torch by {diff:.3g} (limit "
                             f"{_RTOL * scale:.3g}); try another cut")
