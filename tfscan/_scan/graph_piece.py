"""A piece of a traced graph that can be emitted inline, fed through ``input_map``.

A fed node is left out of the piece (``import_graph_def`` resolves an input it maps without
the node; imported, a leftover placeholder or variable read would be an unfed input XLA
cannot compile, and a ``NoOp`` stub in its place would still cost an op per fed tensor in
every loop body); nodes outside the piece are dropped with the control edges to them. Small matrix products
become a multiply and a sum that XLA fuses into the loop body (:mod:`tfscan._scan.small_dots`).

A GraphDef does not carry what TensorFlow keeps on the Python ``Operation`` only: the
gradient function of a call to a ``tf.function`` (its forward/backward pair, set when the
call op is created). Without it, ``tf.gradients`` of an imported call falls back to a
run-time ``SymbolicGradient`` that XLA cannot always compile, and forward mode silently
loses the call's derivative. So a piece built from a live graph remembers those gradient
functions by node name and gives them back to each imported copy.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import tensorflow as tf

from tfscan import _tf
from tfscan._scan import small_dots as _small_dots


__all__ = []  # private module


def node_name(tensor_name: str) -> str:
    return tensor_name.lstrip("^").split(":")[0]


class GraphPiece:
    """Nodes ``keep`` of ``graph_def``, fed at ``fed`` (tensor names), returning ``outputs``.

    ``stub`` names further nodes left out without being fed (unused).
    ``small_dots=False`` keeps every product a ``dot``: a piece that ``pfor`` batches before
    it is compiled (:mod:`tfscan._transforms.scan_batching`), whose products the batch makes
    larger, and whose batched trace goes through a piece of its own.
    """

    def __init__(self, graph_def: tf.compat.v1.GraphDef, fed: Sequence[str], outputs: Sequence[str],
                 keep: Iterable[str] | None = None, stub: Iterable[str] = (), name: str = "piece",
                 source: tf.Graph | None = None, small_dots: bool = True):
        self.fed, self.outputs, self.name = list(fed), list(outputs), name
        stubs = {node_name(t) for t in self.fed} | {node_name(t) for t in stub}
        fed_set = {_tensor_name(t) for t in self.fed}
        keep = None if keep is None else set(keep) | stubs
        gd = tf.compat.v1.GraphDef()
        gd.versions.CopyFrom(graph_def.versions)
        gd.library.CopyFrom(graph_def.library)
        for node in graph_def.node:
            if keep is not None and node.name not in keep:
                continue
            if node.name in stubs:  # fed through ``input_map``: no node needed
                continue
            if node.op == "Placeholder":
                raise ValueError(f"graph piece {name!r}: placeholder {node.name} is not fed")
            nodes = (_small_dots.expand(node, source) if source is not None and small_dots else None) or [node]
            if keep is not None and len(nodes) > 1:
                keep |= {n.name for n in nodes}
            for node in nodes:
                new = gd.node.add()
                new.CopyFrom(node)
                # Colocation with nodes that may not be in the piece is dropped; each node is
                # colocated with itself (the default) explicitly: importing a node without the
                # attribute costs a raised and caught TensorFlow error, ~1 ms each.
                new.attr["_class"].list.s[:] = [b"loc:@" + node.name.encode()]
                if keep is not None:
                    inputs = [i for i in node.input if not i.startswith("^") or node_name(i) in keep]
                    missing = [i for i in inputs if node_name(i) not in keep]
                    if missing:
                        raise ValueError(f"graph piece {name!r}: node {node.name} needs {missing} (not fed)")
                else:
                    inputs = list(node.input)
                inputs = [i for i in inputs if not (i.startswith("^") and node_name(i) in stubs)]
                unfed = [i for i in inputs if node_name(i) in stubs and _tensor_name(i) not in fed_set]
                if unfed:
                    raise ValueError(f"graph piece {name!r}: node {node.name} reads {unfed} of a fed node (not fed)")
                if len(inputs) != len(node.input):
                    del new.input[:]
                    new.input.extend(inputs)
        self.graph_def = gd
        # import_graph_def rejects a mapping no imported node reads (a stub has no outputs).
        consumed = {_tensor_name(i) for n in gd.node for i in n.input if not i.startswith("^")}
        self._used = [n in consumed for n in self.fed]
        self._computed = [n for n in self.outputs if n not in self.fed]
        kept = {n.name for n in gd.node if n.op != "NoOp"}
        self._grad_fns = {} if source is None else {
            name: fn for name, fn in _tf.op_gradient_functions(source).items() if name in kept}

    def apply(self, feeds: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Emit the piece into the current graph, fed with ``feeds`` (in the order of ``fed``).

        An output that is itself fed is returned as fed.
        """
        graph = _tf.default_graph()
        fed = dict(zip(self.fed, feeds))
        input_map = {n: _tf.in_graph(graph, t) for n, t, used in zip(self.fed, feeds, self._used) if used}
        computed = []
        if self._computed:
            op_names = list(self._grad_fns)
            computed = tf.graph_util.import_graph_def(self.graph_def, input_map=input_map,
                                                 return_elements=self._computed + op_names, name=self.name)
            for op, name in zip(computed[len(self._computed):], op_names):
                _tf.set_op_gradient_function(op, self._grad_fns[name])
            computed = computed[: len(self._computed)]
        made = dict(zip(self._computed, computed))
        inputs = list(input_map.values())  # as the imported ops read them (captured)
        if computed and _tf.record.tangent_indices(inputs):
            _record_for_accumulators(self.name, computed, inputs)
        return [fed[n] if n in fed else made[n] for n in self.outputs]


def ancestors_of(graph, names: Sequence[str], fed: Sequence[str]) -> set[str]:
    """Names of the ops the tensors ``names`` of ``graph`` depend on, up to (and with) ``fed``."""
    stop = {n.split(":")[0] for n in fed}
    return ancestors([graph.get_operation_by_name(n.split(":")[0]) for n in names], stop) | stop


def ancestors(roots, stop: set[str] = frozenset()) -> set[str]:
    """Names of ``roots`` and every op they depend on through data edges, up to ``stop``.

    Control edges are not followed (a piece drops those that leave it): the function's
    output ``NoOp`` would otherwise pull every op of the joint graph into every piece.
    """
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.name in stop:
            continue
        stack.extend(t.op for t in op.inputs)
    return seen


def _record_for_accumulators(name: str, outs: list, feeds: list) -> None:
    """Show imported ops to the live ``ForwardAccumulator``s as one operation.

    Imported ops are not recorded on tapes or accumulators as they are created. A piece
    emitted inside a trace that an accumulator differentiates (a scan's JVP step whose
    step runs another piece: the backward pass of a scan, a checkpointed segment) is
    recorded here, its JVP the transposed ``tf.gradients`` of its ops (as TensorFlow does
    for any op without a forward rule).
    """
    f_outs = [o for o in outs if o.dtype.is_floating or o.dtype.is_complex]
    f_in = [i for i, t in enumerate(feeds) if t.dtype.is_floating or t.dtype.is_complex]
    if not f_outs or not f_in:
        return

    def backward(*d_outs):
        d = [g for g, o in zip(d_outs, outs) if o.dtype.is_floating or o.dtype.is_complex]
        d = [tf.zeros_like(o) if g is None else g for g, o in zip(d, f_outs)]
        grads = tf.gradients(f_outs, [feeds[i] for i in f_in], grad_ys=d,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
        out = [None] * len(feeds)
        for i, g in zip(f_in, grads):
            out[i] = tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
        return out

    _tf.record.record_operation_forwardprop_only(f"TfscanPiece_{name}", outs, feeds, backward)


def _tensor_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"

