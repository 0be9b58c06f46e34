"""Capture a PyTorch model as one flat graph: torch.export first, torch.fx as the fallback.

Whatever the model returns (a tensor, a tuple, a dict, a ``ModelOutput``) is flattened to a
tuple of tensors, so that a captured program and every tail built from it answer with plain
tensors that a wire message can carry and a bundle can reload without the model's classes.
The batch dimension (dim 0 of every input) is exported as one symbolic ``batch`` dim.
"""

from __future__ import annotations

import inspect
import io
import keyword
import logging
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn
from torch.utils import _pytree as pytree

from splitinfer.core.errors import PartitionError

if TYPE_CHECKING:  # torch.export is imported lazily: it is slow and only export needs it
    from torch.export import ExportedProgram

__all__ = ["Captured", "capture_model", "serialize_program", "deserialize_program",
           "example_batches", "usable_input_names"]

log = logging.getLogger(__name__)

#: prefix of the flattening wrapper's submodule; removed from every name we show.
WRAPPED = "model"


class _Flatten(nn.Module):
    """Calls the model and returns its outputs as a flat tuple of tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def call(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(pytree.tree_leaves(self.model(*args)))


def usable_input_names(names: Sequence[str]) -> bool:
    """Whether ``names`` can name a captured graph's inputs: distinct Python identifiers, no
    keyword, none of the wrapper's own ("self", "model")."""
    return all(isinstance(n, str) and n.isidentifier() and not keyword.iskeyword(n)
               and n not in ("self", "model") for n in names) and len(set(names)) == len(names)


def _input_names(model: nn.Module, count: int) -> list[str]:
    """The model's own names for its first ``count`` positional inputs, where it has them."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:count]]
    names += [f"input{i}" for i in range(len(names), count)]
    return names if usable_input_names(names) else [f"input{i}" for i in range(count)]


def _flatten_wrapper(model: nn.Module, count: int, input_names: Sequence[str] | None = None
                     ) -> _Flatten:
    """A wrapper whose forward takes exactly ``count`` named tensors (export and fx need that),
    named ``input_names`` when given, else by the model's own forward signature."""
    if input_names is not None:
        input_names = list(input_names)
        if len(input_names) != count or not usable_input_names(input_names):
            raise PartitionError(
                f"input_names {input_names!r}: expected {count} distinct Python identifiers "
                "(one per example input; not a keyword, 'self' or 'model')")
    names = ", ".join(input_names if input_names is not None else _input_names(model, count))
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {names}):\n    return self.call({names})\n", namespace)
    cls = type("SplitWrapper", (_Flatten,), {"forward": namespace["forward"]})
    wrapper: _Flatten = cls(model)
    return wrapper


@dataclass
class Captured:
    """A captured model: the graph module to cut, and how it was obtained."""

    method: str  # "export" or "fx"
    graph_module: torch.fx.GraphModule
    program: ExportedProgram | None  # None when method == "fx"
    output_names: list[str]
    export_error: str | None = None


def example_batches(example_inputs: Sequence[torch.Tensor], sizes: Sequence[int]
                    ) -> list[tuple[torch.Tensor, ...]]:
    """The example inputs resized along dim 0 (by repeating rows) to each batch size."""
    out = []
    for size in sizes:
        batch = []
        for x in example_inputs:
            if x.dim() == 0 or x.shape[0] == 0:
                raise PartitionError(
                    f"example input of shape {tuple(x.shape)} has no batch dimension; every "
                    "input needs dim 0 as its batch dim with at least one row")
            reps = -(-size // x.shape[0])
            batch.append(torch.cat([x] * reps)[:size].contiguous())
        out.append(tuple(batch))
    return out


def _output_names(model: nn.Module, args: tuple[torch.Tensor, ...]) -> list[str]:
    """Readable names for the flattened outputs, from their pytree key paths."""
    try:
        with torch.no_grad():
            out = model(*args)
    except Exception as exc:  # the model's own code: say what it was given and what it said
        shapes = ", ".join(f"{list(a.shape)}:{str(a.dtype).replace('torch.', '')}" for a in args)
        raise PartitionError(
            f"the model raised {type(exc).__name__} on the example inputs (batch resized to "
            f"2: {shapes}): "
            f"{str(exc).splitlines()[0] if str(exc) else ''}{_user_frame(exc)}. Check the "
            "example shapes and dtypes (dim 0 is the batch dim)") from exc
    leaves = pytree.tree_flatten_with_path(out)[0]
    names = []
    for i, (path, leaf) in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise PartitionError(
                f"model output #{i} at {pytree.keystr(path) or '<root>'} is a "
                f"{type(leaf).__name__}, not a tensor; split models must return tensors "
                "(wrap the model in a module that drops or converts non-tensor outputs)")
        name = re.sub(r"[^0-9A-Za-z_.]+", ".", pytree.keystr(path)).strip(".")
        names.append(name or ("output" if len(leaves) == 1 else f"output{i}"))
    if len(set(names)) != len(names):
        names = [f"output{i}" for i in range(len(names))]
    return names


def _export(wrapper: nn.Module, args: tuple[torch.Tensor, ...], dynamic_shapes: Any
            ) -> ExportedProgram:
    from torch.export import Dim, export

    if dynamic_shapes is None:
        batch = Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in args)
    ep = export(wrapper, args, dynamic_shapes=dynamic_shapes, strict=False)
    # Functional form: no in-place ops, so no two values that cross a cut alias each other.
    ep = ep.run_decompositions({})
    # Round trip through the serialized form once: the graph we cut is then exactly the graph
    # a bundle reloads, so in-memory and reloaded split models agree cut for cut.
    return deserialize_program(serialize_program(ep))


def serialize_program(program: ExportedProgram) -> bytes:
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


#: torch.export.load keeps process-wide state while it runs (two threads at once fail with
#: "_CURRENT_DESERIALIZER is already set"): programs load one at a time
_LOAD_LOCK = threading.Lock()


def deserialize_program(data: bytes) -> ExportedProgram:
    """An exported program from its bytes; safe to call from several threads at once."""
    # torch warns once per unused batch symbol on every load; that is noise for our users
    serde_log = logging.getLogger("torch._export.serde.serialize")
    with _LOAD_LOCK:
        level = serde_log.level
        serde_log.setLevel(logging.ERROR)
        try:
            return torch.export.load(io.BytesIO(data))
        finally:
            serde_log.setLevel(level)


def _user_frame(exc: BaseException) -> str:
    """'file:line: code' of the model's own line that failed, if torch's message names one."""
    text = str(exc)
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)', text)
    for path, line, func, code in reversed(frames):
        if "/torch/" not in path and "/site-packages/torch" not in path:
            return f" at {path}:{line} in {func}(): `{code.strip()}`"
    tb = exc.__traceback__
    last = ""
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename
        if "/torch/" not in path and not path.endswith("splitinfer/capture.py"):
            last = f" at {path}:{tb.tb_lineno} in {tb.tb_frame.f_code.co_name}()"
        tb = tb.tb_next
    return last


def _describe_export_failure(exc: BaseException) -> str:
    """One line naming the failing op or construct and where, from torch's long error text."""
    text = str(exc)
    line = text.strip().splitlines()[0] if text.strip() else ""
    for pattern in (r"(?:Unsupported|unsupported)[^\n]*", r"Could not[^\n]*",
                    r"[Dd]ata-dependent[^\n]*", r"Explanation:[^\n]*"):
        m = re.search(pattern, text)
        if m:
            line = m.group(0).strip()
            break
    return f"{type(exc).__name__}: {line[:300]}{_user_frame(exc)}"


def capture_model(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *,
                  dynamic_shapes: Any = None, method: str = "auto",
                  input_names: Sequence[str] | None = None) -> Captured:
    """Capture ``model`` with torch.export (or torch.fx when export fails and method allows).
    ``input_names`` names the graph's inputs (default: ``model.forward``'s parameters)."""
    if method not in ("auto", "export", "fx"):
        raise PartitionError(f"capture method {method!r} unknown; use 'auto', 'export' or 'fx'")
    if not isinstance(model, nn.Module):
        raise PartitionError(f"partition() needs a torch.nn.Module, got {type(model).__name__}")
    if not example_inputs or not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise PartitionError("example_inputs must be a non-empty tuple of tensors, got "
                             f"{[type(x).__name__ for x in example_inputs]}")
    model.eval()
    wrapper = _flatten_wrapper(model, len(example_inputs), input_names).eval()
    (args,) = example_batches(example_inputs, [2])  # batch 2: export would specialize 1
    names = _output_names(wrapper.model, args)
    export_error = None
    if method in ("auto", "export"):
        try:
            ep = _export(wrapper, args, dynamic_shapes)
            return Captured("export", ep.graph_module, ep, names)
        except PartitionError:
            raise
        except Exception as exc:  # torch raises many types here; we report the cause below
            export_error = _describe_export_failure(exc)
            if method == "export":
                raise PartitionError(
                    f"torch.export could not capture the model: {export_error}. Way out: "
                    "make that code traceable (torch.cond for data-dependent branches, no "
                    "Python side effects), or pass capture='fx'.") from exc
            log.warning("torch.export could not capture the model (%s); trying torch.fx",
                        export_error)
    try:
        gm = torch.fx.symbolic_trace(wrapper)
    except Exception as exc:
        fx_error = _describe_export_failure(exc)
        raise PartitionError(
            "the model cannot be captured. torch.export failed with "
            f"{export_error or 'n/a (not tried)'}; torch.fx failed with {fx_error}. Way out: "
            "remove data-dependent Python control flow from forward() (or express it with "
            "torch.cond), or wrap the untraceable part in a leaf module.") from exc
    log.warning("captured with torch.fx (fallback): bundles need torch.export")
    return Captured("fx", gm, None, names, export_error)
