"""Find the cut points of a captured graph and build the head and tail module of each.

The graph is walked in its (topological) order. After every node, the *live set* is the set of
values computed so far that a later node still reads. A position is a cut when its live set is
small and every live value can reach the tail:

* tensors that depend on the model inputs cross the cut (they go on the wire);
* values that depend only on weights (a sliced position-id buffer, say) never cross: the tail
  computes them again from its own copy of the weights;
* integers that depend on the inputs (the symbolic batch size that views use) never cross
  either: the tail reads them again from the shape of a crossing tensor.

Anything else alive (a tuple from a multi-output op, a data-dependent scalar) rules the
position out. Shapes, integer values and FLOPs come from two real runs of the graph at two
batch sizes: a dimension that differs between the runs is dynamic, and the difference in FLOPs
is the cost of one more sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import fx, nn

from splitinfer.core.errors import PartitionError

__all__ = ["NodeRecord", "CutPoint", "GraphCutter", "unlift_program"]

_CONV = {"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
         "conv_transpose3d"}
_MATMUL = {"mm", "bmm", "matmul", "addmm", "baddbmm", "einsum"}


@dataclass
class NodeRecord:
    """What two runs of the graph saw at one node."""

    kind: str = "none"  # "tensor" | "int" | "other" | "none"
    shapes: tuple[tuple[int, ...], ...] = ()  # per run, tensors only
    dtype: str = ""
    ints: tuple[Any, ...] = ()  # per run, ints only
    strides: tuple[tuple[int, ...], ...] = ()  # per run, tensors only
    flops: tuple[float, ...] = ()  # per run


@dataclass(frozen=True)
class CutPoint:
    """A valid cut: the position (index into the graph's node list) and what crosses it."""

    position: int
    crossing: tuple[fx.Node, ...]
    head_nodes: int
    head_flops: float


def _dense_order(shape: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...]:
    """The dim order, outermost first, of the dense layout that matches (shape, stride).

    ``t.permute(order)`` is contiguous when ``t`` is a dense permutation (a transpose, say).
    Dims of size 1 and expanded dims (stride 0) have no place in memory: they keep their own
    index, so a tensor that is contiguous but for them gets the identity.
    """
    ranked = [d for d in range(len(shape)) if shape[d] > 1 and stride[d] > 0]
    outer_first = iter(sorted(ranked, key=lambda d: -stride[d]))  # stable: ties keep dim order
    return tuple(next(outer_first) if d in ranked else d for d in range(len(shape)))


def _sanitize(target: str) -> str:
    return "w_" + "".join(c if c.isalnum() else "_" for c in target)


def unlift_program(program: Any, strip_prefix: str = "") -> fx.GraphModule:
    """Turn an ExportedProgram into a GraphModule whose weights are attributes (get_attr).

    Weights are shared with the program (no copy). Only user inputs stay placeholders.
    """
    from torch.export.graph_signature import InputKind, OutputKind

    sig = program.graph_signature
    bad = [o for o in sig.output_specs if o.kind != OutputKind.USER_OUTPUT]
    if bad:
        raise PartitionError(
            f"the model writes to {[o.target for o in bad]} during forward() in eval mode; "
            "split models must be pure functions of their inputs (call model.eval(), or stop "
            "updating buffers in forward())")
    holder = nn.Module()
    attr_of: dict[str, str] = {}
    for spec in sig.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            continue
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            raise PartitionError(f"unsupported program input {spec.arg.name} of kind "
                                 f"{spec.kind.name}; only tensors, parameters and buffers")
        value = program.state_dict.get(spec.target)
        if value is None:
            value = program.constants[spec.target]
        target = spec.target[len(strip_prefix):] if spec.target.startswith(strip_prefix) \
            else spec.target
        attr = _sanitize(target)
        holder.register_buffer(attr, value.detach())
        attr_of[spec.arg.name] = attr
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    # model inputs first, then weights: the cut analysis counts on inputs leading the graph
    for node in sorted(placeholders, key=lambda n: n.name in attr_of):
        new = graph.get_attr(attr_of[node.name]) if node.name in attr_of \
            else graph.placeholder(node.name)
        new.meta = dict(node.meta)
        env[node] = new
    for node in program.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            graph.output(fx.map_arg(node.args[0], env.__getitem__))
        else:
            env[node] = graph.node_copy(node, env.__getitem__)
    return fx.GraphModule(holder, graph)


class _Recorder(fx.Interpreter):
    """Runs the graph once and records every node's kind, shape, dtype, ints and FLOPs."""

    def __init__(self, gm: fx.GraphModule, records: dict[fx.Node, NodeRecord]) -> None:
        super().__init__(gm)
        self.records = records

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        rec = self.records.setdefault(n, NodeRecord())
        if isinstance(result, torch.Tensor):
            rec.kind = "tensor"
            rec.shapes += (tuple(result.shape),)
            rec.strides += (tuple(result.stride()),)
            rec.dtype = str(result.dtype).replace("torch.", "")
        elif isinstance(result, (int, torch.SymInt)) and not isinstance(result, bool):
            rec.kind = "int"
            rec.ints += (int(result),)
        elif result is None and not n.users:
            rec.kind = "none"
        else:
            rec.kind = "other"
        rec.flops += (self._flops(n, result),)
        return result

    def _flops(self, n: fx.Node, result: Any) -> float:
        if not isinstance(result, torch.Tensor) or n.op in ("placeholder", "get_attr"):
            return 0.0
        args: list[Any] = [self.env.get(a) if isinstance(a, fx.Node) else a for a in n.args]
        name = _op_name(n, self.module)
        out = float(result.numel())
        weight = None
        if n.op == "call_module":
            weight = getattr(self.fetch_attr(str(n.target)), "weight", None)  # a module path
        elif len(args) > 1 and isinstance(args[1], torch.Tensor):
            weight = args[1]
        if name in _CONV and weight is not None:
            return 2.0 * out * float(weight[0].numel())
        if name == "linear" and weight is not None:
            return 2.0 * out * float(weight.shape[-1])
        if name in _MATMUL:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if name in ("addmm", "baddbmm") and len(args) > 1:
                first = args[1]
            if isinstance(first, torch.Tensor) and first.dim() > 0:
                return 2.0 * out * float(first.shape[-1])
        if name == "scaled_dot_product_attention" and isinstance(args[1], torch.Tensor):
            return 4.0 * out * float(args[1].shape[-2])
        return out


def _op_name(n: fx.Node, root: nn.Module | None = None) -> str:
    """A short name for what a node does: 'conv2d', 'add', 'relu', 'getitem'..."""
    target = n.target
    if n.op == "call_module" and root is not None:
        mod = root.get_submodule(str(target))
        cls = type(mod).__name__.lower()
        return {"linear": "linear"}.get(cls, "conv2d" if "conv" in cls else cls)
    if isinstance(target, torch._ops.OpOverload):
        return target._opname
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", str(target)).lstrip("_")


class _Timer(fx.Interpreter):
    """Runs the graph and adds each node's own time by ``clock`` (interpreter overhead
    excluded)."""

    def __init__(self, gm: fx.GraphModule, times: dict[fx.Node, list[float]],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(gm)
        self.times = times
        self.clock = clock

    def run_node(self, n: fx.Node) -> Any:
        if n.op in ("placeholder", "output", "get_attr"):
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        start = self.clock()
        result = getattr(self, n.op)(n.target, args, kwargs)
        self.times.setdefault(n, []).append(self.clock() - start)
        return result


class GraphCutter:
    """Cut analysis over one GraphModule whose only placeholders are the model inputs."""

    def __init__(self, gm: fx.GraphModule, runs: list[tuple[torch.Tensor, ...]],
                 aten: bool) -> None:
        if len(runs) != 2:
            raise ValueError("GraphCutter needs example inputs at exactly two batch sizes")
        self.gm = gm
        self.aten = aten  # ATen graph (torch.export) rather than a torch.fx trace
        self.nodes = list(gm.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.inputs = [n for n in self.nodes if n.op == "placeholder"]
        self.output = self.nodes[-1]
        self.batches = tuple(run[0].shape[0] for run in runs)
        self.records: dict[fx.Node, NodeRecord] = {}
        with torch.no_grad():
            for run in runs:
                _Recorder(gm, self.records).run(*run)
        self.const = self._constant_nodes()
        self.last_use = {n: max((self.index[u] for u in n.users), default=-1)
                         for n in self.nodes}

    # -- analysis -----------------------------------------------------------------------------
    def _constant_nodes(self) -> set[fx.Node]:
        """Nodes that depend on weights and literals only (never on a model input)."""
        const: set[fx.Node] = set()
        for n in self.nodes:
            if n.op == "get_attr":
                const.add(n)
            elif n.op in ("call_function", "call_method"):
                if all(a in const for a in n.all_input_nodes):
                    const.add(n)
        return const

    def per_sample_flops(self, n: fx.Node) -> float:
        f = self.records[n].flops if n in self.records else ()
        if len(f) < 2:
            return 0.0
        return max(0.0, (f[1] - f[0]) / (self.batches[1] - self.batches[0]))

    def cut_points(self, max_tensors: int) -> list[CutPoint]:
        """Every valid position, first one per distinct crossing set, input → output order."""
        live: dict[fx.Node, None] = {}  # insertion-ordered set
        for n in self.inputs:
            if self.last_use[n] > len(self.inputs) - 1:
                live[n] = None
        points: list[CutPoint] = []
        seen: set[tuple[fx.Node, ...]] = set()
        flops = 0.0
        computed = 0
        for i in range(len(self.inputs) - 1, len(self.nodes) - 1):
            if i >= len(self.inputs):
                n = self.nodes[i]
                if n not in self.const:
                    flops += self.per_sample_flops(n)
                    computed += n.op != "get_attr"
                    if self.last_use[n] > i:
                        live[n] = None
                for a in n.all_input_nodes:
                    if a in live and self.last_use[a] <= i:
                        del live[a]
            crossing = self._crossing(live, max_tensors)
            if crossing is None or crossing in seen:
                continue
            seen.add(crossing)
            points.append(CutPoint(i, crossing, computed, flops))
        return points

    def _crossing(self, live: Iterable[fx.Node], max_tensors: int
                  ) -> tuple[fx.Node, ...] | None:
        tensors, ints = [], []
        for n in live:
            kind = self.records[n].kind
            if kind == "tensor":
                tensors.append(n)
            elif kind == "int":
                ints.append(n)
            else:
                return None
        if not tensors or len(tensors) > max_tensors:
            return None
        crossing = tuple(sorted(tensors, key=self.index.__getitem__))
        if any(self._int_source(s, crossing) is None for s in ints):
            return None
        return crossing

    def _int_source(self, s: fx.Node, crossing: tuple[fx.Node, ...]) -> Any:
        """How the tail gets integer ``s`` back: (tensor, dim), a literal, or its own node."""
        values = self.records[s].ints
        for c in crossing:
            for d, dims in enumerate(zip(*self.records[c].shapes)):
                if tuple(dims) == tuple(values):
                    return (c, d)
        if s.op == "call_function" and all(
                self.records[a].kind == "int" and self._int_source(a, crossing) is not None
                for a in s.all_input_nodes):
            return s
        if len(set(values)) == 1:
            return values[0]
        return None

    def node_time_runs(self, inputs: tuple[torch.Tensor, ...], repeats: int,
                       clock: Callable[[], float] = time.perf_counter, warmup: bool = True
                       ) -> list[list[float]]:
        """Seconds per node (graph order) for each of ``repeats`` runs, after a warm-up run
        unless ``warmup`` is False; ``clock`` measures (wall time by default;
        ``time.process_time`` for CPU time)."""
        runs = []
        with torch.no_grad():
            if warmup:
                _Timer(self.gm, {}, clock).run(*inputs)
            for _ in range(max(1, repeats)):
                times: dict[fx.Node, list[float]] = {}
                _Timer(self.gm, times, clock).run(*inputs)
                runs.append([times[n][0] if n in times else 0.0 for n in self.nodes])
        return runs

    # -- building -----------------------------------------------------------------------------
    def spec_shape(self, n: fx.Node) -> tuple[int, ...]:
        """Shape with -1 where the two runs disagree (a dynamic dim)."""
        shapes = self.records[n].shapes
        return tuple(d0 if d0 == d1 else -1 for d0, d1 in zip(shapes[0], shapes[1]))

    def build_head(self, point: CutPoint) -> fx.GraphModule:
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for n in self.inputs:
            env[n] = graph.placeholder(n.name)
            env[n].meta = dict(n.meta)
        needed = self._ancestors(point.crossing)
        for n in self.nodes[len(self.inputs): point.position + 1]:
            if n in needed:
                env[n] = graph.node_copy(n, env.__getitem__)
        graph.output(tuple(env[c] for c in point.crossing))
        return self._module(graph)

    def entry_order(self, n: fx.Node) -> tuple[int, ...] | None:
        """The dim order the tail lays crossing tensor ``n`` out in; None: plain contiguous.

        The wire (and any codec) hands the tail contiguous tensors, but the graph after the cut
        was recorded against the head's strides: a transposed tensor fed contiguously makes a
        later ``view`` fail, or picks another kernel. Both runs give the same order for the
        dense permutations real models make (attention's transposes); a tensor that is not
        dense at all (a select, an expand) gets the dense layout of the same order, which is
        what ``clone()`` of it would give.
        """
        rec = self.records[n]
        orders = [_dense_order(s, st) for s, st in zip(rec.shapes, rec.strides)]
        order = orders[-1]  # the runs agree; the last one has the bigger batch
        return None if order == tuple(range(len(order))) else order

    def _enter(self, graph: fx.Graph, x: fx.Node, order: tuple[int, ...]) -> fx.Node:
        """Nodes that give any tensor ``x`` the strides of the dense layout in ``order``."""
        back = tuple(sorted(range(len(order)), key=order.__getitem__))
        if self.aten:
            y = graph.call_function(torch.ops.aten.permute.default, (x, list(order)))
            y = graph.call_function(torch.ops.aten.clone.default, (y,),
                                    {"memory_format": torch.contiguous_format})
            return graph.call_function(torch.ops.aten.permute.default, (y, list(back)))
        y = graph.call_method("permute", (x, *order))
        y = graph.call_method("contiguous", (y,))
        return graph.call_method("permute", (y, *back))

    def build_tail(self, point: CutPoint) -> fx.GraphModule:
        """Tail module; it takes the crossing tensors in any layout (contiguous off the wire)."""
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for c in point.crossing:
            env[c] = graph.placeholder(c.name)
            env[c].meta = dict(c.meta)
        for c in point.crossing:
            order = self.entry_order(c)
            if order is not None:
                env[c] = self._enter(graph, env[c], order)

        def fetch(a: fx.Node) -> fx.Node:
            if a in env:
                return env[a]
            if self.index[a] <= point.position:  # defined in the head: rebuild, never cross
                env[a] = self._rebuild(graph, a, point.crossing, env, fetch)
            return env[a]

        needed = self._ancestors(self.output.all_input_nodes)
        for n in self.nodes[point.position + 1: -1]:
            if n in needed:
                env[n] = graph.node_copy(n, fetch)
        graph.output(fx.map_arg(self.output.args[0], fetch))
        return self._module(graph)

    def _rebuild(self, graph: fx.Graph, a: fx.Node, crossing: tuple[fx.Node, ...],
                 env: dict[fx.Node, fx.Node], fetch: Callable[[fx.Node], fx.Node]) -> Any:
        if a in self.const:
            return graph.node_copy(a, fetch)
        source = self._int_source(a, crossing) if self.records[a].kind == "int" else None
        if isinstance(source, tuple):
            tensor, dim = source
            if self.aten:
                return graph.call_function(torch.ops.aten.sym_size.int, (env[tensor], dim))
            return graph.call_method("size", (env[tensor], dim))
        if isinstance(source, fx.Node):
            return graph.node_copy(a, fetch)
        if source is not None:
            return source  # a literal int, the same in every run
        raise PartitionError(f"internal: value {a.name} cannot be rebuilt after the cut")

    def _ancestors(self, roots: Iterable[fx.Node]) -> set[fx.Node]:
        seen: set[fx.Node] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(n.all_input_nodes)
        return seen

    def _module(self, graph: fx.Graph) -> fx.GraphModule:
        graph.lint()
        return fx.GraphModule(self.gm, graph)

    def node_label(self, n: fx.Node, strip_prefix: str) -> str:
        """Where a node sits in the model, e.g. 'layer3.1.relu' or 'encoder.layer.0.add'."""
        if _op_name(n) == "getitem" and n.args and isinstance(n.args[0], fx.Node):
            return self.node_label(n.args[0], strip_prefix)
        path, cls = "", ""
        stack = n.meta.get("nn_module_stack")
        if stack:
            path, cls = list(stack.values())[-1][:2]
            cls = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        elif n.op == "call_module":
            path, cls = str(n.target), "torch.nn.modules."
        path = path.removeprefix("L__self__")
        path = "" if path == strip_prefix.rstrip(".") else path.removeprefix(strip_prefix)
        if path and cls.startswith("torch.nn.modules."):
            return path  # a built-in leaf module (Conv2d, ReLU...) names its only op
        op = _op_name(n, self.gm)
        return f"{path}.{op}" if path else op
