"""Partition a PyTorch model into a head (device) and a tail (edge) at any of its cut points.

``partition(model, example_inputs)`` captures the model (torch.export; torch.fx as the
fallback), lists every cut where few tensors cross, and returns a :class:`SplitModel` that
builds the head and tail module of any cut on demand. For every cut,
``tail(*head(*inputs))`` computes exactly what ``model(*inputs)`` computes (same ops, same
order, bit for bit in fp32 eval mode), for any batch size, whether the tail gets the head's
tensors as they are or contiguous copies of them (what a decoder gives).

``partition(..., image_input=IMAGENET)`` makes an image bundle: the model is wrapped in
:class:`~splitinfer.model.preprocess.ImageModel`, so its input is a uint8 NHWC frame and the
normalization is the first part of the graph (cut 0 carries the frame itself).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import fx, nn

from splitinfer.core.errors import InvalidRequest, PartitionError
from splitinfer.core.spec import Cut, TensorSpec, check_tensors

from .capture import WRAPPED, Captured, capture_model, example_batches
from .graphcut import CutPoint, GraphCutter, unlift_program
from .image_input import ImageInput
from .preprocess import ImageModel, example_frames

if TYPE_CHECKING:
    from .manifest import Manifest

__all__ = ["partition", "SplitModel", "graph_fingerprint", "DEFAULT_MAX_CUT_TENSORS"]

log = logging.getLogger(__name__)

#: a position where more tensors than this are alive is not offered as a cut
DEFAULT_MAX_CUT_TENSORS = 4

#: the two batch sizes the graph is run at to tell dynamic dims and per-sample FLOPs
_RUN_BATCHES = (2, 3)

#: cut names of an image bundle's preprocessing nodes start with this ("image.div")
IMAGE_PREFIX = "image."


class _Segment(nn.Module):
    """A head or tail: runs its graph without autograd; a tail with one output returns it bare.

    ``contiguous`` marks the inputs the graph expects contiguous: any other layout (a tensor
    a caller transposed) is copied first, so the graph's views see the strides it was
    recorded with. Inputs the graph lays out itself (see ``GraphCutter.entry_order``) pass as
    they come. ``specs`` (an image bundle's head) are checked first: a captured graph would
    run a float or NCHW tensor through its uint8 NHWC preprocessing without a word.
    """

    def __init__(self, gm: fx.GraphModule, n_inputs: int, what: str, unwrap: bool,
                 contiguous: Sequence[bool] = (), specs: Sequence[TensorSpec] = ()) -> None:
        super().__init__()
        self.graph_module = gm
        self.n_inputs = n_inputs
        self.what = what
        self.unwrap = unwrap
        self.contiguous = tuple(contiguous) or (False,) * n_inputs
        self.specs = tuple(specs)
        #: whether the graph may write into its input tensors (an in-place op in it): a caller
        #: that hands it views of memory it must not change (a server's request payload)
        #: copies them first. torch.export graphs are functional: False for them.
        self.writes_inputs = any(_writes(gm, node) for node in gm.graph.nodes)

    def forward(self, *tensors: torch.Tensor) -> Any:
        if len(tensors) != self.n_inputs:
            raise PartitionError(f"{self.what} takes {self.n_inputs} tensor(s), got "
                                 f"{len(tensors)}")
        if self.specs:
            try:
                check_tensors(self.specs, tensors, self.what, "input")
            except InvalidRequest as exc:
                raise PartitionError(f"{exc}. This model takes uint8 NHWC frames (batch, "
                                     "height, width, channels), as a camera or image decoder "
                                     "gives them, and normalizes them itself") from None
        tensors = tuple(t.contiguous() if want and isinstance(t, torch.Tensor) else t
                        for t, want in zip(tensors, self.contiguous))
        with torch.no_grad():
            out = self.graph_module(*tensors)
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return out[0] if self.unwrap and len(out) == 1 else out


def _writes(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True when ``node`` may modify a tensor in place (conservative: any in-place op)."""
    if node.op == "call_function":
        schema = getattr(node.target, "_schema", None)
        if schema is not None:
            return bool(schema.is_mutable)
        name = getattr(node.target, "__name__", "")
        return bool(node.kwargs.get("inplace")) or (name.endswith("_") and
                                                    not name.endswith("__"))
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).endswith("__")
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    return False


def graph_fingerprint(gm: fx.GraphModule) -> str:
    """sha256 over the graph's structure and every weight's dtype, shape and bytes.

    Node names do not count (only ops, their order and how they connect), so two captures of
    identical models give the same fingerprint, and a changed op or weight changes it.
    """
    h = hashlib.sha256(b"splitinfer-graph-v1\n")
    index = {n: i for i, n in enumerate(gm.graph.nodes)}

    def ref(a: Any) -> Any:
        return f"%{index[a]}" if isinstance(a, fx.Node) else a

    for n in gm.graph.nodes:
        args = fx.map_arg(n.args, ref)
        kwargs = fx.map_arg(n.kwargs, ref)
        target = n.target if n.op in ("get_attr", "call_module", "call_method") \
            else getattr(n.target, "__name__", None) if n.op == "call_function" and \
            not isinstance(n.target, torch._ops.OpOverload) else str(n.target)
        h.update(f"{n.op}|{target}|{args!r}|{sorted(kwargs.items())!r}\n".encode())
    for name, tensor in sorted(gm.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class SplitModel:
    """A captured model and its cuts. Build with :func:`partition` or ``load_bundle``."""

    def __init__(self, captured: Captured, example_inputs: Sequence[torch.Tensor], *,
                 name: str = "model", max_cut_tensors: int = DEFAULT_MAX_CUT_TENSORS,
                 cut_names: Sequence[str] | None = None,
                 image_input: ImageInput | None = None) -> None:
        self.name = name
        #: how the uint8 NHWC frame input is normalized; None: not an image bundle
        self.image_input = image_input
        self.version = "1"
        self.manifest: Manifest | None = None  # what load_bundle read it from
        self.device = torch.device("cpu")
        self.max_cut_tensors = max_cut_tensors
        self.capture = captured.method
        self.program = captured.program
        self.export_error = captured.export_error
        self.example_inputs = tuple(example_inputs)
        if captured.program is not None:
            gm = unlift_program(captured.program, strip_prefix=WRAPPED + ".")
        else:
            gm = captured.graph_module
        self._cutter = GraphCutter(gm, example_batches(example_inputs, _RUN_BATCHES),
                                   aten=captured.program is not None)
        self.fingerprint = graph_fingerprint(gm)
        self.input_specs = tuple(
            TensorSpec(n.name, self._cutter.spec_shape(n), self._cutter.records[n].dtype)
            for n in self._cutter.inputs)
        outs = fx.map_arg(self._cutter.output.args[0], lambda n: n)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        if len(captured.output_names) != len(outs):
            raise PartitionError(f"captured graph has {len(outs)} outputs, the model "
                                 f"{len(captured.output_names)}")
        self.output_specs = tuple(
            TensorSpec(nm, self._cutter.spec_shape(n), self._cutter.records[n].dtype)
            for nm, n in zip(captured.output_names, outs))
        self._points = self._cutter.cut_points(max_cut_tensors)
        self.total_flops = sum(self._cutter.per_sample_flops(n) for n in self._cutter.nodes
                               if n not in self._cutter.const)
        names = list(cut_names) if cut_names is not None else self._name_cuts()
        if len(names) != len(self._points):
            raise PartitionError(f"expected {len(names)} cuts, the graph has "
                                 f"{len(self._points)}")
        self.cuts = [self._make_cut(i, p, names[i]) for i, p in enumerate(self._points)]
        self._heads: dict[int, nn.Module] = {}
        self._tails: dict[int, nn.Module] = {}

    # -- cuts -----------------------------------------------------------------------------
    def _name_cuts(self) -> list[str]:
        names: list[str] = []
        counts: dict[str, int] = {}
        last = len(self._points) - 1
        for i, p in enumerate(self._points):
            if i == 0 and p.position < len(self._cutter.inputs):
                base = "input"
            elif i == last:
                base = "output"
            else:
                base = self._label(self._cutter.nodes[p.position])
            counts[base] = counts.get(base, 0) + 1
            names.append(base if counts[base] == 1 else f"{base}#{counts[base]}")
        return names

    def _label(self, node: fx.Node) -> str:
        """The node's cut name; an image model's own nodes are 'image.<op>', and the wrapped
        model's names are those the model has in a plain bundle ('layer1', not 'model.layer1')."""
        if self.image_input is None:
            return self._cutter.node_label(node, WRAPPED + ".")
        stack = node.meta.get("nn_module_stack")
        path = list(stack.values())[-1][0] if stack else ""
        if str(path).removeprefix("L__self__") == WRAPPED:  # ImageModel.forward itself
            return IMAGE_PREFIX + self._cutter.node_label(node, WRAPPED + ".")
        return self._cutter.node_label(node, f"{WRAPPED}.{WRAPPED}.")

    def _make_cut(self, i: int, p: CutPoint, name: str) -> Cut:
        tensors = tuple(TensorSpec(n.name, self._cutter.spec_shape(n),
                                   self._cutter.records[n].dtype) for n in p.crossing)
        frac = p.head_flops / self.total_flops if self.total_flops else 0.0
        return Cut(id=i, name=name, tensors=tensors, head_nodes=p.head_nodes,
                   head_flops_fraction=round(min(1.0, frac), 6))

    def cut(self, key: int | str) -> Cut:
        """The cut with this id (int) or name (str)."""
        if isinstance(key, str):
            for c in self.cuts:
                if c.name == key:
                    return c
            raise PartitionError(f"no cut named {key!r}; names are e.g. "
                                 f"{[c.name for c in self.cuts[:5]]} (see .cuts)")
        if not isinstance(key, int) or not 0 <= key < len(self.cuts):
            raise PartitionError(f"cut id {key!r} out of range: this model has cuts "
                                 f"0..{len(self.cuts) - 1}")
        return self.cuts[key]

    def head_flops(self, cut_id: int) -> float:
        """Estimated FLOPs per sample that run on the device for this cut."""
        return self._points[self.cut(cut_id).id].head_flops

    # -- modules --------------------------------------------------------------------------
    def head(self, cut_id: int) -> nn.Module:
        """Module: model inputs → tuple of the tensors that cross ``cut_id``."""
        cut = self.cut(cut_id)
        if cut.id not in self._heads:
            gm = self._cutter.build_head(self._points[cut.id])
            specs = self.input_specs if self.image_input is not None else ()
            self._heads[cut.id] = _Segment(gm, len(self.input_specs), f"head({cut.id})",
                                           unwrap=False, specs=specs).eval()
        return self._heads[cut.id]

    def tail(self, cut_id: int, *, cache: bool = True) -> nn.Module:
        """Module: the crossing tensors of ``cut_id`` → the model's outputs.

        One output comes back as a tensor, several as a tuple in ``output_specs`` order.
        ``cache=False`` builds a fresh module and keeps no reference (a server bounds its own
        cache of tails).
        """
        cut = self.cut(cut_id)
        if cut.id in self._tails:
            return self._tails[cut.id]
        point = self._points[cut.id]
        gm = self._cutter.build_tail(point)
        plain = [self._cutter.entry_order(n) is None for n in point.crossing]
        module = _Segment(gm, len(cut.tensors), f"tail({cut.id})", unwrap=True,
                          contiguous=plain).eval()
        if cache:
            self._tails[cut.id] = module
        return module

    def to(self, device: str | torch.device) -> "SplitModel":
        """Move the weights to ``device`` (e.g. "cuda"); heads and tails built later run there."""
        device = torch.device(device)
        root = self._cutter.gm
        root.to(device)
        for node in root.graph.nodes:  # ops that make tensors name their device in the graph
            if "device" in node.kwargs and node.kwargs["device"] is not None:
                node.update_kwarg("device", device)
        self._heads.clear()
        self._tails.clear()
        self.device = device
        return self

    def segment_time_runs(self, inputs: Sequence[torch.Tensor], repeats: int = 3,
                          clock: Callable[[], float] = time.perf_counter,
                          warmup: bool = True) -> list[list[float]]:
        """Seconds of every graph node on ``inputs``, one list per run (0 for nodes that do no
        work), after a warm-up run unless ``warmup`` is False. A segment's latency is the
        median over runs of the sum of its slice (a sum of per-node medians would miss stalls
        that hit a few nodes). One pass of the model per repeat, instead of one per cut."""
        return self._cutter.node_time_runs(tuple(inputs), repeats, clock, warmup)

    def cut_position(self, cut_id: int) -> int:
        """Index of the last graph node the head runs for ``cut_id``."""
        return self._points[self.cut(cut_id).id].position

    def __call__(self, *inputs: torch.Tensor) -> Any:
        """The whole model (the captured graph), outputs flattened like ``tail``'s."""
        return self.tail(0)(*self.head(0)(*inputs))

    def __repr__(self) -> str:
        return (f"SplitModel(name={self.name!r}, capture={self.capture!r}, "
                f"cuts={len(self.cuts)}, fingerprint={self.fingerprint[:12]}…)")


def partition(model: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor, *,
              name: str | None = None, dynamic_shapes: Any = None, capture: str = "auto",
              max_cut_tensors: int = DEFAULT_MAX_CUT_TENSORS,
              image_input: ImageInput | None = None,
              input_names: Sequence[str] | None = None) -> SplitModel:
    """Capture ``model`` and list its cuts.

    ``example_inputs``: one tensor per model input, dim 0 the batch dim (any size ≥ 1).
    ``capture``: "auto" (torch.export, falling back to torch.fx), "export" or "fx".
    ``max_cut_tensors``: positions where more tensors are alive are not cuts.
    ``image_input``: the model takes one image; the split model takes it as uint8 frames
    (N, H, W, C) and normalizes them in its graph (see :mod:`splitinfer.model.preprocess`).
    The example is then the model's own float input (N, C, H, W), or uint8 frames.
    ``input_names``: one name per input (Python identifiers) for the bundle's input specs;
    default: the parameter names of ``model.forward``, else ``input0``, ``input1``...
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if not isinstance(max_cut_tensors, int) or max_cut_tensors < 1:
        raise PartitionError(f"max_cut_tensors must be an int >= 1, got {max_cut_tensors!r}")
    name = name or type(model).__name__.lower()
    was_training = model.training if isinstance(model, nn.Module) else False
    wrapped = model
    if image_input is not None:
        wrapped, example_inputs = _image_model(model, example_inputs, image_input)
    try:
        captured = capture_model(wrapped, example_inputs, dynamic_shapes=dynamic_shapes,
                                 method=capture, input_names=input_names)
        sm = SplitModel(captured, example_inputs, name=name, max_cut_tensors=max_cut_tensors,
                        image_input=image_input)
    finally:
        if was_training:
            model.train()
    log.info("partitioned %s with %s: %d cuts", sm.name, sm.capture, len(sm.cuts))
    return sm


def _image_model(model: nn.Module, example_inputs: tuple[torch.Tensor, ...],
                 image_input: ImageInput) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``model`` behind its preprocessing, and uint8 frames to capture it with."""
    if not isinstance(image_input, ImageInput):
        raise PartitionError(f"image_input must be an ImageInput (e.g. splitinfer.IMAGENET), "
                             f"got {type(image_input).__name__}")
    if len(example_inputs) != 1:
        raise PartitionError(f"image_input needs a model with one input (the image); the "
                             f"example has {len(example_inputs)} inputs")
    if isinstance(model, ImageModel):
        raise PartitionError("the model is already an ImageModel; pass the bare model and "
                             "image_input, or the ImageModel without image_input")
    return ImageModel(model, image_input), (example_frames(example_inputs[0], image_input),)
