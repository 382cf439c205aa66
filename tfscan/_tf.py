"""The one door to TensorFlow internals: every use of a private TensorFlow API is here.

Each entry says what it is, why no public API serves, and the TensorFlow versions it
was checked on. Everything else in tfscan uses public ``tf.*`` (and ``keras.*``) APIs
only — ``tests/test_tf_adapter.py`` greps the package to keep it so, and exercises every
entry — so a TensorFlow release that moves an internal breaks this module and that
test, not code scattered across the package.

The entries come in six groups: calling a traced function (:func:`call_concrete`,
:func:`launch_compiled`, :func:`xla_trace`, :func:`quiet_retracing`), the eager tapes (:class:`record`), graphs
(:func:`default_graph`, :func:`in_xla_context`, :func:`is_func_graph`,
:func:`graph_function`, :func:`function_graph`, :func:`op_gradient_functions`, :func:`in_graph`,
:func:`is_autograph_scope`, :func:`mark_variable_accessed`), vectorization
(:class:`pfor`, :class:`xla`) and Keras' RNN internals (:class:`keras_rnn`).

Checked on: TensorFlow 2.21 (the oldest and the newest release the package claims).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Sequence

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla as _xla
from tensorflow.core.framework import attr_value_pb2 as _attr_value_pb2
from tensorflow.python.autograph.core import function_wrappers as _autograph_wrappers
from tensorflow.python.eager import context as _context
from tensorflow.python.eager import forwardprop_util as _forwardprop_util
from tensorflow.python.eager import record as _record
from tensorflow.python.eager.polymorphic_function import polymorphic_function as _polymorphic_function
from tensorflow.python.framework import func_graph as _func_graph
from tensorflow.python.framework import function_def_to_graph as _function_def_to_graph
from tensorflow.python.framework import ops as _ops
from tensorflow.python.ops import control_flow_util as _control_flow_util
from tensorflow.python.ops import resource_variable_ops as _resource_variable_ops
from tensorflow.python.ops.parallel_for import pfor as _pfor

__all__: list = []  # private module


# --- calling a traced function ------------------------------------------------------


def call_concrete(concrete: Any, args: Sequence[tf.Tensor], captured: Sequence[Any] | None = None,
                  xla: bool = False) -> list:
    """Call a ``ConcreteFunction`` on flat tensors, feeding ``captured`` for its captures.

    Why private: ``ConcreteFunction._call_flat`` is the only way to (1) skip
    ``tf.function``'s argument canonicalization (a large part of a short scan's eager
    cost) and (2) feed new values for a trace's captured inputs, so that a function
    closing over a tensor recomputed each call reuses its compiled program instead of
    being traced again. Works eagerly and while building a graph. Eagerly with nothing
    recording (``record.could_possibly_record``), it calls the traced function's
    ``_inference_function.call_flat`` (an ``AtomicFunction``), which is what
    ``_call_flat`` itself ends in then.

    ``xla``: the function is ``jit_compile=True``. Its call then enters XLA's control-flow
    context while a tape or accumulator may record, as ``tf.function.__call__`` does
    (``OptionalXlaContext``): the derivative functions TensorFlow builds for the call
    (a ``ForwardAccumulator``'s JVP, a tape's gradient) then take XLA's form of a
    conditional's gradient, not one with ``Optional`` ops that XLA cannot compile.
    """
    if captured is None:
        captured = concrete.captured_inputs
    if not _record.could_possibly_record() and _context.executing_eagerly():
        # No tape or accumulator could record this call: run the function itself, skipping
        # ``_call_flat``'s gradient bookkeeping (a third of a short scan's call).
        outs = concrete._inference_function.call_flat(*args, *captured)  # noqa: SLF001
    elif xla and (not tf.executing_eagerly() or _record.could_possibly_record()):
        with _polymorphic_function.OptionalXlaContext(True):
            outs = concrete._call_flat(list(args), list(captured))  # noqa: SLF001 - see docstring
    else:
        outs = concrete._call_flat(list(args), list(captured))  # noqa: SLF001 - see docstring
    if outs is None:
        return []
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


def fixed_captures(concrete: Any) -> list | None:
    """``concrete.captured_inputs`` when they are fixed objects, ``None`` when one is a
    deferred capture (a value TensorFlow recomputes at each call).

    Why private: ``captured_inputs`` rebuilds its list (``nest.flatten``) on every call, a
    tenth of a short scan's eager call; the short-call fast path (:mod:`tfscan._core.fast`)
    reads it once. Only the private ``_captured_inputs`` tells a deferred capture
    (``capture_call_time_value``, a callable) from a tensor. Checked on TensorFlow 2.21.
    """
    if any(callable(c) for c in concrete._captured_inputs):  # noqa: SLF001 - see docstring
        return None
    return list(concrete.captured_inputs)


# Integer inputs may be compile-time constants of the program (a shape, a ``tf.range``
# bound): only TensorFlow's kernel for a ``_XlaMustCompile`` call knows which, so those calls
# keep that path (:func:`launch_compiled`).
_MAYBE_CONSTANT = (tf.int8, tf.int16, tf.int32, tf.int64, tf.uint8, tf.uint16, tf.uint32, tf.uint64)


def launch_compiled(concrete: Any, args: Sequence[tf.Tensor], captured: Sequence[Any] | None = None,
                    not_constant: Sequence[int] = ()) -> list | None:
    """Emit a call of a held ``jit_compile=True`` concrete function in the graph being built
    as one ``XlaLaunch`` op; ``None`` (nothing emitted) when that cannot be done safely.

    Why private: TensorFlow emits the call as a ``PartitionedCall`` marked
    ``_XlaMustCompile``. When a graph holding that call runs, the runtime builds its kernel
    (``CreateXlaKernel``, ``compiler/jit/xla_kernel_creator.cc``) with
    ``GetBodyAndConstantsAndResources``, which instantiates the called function in the
    device's ``FunctionLibraryRuntime`` under the calling function's own library (a new
    instantiation key for every calling function) and never releases the handle: every
    fresh ``tf.function`` that calls a held compiled function keeps a copy of its body graph
    for the life of the process (260 KiB for a 20-step unrolled RNN, 1.5 MiB with its
    gradient; ``benchmarks/everyday.py``, row "held jit_compile function"). The
    ``XlaLaunch`` op's kernel reads its constant and resource inputs from its attributes
    and instantiates nothing; it is freed with the graph, and XLA's compilation cache (keyed
    by the function's name and argument shapes) still compiles the program once. No public
    API emits it (``tf.raw_ops`` omits it): the op is made with ``Graph.create_op`` and the
    function added to the graph's library with ``ConcreteFunction.add_to_graph``.

    ``XlaLaunch`` takes the function's inputs in its order as ``constants, args,
    resources``: nothing is emitted (``None``) when a resource input comes before a
    non-resource one, when an integer input (a possible compile-time constant) is not in
    ``not_constant`` (indices into ``args``, known to be run-time values only), when the
    graph is not a ``tf.function``'s, or when a tape or accumulator could record the op
    (it has no registered gradient; tfscan records its own). Checked on TF 2.21.
    """
    graph = _ops.get_default_graph()
    if (_context.executing_eagerly() or not isinstance(graph, _func_graph.FuncGraph)
            or _record.could_possibly_record()):
        return None
    if captured is None:
        captured = concrete.captured_inputs
    inputs = list(args) + [_ops.convert_to_tensor(c) for c in captured]
    dtypes = [t.dtype for t in inputs]
    n_res = 0
    while n_res < len(dtypes) and dtypes[len(dtypes) - 1 - n_res] == tf.resource:
        n_res += 1
    plain = dtypes[: len(dtypes) - n_res]
    allowed = set(not_constant)
    if any(d == tf.resource or d == tf.variant for d in plain) or any(
            d in _MAYBE_CONSTANT and i not in allowed for i, d in enumerate(plain)):
        return None
    outputs = concrete.outputs
    if any(o.dtype in (tf.resource, tf.variant) for o in outputs):
        return None
    concrete.add_to_graph(graph)
    name = concrete._inference_function.name  # noqa: SLF001 - the function add_to_graph adds
    name = name.decode() if isinstance(name, bytes) else name
    types = lambda ts: _attr_value_pb2.AttrValue(  # noqa: E731
        list=_attr_value_pb2.AttrValue.ListValue(type=[t.as_datatype_enum for t in ts]))
    op = graph.create_op("XlaLaunch", inputs, [o.dtype for o in outputs], attrs={
        "Tconstants": types([]), "Targs": types(plain), "Nresources": _attr_value_pb2.AttrValue(i=n_res),
        "Tresults": types([o.dtype for o in outputs]),
        "function": _attr_value_pb2.AttrValue(func=_attr_value_pb2.NameAttrList(name=name))})
    for variable in concrete.graph.variables:  # as ``ConcreteFunction._call_flat`` does
        _resource_variable_ops.variable_accessed(variable)
    result = list(op.outputs)
    for r, o in zip(result, outputs):
        r.set_shape(o.shape)
    return result


def xla_trace() -> contextlib.AbstractContextManager:
    """A context in which a ``jit_compile=True`` function is traced (``get_concrete_function``)
    as its call traces it: the graph built is in XLA's context (:func:`in_xla_context`).

    Why private: ``tf.function.__call__`` enters ``OptionalXlaContext`` around its trace;
    ``get_concrete_function`` does not, so code traced there could not tell that XLA
    compiles it (and would nest compiled calls, or ``XlaLaunch`` ops XLA cannot compile).
    """
    return _polymorphic_function.OptionalXlaContext(True)


def quiet_retracing(fn: Any) -> Any:
    """Silence ``tf.function``'s "frequent retracing" warning for ``fn``.

    Why private: the warning counts traces of every ``tf.function`` made from the same
    Python code; tfscan makes one function per cache entry, each traced once, so the
    warning would be wrong. No public switch exists.
    """
    fn._omit_frequent_tracing_warning = True  # noqa: SLF001 - see docstring
    return fn


# --- the eager tapes ------------------------------------------------------------------


class record:  # noqa: N801 - a namespace named after TensorFlow's module it fronts
    """Recording on the live ``GradientTape``s and ``ForwardAccumulator``s.

    Why private: tfscan records one operation per compiled call with its own VJP (as
    ``tf.custom_gradient`` does internally) and must know which inputs any live tape or
    accumulator watches, so the forward loop saves residuals only for gradients that can
    be asked for. Public ``tf.custom_gradient`` keeps forward tensors in a Python closure
    and cannot say which inputs are watched; ``GradientTape.stop_recording`` pauses one
    tape, not all of them.
    """

    @staticmethod
    def stop_recording() -> contextlib.AbstractContextManager:
        """A context in which no tape or accumulator records."""
        return _record.stop_recording()

    @staticmethod
    def could_possibly_record() -> bool:
        """Whether any tape or accumulator is live on this thread."""
        return bool(_record.could_possibly_record())

    @staticmethod
    def should_record_backprop(tensors: Sequence[tf.Tensor]) -> bool:
        """Whether a live tape watches any of ``tensors``."""
        return bool(_record.should_record_backprop(tensors))

    @staticmethod
    def record_operation(name: str, outputs: Sequence[tf.Tensor], inputs: Sequence[tf.Tensor],
                         backward: Callable, forward: Callable | None = None) -> None:
        """Record ``outputs = op(inputs)`` on the live tapes, with VJP ``backward(*d_outputs)``
        and, for ``ForwardAccumulator``s, JVP ``forward(*d_inputs) -> d_outputs`` (without
        one, an accumulator transposes ``backward``: TensorFlow's "double-back")."""
        _record.record_operation(name, list(outputs), list(inputs), backward, forward)

    @staticmethod
    def record_operation_backprop_only(name: str, outputs: Sequence[tf.Tensor], inputs: Sequence[tf.Tensor],
                                       backward: Callable) -> None:
        """Record ``outputs = op(inputs)`` on the live tapes only (accumulators do not see it)."""
        _record.record_operation_backprop_only(name, list(outputs), list(inputs), backward)

    @staticmethod
    def pack_tangents(tensors: Sequence[tf.Tensor]) -> Any:
        """The live accumulators' tangents of ``tensors``: ``indices`` (one sequence of
        ``(tensor index, index into tensors + tangents)`` per live accumulator, newest
        first; empty when none is live) and ``tangents``. It is the only query of the
        accumulators' state: ``ForwardAccumulator.jvp`` needs the accumulator object,
        which code called inside its scope does not have."""
        return _forwardprop_util.pack_tangents(list(tensors))

    @staticmethod
    def tangent_indices(values: Sequence[Any]) -> set:
        """Indices of ``values`` (any Python values) that a live ``ForwardAccumulator``
        carries a tangent for; only tensors can have one. An index ``>= len(values)`` names
        one of the packed tangents (a newer accumulator's tangent of an older one's)."""
        where = [i for i, v in enumerate(values) if isinstance(v, tf.Tensor)]
        if not where:
            return set()
        packed = _forwardprop_util.pack_tangents([values[i] for i in where])
        shift = len(values) - len(where)
        return {where[i] if i < len(where) else i + shift for acc in packed.indices for i, _ in acc}

    @staticmethod
    def record_operation_forwardprop_only(name: str, outputs: Sequence[tf.Tensor], inputs: Sequence[tf.Tensor],
                                          backward: Callable) -> None:
        """Record ``outputs = op(inputs)`` on the live ``ForwardAccumulator``s only (not on
        tapes); they take its JVP by transposing ``backward``. It is how TensorFlow's own
        functions show an op to accumulators alone; ``tf.custom_gradient`` would record it
        on the tapes too."""
        _record.record_operation_forwardprop_only(name, list(outputs), list(inputs), backward, None)

    @staticmethod
    def forwardprop_state() -> contextlib.AbstractContextManager:
        """A context in which every live ``ForwardAccumulator`` records ops again, even one
        busy computing a ``forward_function`` (TensorFlow's ``push_forwardprop_state``).

        An accumulator computing a tangent ignores the ops that computation runs, and so do
        accumulators made after it; a scan's forward function traces its JVP step, which
        makes its own ``ForwardAccumulator`` inside the trace: that one must record.
        ``tf.function`` uses this same switch when it builds a function's forward-mode
        version."""
        return _forwardprop_util.push_forwardprop_state()

    @staticmethod
    def silent_capture(graph: Any, value: Any) -> tf.Tensor:
        """``graph.capture(value)`` without recording the capture on the live tapes.

        Capturing an outer tensor records an identity op (``captured_value``) on every live
        tape and accumulator, so outer accumulators would differentiate the ops of a trace
        tfscan differentiates itself; ``GradientTape.stop_recording`` needs a tape object."""
        with _record.stop_recording():
            return graph.capture(value)


# --- graphs ---------------------------------------------------------------------------


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


# --- vectorization ------------------------------------------------------------------


class pfor:  # noqa: N801 - a namespace named after TensorFlow's module it fronts
    """``pfor``, the vectorizer behind ``tf.vectorized_map``, which ``tfscan.vmap`` drives.

    Why private: ``tf.vectorized_map`` offers no way to add or replace the conversion
    rule of an op type, to convert a function of a graph under construction, or to keep
    an output unbatched; tfscan needs all three (a scan's ``While`` batches as one loop).
    """

    PFor = _pfor.PFor
    ConversionNotImplementedError = _pfor.ConversionNotImplementedError

    @staticmethod
    def wrap(t: tf.Tensor, stacked: bool) -> Any:
        """A converted value: ``t`` with a flag saying whether it carries the batch axis."""
        return _pfor.wrap(t, stacked)

    @staticmethod
    def stack(t: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        """``t`` tiled along a new leading batch axis of ``size`` (shape ``[1]``)."""
        return _pfor._stack(t, size).t  # noqa: SLF001

    @staticmethod
    def converter(op_type: str) -> Callable | None:
        """The conversion rule registered for ``op_type``, or ``None``."""
        return _pfor._pfor_converter_registry.get(op_type)  # noqa: SLF001

    @staticmethod
    def set_converter(op_type: str, converter: Callable) -> None:
        """Register (or replace) the conversion rule of ``op_type``."""
        _pfor._pfor_converter_registry[op_type] = converter  # noqa: SLF001

    @staticmethod
    def convert(converter: Any, t: tf.Tensor) -> Any:
        """``t`` converted by ``converter`` (a ``PFor``): a wrapped value (:meth:`wrap`)."""
        return converter._convert_helper(t)  # noqa: SLF001

    @staticmethod
    def convert_graph_call(fgraph: Any, converter: Any, inputs: Sequence[Any], n_outputs: int) -> list:
        """Convert a call of the function whose graph is ``fgraph`` on wrapped ``inputs``:
        the first ``n_outputs`` outputs, wrapped. As pfor's ``_convert_function_call``,
        but given the graph (a function imported from a ``GraphDef`` has only its
        ``FunctionDef``: see :func:`function_graph`)."""
        graph_outputs = fgraph.outputs[:n_outputs]

        @tf.function(autograph=False)
        def call(*args):
            for inp, arg in zip(fgraph.inputs, args):
                converter._add_conversion(inp, arg)  # noqa: SLF001
            return tuple(converter._convert_helper(x).t for x in graph_outputs)  # noqa: SLF001

        outs = call(*inputs)
        wrapped = []
        for out, graph_out in zip(outs, graph_outputs):
            converted = converter._convert_helper(graph_out)  # noqa: SLF001
            wrapped.append(_pfor.wrap(out, converted.is_stacked, converted.is_sparse_stacked))
        return wrapped


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


# --- XLA ops ------------------------------------------------------------------------


class xla:  # noqa: N801 - a namespace named after TensorFlow's module it fronts
    """XLA's dynamic slices: how the compiled loop reads and writes its ``[length, ...]`` buffers.

    Why private: ``XlaDynamicUpdateSlice``/``XlaDynamicSlice`` have no public Python API
    (``tf.raw_ops`` does not list them; ``tf.tensor_scatter_nd_update`` lowers to a
    scatter, which XLA does not update in place). tfscan differentiates them with its own
    VJP, so it needs no registered gradient for them.
    """

    @staticmethod
    def dynamic_update_slice(buffer: tf.Tensor, update: tf.Tensor, start: tf.Tensor) -> tf.Tensor:
        """``buffer`` with ``update`` written at index ``start`` (one index per dimension)."""
        return _xla.dynamic_update_slice(buffer, update, start)

    @staticmethod
    def dynamic_slice(x: tf.Tensor, start: tf.Tensor, sizes: Any) -> tf.Tensor:
        """The slice of ``x`` of shape ``sizes`` starting at ``start``."""
        return _xla.dynamic_slice(x, start, sizes)


# --- Keras' RNN internals -----------------------------------------------------------


class keras_rnn:  # noqa: N801 - a namespace
    """What ``tfscan.keras`` reads of ``keras.layers.RNN`` and its dropout cells.

    Why private: tfscan's layers subclass ``keras.layers.RNN`` and replace its inner loop;
    the dropout masks Keras draws per call (``DropoutRNNCell``) live in private cell
    attributes that a cell's ``call`` reads, and Keras' own loop sets them the same way.
    Checked on Keras 3.12–3.13.
    """

    @staticmethod
    def cell_takes_training(cell: Any, default: bool) -> bool:
        """Whether the cell's ``call`` accepts ``training`` (Keras' own record of it)."""
        return bool(getattr(cell, "_call_has_training_arg", default))

    @staticmethod
    def dropout_masks(cell: Any) -> tuple:
        """The ``(input, recurrent)`` dropout masks a dropout cell holds now."""
        return getattr(cell, "_dropout_mask", None), getattr(cell, "_recurrent_dropout_mask", None)

    @staticmethod
    def set_dropout_masks(cell: Any, masks: tuple) -> None:
        """Make the cell's next ``call`` use ``masks`` (see :meth:`dropout_masks`)."""
        cell._dropout_mask, cell._recurrent_dropout_mask = masks  # noqa: SLF001

    @staticmethod
    def config_dropout_masks(layer: Any, cell: Any, x0: tf.Tensor, state: Any) -> None:
        """Draw the masks of this call, as ``keras.layers.RNN.call`` does."""
        layer._maybe_config_dropout_masks(cell, x0, state)  # noqa: SLF001

    @staticmethod
    def reset_dropout_masks(layer: Any, cell: Any) -> None:
        """Forget this call's masks, as ``keras.layers.RNN.call`` does."""
        layer._maybe_reset_dropout_masks(cell)  # noqa: SLF001



_empty_records_guarded = False


def guard_empty_function_call_records() -> None:
    """Stop TensorFlow from recording, on tapes and accumulators, a function call made
    while building a graph that has no outputs (idempotent, process-wide).

    Why private: with two ``ForwardAccumulator``s nested inside a ``tf.function`` trace (a
    JVP of a scan's JVP step), the inner accumulator's tangent of an op with no float
    output (``x > 0``, a cast to int) is a call to a traced JVP function with no outputs;
    the outer accumulator records that call, and its backward function reads its first
    output: ``IndexError`` (TensorFlow 2.21, ``_DelayedRewriteGradientFunctions._backward``).
    A call without outputs has nothing to differentiate, so not recording it changes no
    derivative. No public API reaches it.
    """
    global _empty_records_guarded
    if _empty_records_guarded:
        return
    from tensorflow.python.eager.polymorphic_function import concrete_function  # noqa: PLC0415

    cls = concrete_function._DelayedRewriteGradientFunctions  # noqa: SLF001 - see docstring
    original = cls.record

    def record(self, flat_outputs, inference_args, input_tangents):
        if not flat_outputs:
            return None
        return original(self, flat_outputs, inference_args, input_tangents)

    cls.record = record
    _empty_records_guarded = True
