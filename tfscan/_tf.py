"""The one door to TensorFlow internals: every use of a private TensorFlow API is here.

Each entry says what it is, why no public API serves, and the TensorFlow versions it
was checked on. Everything else in tfscan uses public ``tf.*`` APIs only, so a
TensorFlow release that moves an internal breaks this module (and its smoke test,
``tests/test_tf_adapter.py``), not code scattered across the package.

Checked on: TensorFlow 2.21.
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf
from tensorflow.python.autograph.core import function_wrappers as _autograph_wrappers
from tensorflow.python.framework import ops as _ops

__all__ = []  # private module


def default_graph() -> Any:
    """The graph being built (a ``FuncGraph`` inside ``tf.function``).

    Public ``tf.compat.v1.get_default_graph`` returns the same object; this name avoids
    the ``compat.v1`` namespace in code that is TF2-only.
    """
    return _ops.get_default_graph()


def call_concrete(concrete: Any, args: Sequence[tf.Tensor], captured: Sequence[Any] | None = None) -> list:
    """Call a ``ConcreteFunction`` on flat tensors, feeding ``captured`` for its captures.

    Why private: ``ConcreteFunction._call_flat`` is the only way to (1) skip
    ``tf.function``'s argument canonicalization (a large part of a short scan's eager
    cost) and (2) feed new values for a trace's captured inputs, so that a function
    closing over a tensor recomputed each call reuses its compiled program instead of
    being traced again. Works eagerly and while building a graph.
    """
    if captured is None:
        captured = concrete.captured_inputs
    outs = concrete._call_flat(list(args), list(captured))  # noqa: SLF001 - see docstring
    if outs is None:
        return []
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


def quiet_retracing(fn: Any) -> Any:
    """Silence ``tf.function``'s "frequent retracing" warning for ``fn``.

    Why private: the warning counts traces of every ``tf.function`` made from the same
    Python code; tfscan makes one function per cache entry, each traced once, so the
    warning would be wrong. No public switch exists.
    """
    fn._omit_frequent_tracing_warning = True  # noqa: SLF001 - see docstring
    return fn


def is_autograph_scope(x: Any) -> bool:
    """Whether ``x`` is the ``FunctionScope`` AutoGraph puts in a converted function's closure.

    Why private: a lambda defined inside a ``tf.function`` (AutoGraph on, the default)
    closes over a new ``FunctionScope`` on every trace; it only names ops and carries no
    value a trace depends on, so the cache key must ignore it, or every graph (each
    Keras retrace) would compile the same scan again. No public type exists to test.
    """
    return isinstance(x, _autograph_wrappers.FunctionScope)


def forwardprop_state() -> Any:
    """A context in which every live ``ForwardAccumulator`` records ops again, even one that
    is busy computing a ``forward_function`` (TensorFlow's ``push_forwardprop_state``).

    Why private: an accumulator computing a tangent ignores the ops that computation runs,
    and so do accumulators made after it; a scan's forward function traces its JVP step,
    which makes its own ``ForwardAccumulator`` inside the trace — that one must record.
    ``tf.function`` uses this same switch when it builds a function's forward-mode
    version. No public API exposes it.
    """
    from tensorflow.python.eager import forwardprop_util  # noqa: PLC0415 - see docstring
    return forwardprop_util.push_forwardprop_state()


def silent_capture(graph: Any, value: Any) -> tf.Tensor:
    """``graph.capture(value)`` without recording the capture on the live tapes.

    Why private: capturing an outer tensor records an identity op (``captured_value``) on
    every live tape and accumulator, so outer accumulators would differentiate the ops of a
    trace tfscan differentiates itself. ``record.stop_recording`` (``tf.GradientTape``'s
    ``stop_recording`` needs a tape object) pauses that for the capture only.
    """
    from tensorflow.python.eager import record  # noqa: PLC0415 - see docstring
    with record.stop_recording():
        return graph.capture(value)


def has_tangents(tensors: Sequence[Any]) -> bool:
    """Whether a live ``ForwardAccumulator`` holds a tangent for any of ``tensors``.

    Why private: ``forwardprop_util.pack_tangents`` is the only query of the accumulators'
    state (``ForwardAccumulator.jvp`` needs the accumulator object, which code called
    inside its scope does not have).
    """
    from tensorflow.python.eager import forwardprop_util  # noqa: PLC0415 - see docstring
    ts = [t for t in tensors if isinstance(t, tf.Tensor)]
    return bool(ts) and any(forwardprop_util.pack_tangents(ts).indices)  # one entry per accumulator


def record_for_accumulators(op_type: str, outputs: Sequence[tf.Tensor], inputs: Sequence[tf.Tensor],
                            backward_function: Any) -> None:
    """Record an operation on the live ``ForwardAccumulator``s only (not on tapes); they
    take its JVP by transposing ``backward_function``.

    Why private: ``record.record_operation_forwardprop_only`` is how TensorFlow's own
    functions show an op to accumulators alone; ``tf.custom_gradient`` would record it
    on the tapes too, and there is no public way to record an op on accumulators.
    """
    from tensorflow.python.eager import record  # noqa: PLC0415 - see docstring
    record.record_operation_forwardprop_only(op_type, list(outputs), list(inputs), backward_function, None)


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


def pack_tangents(tensors: Sequence[tf.Tensor]) -> Any:
    """The live accumulators' tangents of ``tensors``: ``indices`` (one sequence of
    ``(tensor index, index into tensors + tangents)`` per accumulator, newest first) and
    ``tangents``. Why private: as :func:`has_tangents`."""
    from tensorflow.python.eager import forwardprop_util  # noqa: PLC0415 - see docstring
    return forwardprop_util.pack_tangents(list(tensors))


def stop_recording() -> Any:
    """A context in which no tape or accumulator records (``record.stop_recording``). Why
    private: ``tf.GradientTape.stop_recording`` needs a tape object and pauses that tape only."""
    from tensorflow.python.eager import record  # noqa: PLC0415 - see docstring
    return record.stop_recording()
