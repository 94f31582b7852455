"""Graph passes that make an exported ONNX model as lean as `torch.onnx.export`'s, and graph checks.

`lean_graph(model, layout)` runs, until nothing changes:

* `set_boundary_layout` (once, layout 'NCHW'): the NHWC input becomes NCHW (and a 4-D output too)
  through a Transpose that `cancel_transpose_pairs` then removes against the model's own first one;
* `remove_identities`: Identity and inference-mode Dropout nodes;
* `fold_constants`: nodes whose inputs are all constants (shape arithmetic), evaluated once;
* `cancel_transpose_pairs`: Transpose -> Transpose that compose to the identity;
* `fold_pad`: a constant Pad of the spatial axes into the next Conv / MaxPool / AveragePool's pads
  (0 for Conv, -inf for MaxPool, 0 with count_include_pad for AveragePool: exactly what Pad computed);
* `fuse_bias`: Add(Conv(x), per-channel constant) -> Conv(x, W, b); Add(Gemm(x), row constant) ->
  Gemm with that bias (the folded-BN biases and dense biases that jax2onnx emits as separate Adds);
* `simplify_broadcasts`: an Expand feeding broadcasting elementwise ops that broadcast anyway
  (jax2onnx's form of `y * gate[:, :, None, None]`); a Reshape computed from a dynamic batch size
  becomes the Unsqueeze (SE gates) or Flatten (VGG's classifier) it is;
* `prune`: nodes and initializers nothing uses.

Every pass is a local rewrite under strict conditions (constant operands of the right shape, a
single consumer, not a graph output), and every export is checked against the JAX model afterwards.

Why trace in NCHW and clean up with these passes, rather than clean up jax2onnx's trace of the NHWC
Flax model with a general optimiser (`benchmarks/onnx_optimizers.py`, MobileNetV2-1.0 @64 px; that
trace has 156 Transposes, 62 Adds of which 52 carry a bias, 1 Dropout, 308 nodes):
onnxsim and onnxscript's optimiser only fold the 52 weight Transposes (104 left, all 52 bias Adds),
onnxscript's rewriter changes nothing, these passes alone do the same as onnxsim; onnxruntime's offline
ORT_ENABLE_BASIC optimisation sinks the Transposes but leaves one between the last conv and the pool
with its bias Add, and writes onnxruntime-specific opset imports into the file; tf2onnx's optimiser
leaves the same Transpose and the Dropout, and imports TensorFlow (14 s).  Traced in NCHW
(`export.nchw`) and cleaned with these passes the graph has 100 nodes: torch.onnx.export's 99 plus
the one input Transpose of the NHWC boundary (none with an NCHW input).
"""
from __future__ import annotations

import collections
import copy
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["lean_graph", "set_boundary_layout", "remove_identities", "fold_constants", "cancel_transpose_pairs",
           "fold_pad", "fuse_bias", "simplify_broadcasts", "prune", "op_counts", "layout_transposes",
           "bias_adds", "LEFTOVER_OPS"]

LEFTOVER_OPS = ("Identity", "Dropout")
_BROADCAST_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "PRelu")
_NON_DETERMINISTIC = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                      "Bernoulli")


# --------------------------------------------------------------------------------------- graph helpers

class _View:
    """Producer / consumer / constant look-ups over a GraphProto (rebuilt after each rewrite)."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list] = collections.defaultdict(list)
        for n in graph.node:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input}
        self._inits = {i.name: i for i in graph.initializer}
        self._np = numpy_helper

    def is_const(self, name: str) -> bool:
        node = self.producer.get(name)
        return name in self._inits or (node is not None and node.op_type == "Constant"
                                       and any(a.name == "value" for a in node.attribute))

    def shape(self, name: str) -> tuple[int, ...] | None:
        """An initializer's shape without reading its data."""
        return tuple(self._inits[name].dims) if name in self._inits else None

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output, else None."""
        if name in self._inits:
            return self._np.to_array(self._inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
        return None

    def only_consumer(self, name: str):
        """The single node reading `name` when nothing else (no graph output) does, else None."""
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node, name: str, value: Any) -> None:
    from onnx import helper

    for k, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[k]
            break
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


def _add_initializer(graph, name_hint: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    name, k = name_hint, 0
    while name in taken:
        k += 1
        name = f"{name_hint}_{k}"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def _rename(graph, old: str, new: str) -> None:
    """Every node input and output named `old` is named `new` (graph inputs and outputs keep their names)."""
    for n in graph.node:
        for names in (n.input, n.output):
            for k, i in enumerate(names):
                if i == old:
                    names[k] = new


def _bypass(graph, view: _View, node, src: str, dst: str) -> bool:
    """Remove `node`, whose output `dst` equals its input `src`.  False when that cannot be done."""
    if dst in view.outputs:
        if src in view.inputs or src in view.outputs or src not in view.producer:
            return False  # keep a node that connects graph input/output names
        _rename(graph, src, dst)  # the producer writes the graph output directly
    else:
        _rename(graph, dst, src)
    graph.node.remove(node)
    return True


def _rewrite_each(model, accept: Callable[[Any], bool], rewrite: Callable[[Any, _View, Any], bool]) -> int:
    """`rewrite(graph, view, node)` on every node `accept`ed, in graph order; it returns whether it changed the
    graph (the view is then rebuilt for the next node).  Returns the number of rewrites."""
    graph, done, view = model.graph, 0, None
    for node in list(graph.node):
        if accept(node):
            view = view or _View(graph)
            if rewrite(graph, view, node):
                done += 1
                view = None
    return done


# ------------------------------------------------------------------------------------------- passes

def remove_identities(model) -> int:
    """Drop Identity nodes and Dropout nodes that are the identity (inference mode, mask unused)."""
    def rewrite(graph, view: _View, node) -> bool:
        if node.op_type == "Dropout":
            if len(node.output) > 1 and node.output[1] and view.consumers.get(node.output[1]):
                return False
            if len(node.input) > 2 and node.input[2]:
                training = view.const(node.input[2])
                if training is None or bool(np.asarray(training).reshape(-1)[0]):
                    return False
        return _bypass(graph, view, node, node.input[0], node.output[0])

    return _rewrite_each(model, lambda n: n.op_type in LEFTOVER_OPS, rewrite)


def fold_constants(model, max_elements: int = 1 << 20) -> int:
    """Replace nodes whose inputs are all constants by initializers holding their outputs."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    opsets = list(model.opset_import)

    def rewrite(graph, view: _View, node) -> bool:
        ins = [i for i in node.input if i]
        if not ins or not all(view.is_const(i) for i in ins) or any(o in view.outputs for o in node.output):
            return False
        values = [view.const(i) for i in ins]
        if sum(v.size for v in values) > max_elements:
            return False
        feeds = {f"in{k}": v for k, v in enumerate(values)}
        inputs = iter(feeds)
        one = helper.make_node(node.op_type, [next(inputs) if i else "" for i in node.input],
                               [f"out{k}" for k in range(len(node.output))], domain=node.domain)
        one.attribute.extend(node.attribute)
        g = helper.make_graph([one], "fold", [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(
            v.dtype), v.shape) for k, v in feeds.items()], [helper.make_empty_tensor_value_info(o) for o in one.output])
        try:
            outs = ReferenceEvaluator(helper.make_model(g, opset_imports=opsets)).run(None, feeds)
        except Exception:  # an op the reference evaluator does not know: leave it to the runtime
            return False
        for name, value in zip(node.output, outs):
            if name:
                _rename(graph, name, _add_initializer(graph, name, np.asarray(value)))
        graph.node.remove(node)
        return True

    return _rewrite_each(model, lambda n: n.op_type not in _NON_DETERMINISTIC + ("Constant",)
                         and n.domain in ("", "ai.onnx"), rewrite)


def cancel_transpose_pairs(model) -> int:
    """Transpose(p) -> Transpose(q) with p then q the identity: the second's readers read the input."""
    def rewrite(graph, view: _View, node) -> bool:
        first = view.producer.get(node.input[0])
        if first is None or first.op_type != "Transpose":
            return False
        p, q = _attr(first, "perm"), _attr(node, "perm")
        if p is None or q is None or [p[i] for i in q] != list(range(len(p))):
            return False
        return _bypass(graph, view, node, first.input[0], node.output[0])

    done = _rewrite_each(model, lambda n: n.op_type == "Transpose", rewrite)
    prune(model)
    return done


def fold_pad(model) -> int:
    """Constant-mode Pad of H, W only into the next Conv (value 0), MaxPool (-inf) or AveragePool (0)."""
    def rewrite(graph, view: _View, node) -> bool:
        user = view.only_consumer(node.output[0])
        pads = view.const(node.input[1]) if len(node.input) > 1 else None
        value = view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
        axes = view.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if user is None or pads is None or value is None or axes is not None or pads.size != 8:
            return False
        pads, value = [int(v) for v in pads.reshape(-1)], float(np.asarray(value).reshape(-1)[0])
        if any(pads[k] != 0 for k in (0, 1, 4, 5)) or min(pads) < 0:
            return False
        ok = {"Conv": value == 0.0, "MaxPool": value == -np.inf,
              "AveragePool": value == 0.0 and (_attr(user, "count_include_pad", 0) == 1
                                               or not any(_attr(user, "pads", [0]))),
              }.get(user.op_type, False)
        auto_pad = _attr(user, "auto_pad", b"NOTSET")
        if not ok or user.input[0] != node.output[0] or auto_pad not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
            return False
        own = list(_attr(user, "pads", [0, 0, 0, 0]))
        _set_attr(user, "pads", [own[0] + pads[2], own[1] + pads[3], own[2] + pads[6], own[3] + pads[7]])
        _set_attr(user, "auto_pad", None)
        if user.op_type == "AveragePool":
            _set_attr(user, "count_include_pad", 1)
        user.input[0] = node.input[0]
        graph.node.remove(node)
        return True

    return _rewrite_each(model, lambda n: n.op_type == "Pad" and (_attr(n, "mode", b"constant") or b"constant")
                         in (b"constant", "constant"), rewrite)


def _bias_for(view: _View, prod, c: np.ndarray) -> np.ndarray | None:
    """The new bias (input 2 of Conv and Gemm) for Add(prod output, c), or None when c is no bias of prod."""
    if c.dtype != np.float32:
        return None
    if prod.op_type == "Conv":
        w = view.shape(prod.input[1])
        if w is None or c.ndim > len(w):
            return None
        cout = w[0]
        shape = (1,) * (len(w) - c.ndim) + c.shape
        if c.size != 1 and not (shape[1] == cout and all(d == 1 for k, d in enumerate(shape) if k != 1)):
            return None
    elif prod.op_type == "Gemm":
        b = view.shape(prod.input[1])
        if b is None or c.ndim > 2:
            return None
        cout = b[0] if _attr(prod, "transB", 0) else b[1]
        shape = (1,) * (2 - c.ndim) + c.shape
        if c.size != 1 and shape != (1, cout):
            return None
    else:
        return None
    add = np.broadcast_to(c.reshape(-1), (cout,)).astype(np.float32)
    if len(prod.input) > 2 and prod.input[2]:
        old = view.const(prod.input[2])
        if old is None:
            return None
        beta = float(_attr(prod, "beta", 1.0)) if prod.op_type == "Gemm" else 1.0
        add = add + beta * np.broadcast_to(old.reshape(-1), (cout,))
    return add.astype(np.float32)


def fuse_bias(model) -> int:
    """Add(Conv(x, W[, b]), c) -> Conv(x, W, b + c) and Add(Gemm(..), c) -> Gemm(.., c), c per channel."""
    def rewrite(graph, view: _View, node) -> bool:
        for k in (0, 1):
            prod = view.producer.get(node.input[k])
            if prod is None or prod.op_type not in ("Conv", "Gemm") or view.only_consumer(node.input[k]) is not node:
                continue
            c = view.const(node.input[1 - k])
            bias = None if c is None else _bias_for(view, prod, c)
            if bias is None:
                continue
            name = _add_initializer(graph, f"{prod.output[0]}_bias", bias)
            while len(prod.input) <= 2:
                prod.input.append("")
            prod.input[2] = name
            if prod.op_type == "Gemm":
                _set_attr(prod, "beta", 1.0)
            prod.output[0] = node.output[0]
            graph.node.remove(node)
            return True
        return False

    done = _rewrite_each(model, lambda n: n.op_type == "Add", rewrite)
    prune(model)
    return done


def _dims(value_info) -> tuple | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)


def _broadcast(a: tuple, b: tuple) -> tuple | None:
    """Multidirectional (numpy) broadcast of two shapes whose dims may be symbols; None if unknown."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x is None or y is None:
            return None
        out.append(y if x == 1 else x if (y == 1 or x == y) else None)
        if out[-1] is None:
            return None
    return tuple(out)


def _inserted_unit_axes(src: tuple, out: tuple) -> list[int] | None:
    """Axes of `out` that are 1s inserted into `src` (out == src with those axes added), else None."""
    axes, k = [], 0
    for axis, d in enumerate(out):
        if k < len(src) and d == src[k]:
            k += 1
        elif d == 1:
            axes.append(axis)
        else:
            return None
    return axes if k == len(src) and axes else None


def simplify_broadcasts(model) -> int:
    """Expand(x, s) -> x where the readers broadcast anyway; Reshape -> Unsqueeze / Flatten where it is one.

    An Expand goes when x already has the expanded shape, or when every reader is a broadcasting
    elementwise op whose other operand broadcasts with x to the same shape as with the expanded value
    (jax2onnx's form of `y * gate[:, :, None, None]`).  Shapes come from ONNX shape inference with data
    propagation, so a batch-polymorphic graph's Shape -> Gather -> Concat targets resolve too, and the
    shape arithmetic that fed the removed nodes is pruned.  A batch-polymorphic flattening Reshape
    becomes a Flatten.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    first = _View(graph)
    if not any(n.op_type == "Expand" or (n.op_type == "Reshape" and not first.is_const(n.input[1]))
               for n in graph.node):
        return 0  # nothing to do: spare the shape inference (it copies the model)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: _dims(v) for v in list(inferred.graph.value_info) + list(inferred.graph.input)
              + list(inferred.graph.output)}
    shapes.update({i.name: tuple(i.dims) for i in graph.initializer})

    def rewrite(graph, view: _View, node) -> bool:
        src, out = node.input[0], node.output[0]
        users = view.consumers.get(out, [])
        s_src, s_out = shapes.get(src), shapes.get(out)
        if out in view.outputs or not users or s_src is None or s_out is None or None in s_src + s_out:
            return False
        if node.op_type == "Reshape":
            if view.const(node.input[1]) is not None:
                return False  # a constant target shape is already one node
            axes = _inserted_unit_axes(s_src, s_out)
            if axes is not None:
                new = helper.make_node("Unsqueeze", [src, _add_initializer(graph, f"{out}_axes",
                                                                           np.asarray(axes, np.int64))], [out])
            elif len(s_out) == 2 and s_out[0] == s_src[0] and all(isinstance(d, int) for d in s_src[1:]) \
                    and s_out[1] == int(np.prod(s_src[1:])):
                new = helper.make_node("Flatten", [src], [out], axis=1)
            else:
                return False
            graph.node.insert(list(graph.node).index(node), new)
            graph.node.remove(node)
            return True

        def same_result(user) -> bool:
            if user.op_type not in _BROADCAST_OPS or len(user.input) != 2 or list(user.input).count(out) != 1:
                return False
            other = shapes.get(user.input[1 - list(user.input).index(out)])
            expanded = None if other is None or None in other else _broadcast(other, s_out)
            return expanded is not None and expanded == _broadcast(other, s_src)

        if s_src == s_out or all(same_result(u) for u in users):
            _rename(graph, out, src)
            graph.node.remove(node)
            return True
        return False

    done = _rewrite_each(model, lambda n: n.op_type in ("Expand", "Reshape"), rewrite)
    prune(model)
    return done


def prune(model) -> int:
    """Remove nodes whose outputs nothing reads, then initializers nothing reads."""
    graph, removed = model.graph, 0
    while True:
        view = _View(graph)
        dead = [n for n in graph.node if not any(o in view.outputs or view.consumers.get(o) for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
        removed += len(dead)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return removed


def set_boundary_layout(model, layout: str) -> None:
    """Make the (NHWC) 4-D graph input and 4-D outputs NCHW with a Transpose each ('NHWC': no change)."""
    from onnx import helper

    if layout == "NHWC":
        return
    if layout != "NCHW":
        raise ValueError(f"layout must be NHWC or NCHW, got {layout!r}")
    graph = model.graph
    for vi, is_input in [(vi, True) for vi in graph.input] + [(vi, False) for vi in graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != 4:
            continue
        inner = f"{vi.name}_nhwc"
        _rename(graph, vi.name, inner)
        if is_input:  # NCHW in -> the NHWC tensor the graph reads
            graph.node.insert(0, helper.make_node("Transpose", [vi.name], [inner], perm=[0, 2, 3, 1]))
        else:  # the NHWC tensor the graph computes -> NCHW out
            graph.node.append(helper.make_node("Transpose", [inner], [vi.name], perm=[0, 3, 1, 2]))
        _permute_dims(dims, (0, 3, 1, 2))


def _permute_dims(dims, perm: Iterable[int]) -> None:
    old = [copy.deepcopy(d) for d in dims]
    for k, p in enumerate(perm):
        dims[k].CopyFrom(old[p])


_PASSES: tuple[Callable[[Any], int], ...] = (remove_identities, fold_constants, cancel_transpose_pairs, fold_pad,
                                             fuse_bias, simplify_broadcasts)


def lean_graph(model, layout: str = "NHWC"):
    """Apply the passes (in place) until none changes the graph; returns `model`."""
    set_boundary_layout(model, layout)
    for _ in range(10):
        if not sum(p(model) for p in _PASSES):
            break
    prune(model)
    return model


# ------------------------------------------------------------------------------------------- checks

def op_counts(model) -> collections.Counter:
    """Node count per op type."""
    return collections.Counter(n.op_type for n in model.graph.node)


def layout_transposes(model) -> list:
    """Transposes between layers: every Transpose except one reading a graph input or writing an output."""
    ins, outs = {i.name for i in model.graph.input}, {o.name for o in model.graph.output}
    return [n for n in model.graph.node
            if n.op_type == "Transpose" and n.input[0] not in ins and not (set(n.output) & outs)]


def bias_adds(model) -> list:
    """Adds that only carry a bias: a constant added to a Conv / Gemm / MatMul output, directly or through
    layout-only ops (Transpose, Reshape, Squeeze, Unsqueeze, Flatten: jax2onnx's NHWC form)."""
    view = _View(model.graph)

    def from_linear(name: str) -> bool:
        prod = view.producer.get(name)
        while prod is not None and prod.op_type in ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"):
            prod = view.producer.get(prod.input[0])
        return prod is not None and prod.op_type in ("Conv", "Gemm", "MatMul")

    return [n for n in model.graph.node if n.op_type == "Add" and len(n.input) == 2
            and any(from_linear(n.input[k]) and view.is_const(n.input[1 - k]) for k in (0, 1))]
