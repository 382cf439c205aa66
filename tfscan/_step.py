"""A step function traced once, with its closed-over values made explicit.

``tf.function`` captures what a step closes over: tensors and ``tf.Variable`` handles.
For a gradient those must be explicit inputs (the outer tape only sees what crosses the
custom-gradient boundary), and a variable must be *read at call time* so that
``v.assign`` between calls is seen. :class:`Traced` keeps the step's GraphDef in which
every captured tensor and every variable read is fed, and :meth:`Traced.apply`
imports it inline into the graph being built, fed with the given arguments and constants.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.python.framework import func_graph as func_graph_module
from tensorflow.python.framework import importer
from tensorflow.python.framework import ops

__all__ = []  # private module


class Traced:
    """``fn(*args) -> list of tensors`` traced on ``specs``; re-emitted by :meth:`apply`.

    Attributes:
      out_specs: ``tf.TensorSpec`` of every output.
      const_sources: what feeds each constant: a captured tensor or a ``tf.Variable``.
    """

    def __init__(self, fn: Callable[..., Sequence[tf.Tensor]], specs: Sequence[tf.TensorSpec],
                 name: str = "step"):
        cf = tf.function(fn, autograph=False).get_concrete_function(*specs)
        graph = cf.graph
        self.name = name
        self.n_args = len(specs)
        self.out_specs = [tf.TensorSpec(t.shape, t.dtype) for t in graph.outputs]
        self._out_names = [t.name for t in graph.outputs]
        self._arg_names = [t.name for t in graph.inputs[: self.n_args]]
        variables = {id(v.handle): v for v in graph.variables}
        self.const_sources: list[Any] = []
        self._const_names: list[str] = []
        self._handle_names: list[tuple[str, Any]] = []  # resources used other than by reads
        for external, internal in graph.captures:
            if internal.dtype != tf.resource:
                self.const_sources.append(external)
                self._const_names.append(internal.name)
                continue
            var = variables.get(id(external))
            consumers = internal.consumers()
            if var is not None and consumers and all(op.type == "ReadVariableOp" for op in consumers):
                for op in consumers:
                    self.const_sources.append(var)
                    self._const_names.append(op.outputs[0].name)
            else:
                self._handle_names.append((internal.name, external))
        fed = self._arg_names + self._const_names + [n for n, _ in self._handle_names] + \
            [t.name for _, t in graph.captures if t.dtype == tf.resource]
        self._graph_def = _stub_fed_nodes(graph.as_graph_def(), fed)

    def const_values(self) -> list[tf.Tensor]:
        """The constants' current values; variables are read now (and seen by a tape)."""
        return [s.value() if isinstance(s, tf.Variable) else s for s in self.const_sources]

    def apply(self, args: Sequence[tf.Tensor], consts: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Emit the traced ops into the current graph, fed with ``args`` and ``consts``."""
        graph = ops.get_default_graph()
        input_map = {n: _in_graph(graph, t) for n, t in zip(self._arg_names, args)}
        input_map.update((n, _in_graph(graph, t)) for n, t in zip(self._const_names, consts))
        for name, external in self._handle_names:
            input_map[name] = _in_graph(graph, external)
        if not self._out_names:
            return []
        return list(importer.import_graph_def(
            self._graph_def, input_map=input_map, return_elements=self._out_names, name=self.name))


def _in_graph(graph: Any, t: Any) -> Any:
    if isinstance(graph, func_graph_module.FuncGraph):
        return graph.capture(t)
    return t


def _stub_fed_nodes(gd: graph_pb2.GraphDef, fed: Sequence[str]) -> graph_pb2.GraphDef:
    """Turn every node whose output is fed through ``input_map`` into a ``NoOp``.

    ``import_graph_def`` still imports a node whose output is remapped; left as a
    placeholder (or a variable read) it would be an unfed input XLA cannot compile.
    """
    names = {t.split(":")[0] for t in fed}
    out = graph_pb2.GraphDef()
    out.CopyFrom(gd)
    for node in out.node:
        if node.name in names:
            node.CopyFrom(node_def_pb2.NodeDef(name=node.name, op="NoOp"))
    return out
