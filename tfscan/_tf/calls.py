"""Calling a traced function: the concrete-function call without ``tf.function``'s
argument canonicalization, fed new captures; the ``XlaLaunch`` op that a graph can hold
without leaking; tracing in XLA's context; the retracing warning.

Part of the one door to TensorFlow internals (:mod:`tfscan._tf`): every entry says what
it is, why no public API serves, and the TensorFlow versions it was checked on.
"""

from __future__ import annotations

import contextlib
import itertools as _itertools
import threading
import weakref
from typing import Any, Sequence

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2 as _attr_value_pb2
from tensorflow.python.eager import cancellation as _cancellation
from tensorflow.python.eager import context as _context
from tensorflow.python.eager import execute as _execute
from tensorflow.python.eager import record as _record
from tensorflow.python.eager.polymorphic_function import (
    polymorphic_function as _polymorphic_function,
)
from tensorflow.python.framework import auto_control_deps as _auto_control_deps
from tensorflow.python.framework import func_graph as _func_graph
from tensorflow.python.framework import ops as _ops
from tensorflow.python.ops import resource_variable_ops as _resource_variable_ops

__all__: list = []  # private module

_launch_lock = threading.Lock()


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
    ``_call_flat`` itself ends in then; for a function with no control captures and no
    resource or variant outputs, it executes the function op as ``call_flat`` does
    (``context.call_function``) without ``call_flat``'s Python around it.

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
        # ``_call_flat``'s gradient bookkeeping (a third of a short scan's call), and for a
        # plain function (:func:`_plain_call`) the function op directly.
        atomic = concrete._inference_function  # noqa: SLF001
        plain = _PLAIN.get(atomic)
        if plain is None:
            plain = _PLAIN[atomic] = _plain_call(atomic)
        inputs = [*args, *captured]
        if plain and len(inputs) == plain[2] and _cancellation.context() is None:
            ctx = _context.context()
            outs = _execute.quick_execute(plain[0], plain[1], inputs, tuple(
                _itertools.chain(*ctx.function_call_options.as_attrs().items())), ctx)
        else:
            outs = atomic.call_flat(*inputs)
    elif xla and (not tf.executing_eagerly() or _record.could_possibly_record()):
        with _polymorphic_function.OptionalXlaContext(True):
            outs = concrete._call_flat(list(args), list(captured))  # noqa: SLF001 - see docstring
    else:
        outs = concrete._call_flat(list(args), list(captured))  # noqa: SLF001 - see docstring
    if outs is None:
        return []
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


_PLAIN: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _plain_call(atomic: Any) -> tuple | bool:
    """``(name, outputs, inputs)`` of a traced function ``AtomicFunction.call_flat`` would
    run eagerly as just its function op (``context.call_function``), or ``False``: it has
    control captures, or outputs carrying handle data (resources, variants) that
    ``call_flat`` sets after the call. For those ``call_concrete`` executes the op itself,
    as ``call_function`` does: ``call_flat`` adds an argument count check, three context
    managers (the one that rewrites a run-time error's node names into the traced
    function's among them) and a loop over the outputs, a third of a short scan's call."""
    outputs = atomic.function_type.flat_outputs
    if atomic._call_options.control_captures or any(  # noqa: SLF001
            getattr(o, "dtype", None) is None or o.dtype._handle_data for o in outputs):  # noqa: SLF001
        return False
    name = atomic.name.decode() if isinstance(atomic.name, bytes) else atomic.name
    return (name, len(outputs), len(atomic.cached_definition.signature.input_arg))


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
    (tapes record only ops made by op wrappers; tfscan records its own derivatives). Its
    gradient, for ``tf.gradients`` and tapes outside the function, is the one tfscan
    registers (:func:`register_launch_gradient`).

    ``XlaLaunch`` is a stateful op type, so the ``tf.function``'s automatic control
    dependencies would chain every launch that takes no resource with the previous one
    (``auto_control_deps``: stateful ops without resource inputs run in program order):
    under a ``tf.distribute`` strategy the replicas' forward and backward programs then
    ran one after the other. TensorFlow's own call of a function with no stateful op is a
    ``PartitionedCall``, which nothing chains. A launch with no resource input of a program
    with no stateful op is left unchained the same way (:func:`_unchained`); it still runs
    whenever the function runs. Checked on TF 2.21.
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
    outputs = own_outputs(concrete)
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
    if not n_res and op.outputs and not _stateful(concrete):
        _unchain(op)
    result = list(op.outputs)
    for r, o in zip(result, outputs):
        r.set_shape(o.shape)
    return result


def relaunch(op: Any, concrete: Any, before: Any) -> list | None:
    """Make ``op``, an ``XlaLaunch`` op :func:`launch_compiled` emitted for the concrete
    function ``before``, launch ``concrete`` instead: a program taking the same inputs and
    captures whose outputs are ``before``'s followed by more. Returns the added outputs, or
    ``None`` (``op`` unchanged) when the two programs differ in their inputs, captures or
    first outputs.

    Why private: this is how TensorFlow's own gradients of ``While`` and ``If`` give a
    forward op already in the graph the intermediates its backward pass reads
    (``while_v2._WhileGrad``, ``cond_v2._IfGrad``: ``Operation._set_func_attr``,
    ``_set_type_list_attr``, ``_add_outputs``). A ``tf.function`` graph in which nothing
    records runs its loops without residuals; a gradient asked of it later
    (``tf.gradients`` in the same graph, or a tape around the function's call, for which
    TensorFlow builds the forward function from this graph again, after its backward pass)
    makes the same op save them. The inference function made from the graph before stays
    as it was. Checked on TF 2.21.
    """
    if op.type != "XlaLaunch":
        return None
    old, new = own_outputs(before), own_outputs(concrete)
    same_inputs = ([(t.dtype, t.shape) for t in before.inputs] == [(t.dtype, t.shape) for t in concrete.inputs]
                   and [id(c) for c in before.captured_inputs] == [id(c) for c in concrete.captured_inputs])
    if not same_inputs or len(new) < len(old) or any(a.dtype != b.dtype for a, b in zip(old, new)):
        return None
    if any(o.dtype in (tf.resource, tf.variant) for o in new):
        return None
    concrete.add_to_graph(op.graph)
    name = concrete._inference_function.name  # noqa: SLF001 - the function add_to_graph adds
    op._set_func_attr("function", name.decode() if isinstance(name, bytes) else name)  # noqa: SLF001
    op._set_type_list_attr("Tresults", [o.dtype for o in new])  # noqa: SLF001
    extra = new[len(old):]
    op._add_outputs([o.dtype for o in extra], [o.shape for o in extra])  # noqa: SLF001
    return list(op.outputs[len(old):])


def own_outputs(concrete: Any) -> list:
    """The outputs of a concrete function's graph that its call returns.

    Why private: ``ConcreteFunction.outputs`` is its graph's output list, which TensorFlow
    extends for good when it builds the function's first-order tape gradient (the tensors
    the backward function reads become side outputs of the forward one): a held function
    once differentiated lists more outputs than it returns. The call returns as many as
    its inference function's signature (``_inference_function``) has. Checked on TF 2.21.
    """
    n = len(concrete._inference_function.function_type.flat_outputs)  # noqa: SLF001 - as _plain_call reads them
    return list(concrete.outputs[:n])


_UNCHAINED: "weakref.WeakSet[Any]" = weakref.WeakSet()  # pure launches (see _unchained)
_STATEFUL: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()
_resolver: list = []  # _unchained, once registered


def _stateful(concrete: Any) -> bool:
    """Whether the program holds a stateful op (what makes TensorFlow's own call of it a
    ``StatefulPartitionedCall`` rather than a ``PartitionedCall``)."""
    atomic = concrete._inference_function  # noqa: SLF001
    if atomic not in _STATEFUL:
        _STATEFUL[atomic] = any(op._is_stateful for op in concrete.graph.get_operations())  # noqa: SLF001
    return _STATEFUL[atomic]


def _unchain(op: Any) -> None:
    """Keep automatic control dependencies from ordering ``op`` after other stateful ops."""
    with _launch_lock:
        if not _resolver:  # once per process
            _auto_control_deps._acd_resource_resolvers_registry.register(  # noqa: SLF001
                _unchained, "tfscan_unchained_launch")
            _resolver.append(_unchained)
        _UNCHAINED.add(op)


def _unchained(op: Any, reads: Any, writes: Any) -> bool:
    """An automatic-control-dependencies resource resolver (what the public-in-TF-only
    ``register_acd_resource_resolver`` registers; tf.data registers its own) that gives a pure launch (:func:`launch_compiled`) one read of its own first output as
    its only "resource": a stateful op with a resource input is ordered only after writes
    to that resource (there are none), not chained with the stateful ops without one, and
    it still runs whenever the function runs. Returns whether it added the read."""
    if op.type != "XlaLaunch" or op not in _UNCHAINED or reads or writes:
        return False
    reads.add(op.outputs[0])
    return True


_launch_gradient: list = []  # the function registered for ``XlaLaunch``, once


def register_launch_gradient(grad: Any) -> None:
    """Register ``grad(op, *d_outputs)`` as the gradient of the op type ``XlaLaunch`` (once
    per process; later calls do nothing).

    Why private: ``tf.RegisterGradient`` is public, but it sets the gradient of an op type
    TensorFlow itself emits only inside its XLA compiler passes. TensorFlow registers no
    gradient for ``XlaLaunch`` (``tf.gradients`` of one raises ``LookupError``), so nothing
    of TensorFlow's is overridden; if a TensorFlow release registers one, it is kept and
    ``grad`` is not registered. ``grad`` must raise TensorFlow's ``LookupError`` for an op
    that is not one of the :func:`launch_compiled` ops it knows. A SavedModel saves no
    gradient for this op type (only ops with a ``_gradient_op_type`` attribute have theirs
    saved). Checked on TF 2.21.
    """
    if _launch_gradient:
        return
    with _launch_lock:
        if _launch_gradient:
            return
        try:
            tf.RegisterGradient("XlaLaunch")(grad)
        except KeyError:  # TensorFlow registered one: keep it
            pass
        _launch_gradient.append(grad)


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
