"""Graphs being built: the default graph, XLA's context, function graphs and their
libraries, captures, the variables a trace read, gradient overrides, autograph.

Part of the one door to TensorFlow internals (:mod:`tfscan._tf`): every entry says what
it is, why no public API serves, and the TensorFlow versions it was checked on.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import tensorflow as tf
from tensorflow.python.autograph.core import function_wrappers as _autograph_wrappers
from tensorflow.python.distribute import distribute_utils as _distribute_utils
from tensorflow.python.eager import context as _context
from tensorflow.python.framework import func_graph as _func_graph
from tensorflow.python.framework import function_def_to_graph as _function_def_to_graph
from tensorflow.python.framework import ops as _ops
from tensorflow.core.framework import attr_value_pb2 as _attr_value_pb2
from tensorflow.python.ops import control_flow_util as _control_flow_util
from tensorflow.python.ops import resource_variable_ops as _resource_variable_ops

__all__: list = []  # private module

# Op types of a graph (the names of TensorFlow's ops, not private API).
CONDITIONAL_OPS = frozenset({"If", "StatelessIf", "Case", "StatelessCase"})
CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})


def default_graph() -> Any:
    """The graph being built (a ``FuncGraph`` inside ``tf.function``).

    Public ``tf.compat.v1.get_default_graph`` returns the same object; this name avoids
    the ``compat.v1`` namespace in code that is TF2-only.
    """
    return _ops.get_default_graph()


def in_xla_context() -> bool:
    """Whether the graph being built (or a graph it is nested in) compiles with XLA.

    Why private: a ``tf.function(jit_compile=True)`` marks its graph with an XLA
    context; a scan built there must not nest a second compiled call (XLA would reject
    it, and it would be slower). No public API exposes the mark.
    """
    return bool(_control_flow_util.GraphOrParentsInXlaContext(_ops.get_default_graph()))


def is_func_graph(graph: Any) -> bool:
    """Whether ``graph`` is a ``tf.function``'s graph (which captures outer tensors).

    Why private: ``FuncGraph`` has no public type; ``tf.inside_function`` answers only for
    the default graph.
    """
    return isinstance(graph, _func_graph.FuncGraph)


def graph_function(graph: Any, name: Any) -> Any:
    """The function named ``name`` in the library of ``graph`` or of a graph it is nested in
    (a call's or a ``While``'s function), or ``None``.

    Why private: ``Graph._get_function`` is the only lookup of a library function by
    name; the batching rules for ``While`` and for calls need the function's graph.
    """
    key = name.encode() if isinstance(name, str) else name
    seen = set()
    while graph is not None and id(graph) not in seen:
        seen.add(id(graph))
        func = graph._get_function(key)  # noqa: SLF001
        if func is not None:
            return func
        graph = _LIBRARY_OF.get(graph) or getattr(graph, "outer_graph", None)
    return None


# A graph built from a FunctionDef (:func:`function_graph`) finds the functions it calls in
# the library of the graph its function came from.
_LIBRARY_OF: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def op_gradient_functions(graph: Any) -> dict:
    """``{op name: gradient function}`` of the ops of ``graph`` whose gradient is set on
    the op itself (calls to a ``tf.function``), not registered by op type.

    Why private: the function-call op keeps its gradient in ``Operation._gradient_function``;
    a traced piece copied into another graph must carry it over (:func:`set_op_gradient_function`).
    """
    return {op.name: op._gradient_function for op in graph.get_operations()  # noqa: SLF001
            if getattr(op, "_gradient_function", None) is not None}


def in_graph(graph: Any, t: tf.Tensor) -> tf.Tensor:
    """``t`` usable in ``graph``: captured when ``graph`` is a function graph and ``t`` lives
    outside it.

    Why private: ``FuncGraph.capture`` is how ``tf.function`` itself captures an outer
    tensor; importing a traced piece with ``input_map`` needs the capture made explicitly.
    """
    return graph.capture(t) if is_func_graph(graph) else t


def graph_variables(graph: Any) -> tuple:
    """The variables a function graph has read so far in its trace (``()`` for another graph).

    Why private: ``FuncGraph._watched_variables`` is how ``tf.function`` knows what its
    trace read (``FuncGraph.variables`` is set from it only when the trace ends); each read
    calls ``FuncGraph.watch_variable`` whether or not a tape records. No public API lists
    them during a trace.
    """
    return tuple(graph._watched_variables) if is_func_graph(graph) else ()  # noqa: SLF001 - see docstring


def set_op_gradient_function(op: Any, fn: Callable) -> None:
    """Give ``op`` the gradient function ``fn`` (see :func:`op_gradient_functions`)."""
    op._gradient_function = fn  # noqa: SLF001


def is_autograph_scope(x: Any) -> bool:
    """Whether ``x`` is the ``FunctionScope`` AutoGraph puts in a converted function's closure.

    Why private: a lambda defined inside a ``tf.function`` (AutoGraph on, the default)
    closes over a new ``FunctionScope`` on every trace; it only names ops and carries no
    value a trace depends on, so the cache key must ignore it, or every graph (each
    Keras retrace) would compile the same scan again. No public type exists to test.
    """
    return isinstance(x, _autograph_wrappers.FunctionScope)


def set_pfor_converter(op: Any, converter: Any) -> None:
    """Give one graph operation its own ``pfor`` converter (``tf.vectorized_map``'s engine).

    Why private: ``pfor`` converts an operation with ``op.pfor_converter`` when the
    attribute exists, before its per-type registry; that is the only way to convert one
    particular op differently from others of its type. tfscan uses it on the ops of a
    scan's forward loop traced for ``vmap``: the scan's batching rule replaces the whole
    loop, so ``pfor`` must not batch those ops one by one first (that would double the
    trace and leave a dead loop in the graph). Checked on TensorFlow 2.21
    (``parallel_for/pfor.py``: ``PFor._convert_helper``).
    """
    op.pfor_converter = converter


def without_autograph(fn: Any) -> Any:
    """``fn`` for tfscan's public API: never converted by AutoGraph, and run as written.

    ``tf.autograph.experimental.do_not_convert`` does this by entering a "conversion
    disabled" context on every call, a tenth of a short eager scan's cost. AutoGraph only
    converts while a ``tf.function`` is traced, so an eager call goes straight to ``fn``.
    Why private: the mark AutoGraph reads (``autograph_info__``, set by
    ``autograph.impl.api.autograph_artifact``, which ``do_not_convert`` uses) has no public
    setter. Checked on TensorFlow 2.21.
    """
    import functools

    from tensorflow.python.autograph.impl import api as _autograph_api

    slow = tf.autograph.experimental.do_not_convert(fn)
    executing_eagerly = _context.executing_eagerly

    def call(*args: Any, **kwargs: Any) -> Any:
        if executing_eagerly():
            return fn(*args, **kwargs)
        return slow(*args, **kwargs)

    functools.update_wrapper(call, fn)
    return _autograph_api.autograph_artifact(call)


def unregister_gradient(name: str) -> None:
    """Remove the gradient function registered under ``name`` (by ``tf.RegisterGradient``).

    Why private: TensorFlow's gradient registry (``ops._gradient_registry``) keeps every
    registered function for the life of the process and has no public way to remove one.
    tfscan registers one gradient per scan traced in a graph (``tf.saved_model`` saves one
    gradient function per name, capturing that op's inputs) and removes it when the graph
    is garbage-collected, so a process that traces graphs for ever does not keep them all.
    """
    _ops._gradient_registry._registry.pop(name, None)  # noqa: SLF001 - see docstring


def mark_variable_accessed(variable: tf.Variable) -> None:
    """Tell the live tapes that ``variable`` was read (so they watch it).

    Why private: a ``vmap`` call reads variables inside a compiled function the tapes do
    not see into; reading ``variable.value()`` would also mark it, but adds a read op.
    """
    _resource_variable_ops.variable_accessed(variable)


def distributed_container(variable: Any) -> Any:
    """The ``tf.distribute`` variable (a ``MirroredVariable``, ...) whose per-replica component
    ``variable`` is, or ``None`` when it is no component of one.

    A function traced inside a replica of a strategy reads that replica's component (a
    plain ``ResourceVariable`` on the replica's device: ``FuncGraph.variables`` lists it);
    reading the container instead reads, in each replica, that replica's own component, so
    one trace serves every replica.

    Why private: a component knows its container only through the weak reference
    ``DistributedVariable.__init__`` sets on it; ``distribute_utils.value_container`` reads
    it (and returns the value itself when there is none). No public API maps a component
    back. Checked on TF 2.21.
    """
    container = _distribute_utils.value_container(variable)
    return None if container is variable or not isinstance(container, tf.distribute.DistributedValues) else container


def variable_handles(variable: tf.Variable) -> list:
    """The resource handles a trace that reads ``variable`` may capture: its own, or for a
    ``tf.distribute`` variable each replica's component's (a trace captures the component
    of the replica it runs in).

    Why private: ``DistributedVariable.handle`` raises outside a replica context, and its
    components are its ``values`` attribute, which the public ``tf.Variable`` API does not
    document. Checked on TF 2.21.
    """
    if isinstance(variable, tf.distribute.DistributedValues):
        return [v.handle for v in variable.values]
    return [variable.handle]


def function_graph(graph: Any, name: Any) -> Any:
    """The ``FuncGraph`` of the library function ``name`` of ``graph`` (a call's or a
    ``While``'s function), or ``None`` if there is no such function.

    Why private: see :func:`graph_function`. A function imported from a ``GraphDef`` (as
    tfscan re-emits a traced step) is a legacy ``_DefinedFunction`` with no ``FuncGraph``;
    one is built from its ``FunctionDef`` (``function_def_to_graph``), so ``pfor`` can
    convert a call nested in a step.
    """
    func = graph_function(graph, name)
    if func is None:
        return None
    fgraph = getattr(func, "graph", None)
    if is_func_graph(fgraph):
        return fgraph
    fgraph = _function_def_to_graph.function_def_to_graph(func.definition)
    _LIBRARY_OF[fgraph] = graph
    return fgraph


def lean_graph(name: str, fn: Callable[..., Any], specs: Any) -> Any:
    """``fn``'s ``FuncGraph`` built directly on placeholders shaped as ``specs`` (tensors or
    ``tf.TensorSpec``\\ s), nested in the graph being built (captures resolve there).

    ``graph.inputs`` are the placeholders then the captured tensors' placeholders,
    ``graph.outputs`` what ``fn`` returned (an input or a capture returned as is goes through
    an ``Identity``: a function's output must be an op's). Only for graphs tfscan builds of
    pure ops it orders itself (a loop's body and predicate, a plain step's VJP): no automatic
    control dependencies are added, no concrete function is made or registered.

    Why private: ``tf.function(...).get_concrete_function`` is the public way to a function
    graph; for the ops of a light step it costs a first call about 3 ms per trace more than
    the graph needs (``TraceType`` placeholders, nest packing, automatic control
    dependencies asking each op for ``_read_only_resource_inputs``, a raised and caught
    error each, an ``AtomicFunction`` registered with the runtime). Placeholders are made
    with ``Graph._create_op_internal`` (0.06 ms each, against 0.14 ms through
    ``tf.compat.v1.placeholder``'s op-definition library). Checked on TF 2.21.
    """
    graph = _func_graph.FuncGraph(name)
    with graph.as_default():
        args = [_placeholder(graph, s.dtype, s.shape) for s in specs]
        graph.inputs = list(args)
        outs = list(fn(*args))
        placeholders = {id(a) for a in list(args) + list(graph.internal_captures)}
        outs = [tf.identity(o) if id(o) in placeholders else o for o in outs]
    graph.inputs = list(args) + list(graph.internal_captures)
    graph.outputs = outs
    return graph


def _placeholder(graph: Any, dtype: tf.DType, shape: Any) -> Any:
    attrs = {"dtype": _attr_value_pb2.AttrValue(type=dtype.as_datatype_enum),
             "shape": _attr_value_pb2.AttrValue(shape=tf.TensorShape(shape).as_proto())}
    return graph._create_op_internal("Placeholder", [], [dtype], attrs=attrs).outputs[0]  # noqa: SLF001


def gradient_function(op: Any) -> Any:
    """The gradient function ``tf.gradients`` would call for ``op`` (its own, a type's
    override, or the one registered for its type), ``None`` for an op with no inputs or a
    non-differentiable one; ``LookupError`` when its type has none registered.

    Why private: ``ops.get_gradient_function`` is TensorFlow's registry lookup; there is no
    public one (``tf.RegisterGradient`` only adds). A plain step's VJP is built by walking
    its few ops in reverse with these functions (:mod:`tfscan._scan.step_gradient`), not
    with ``tf.gradients``. Checked on TF 2.21.
    """
    return _ops.get_gradient_function(op)
