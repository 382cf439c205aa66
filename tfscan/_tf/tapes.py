"""The eager tapes and forward accumulators: recording one operation with its own VJP and
JVP, asking which inputs are watched, and the process-wide guard of a TensorFlow bug in
nested accumulators.

Part of the one door to TensorFlow internals (:mod:`tfscan._tf`): every entry says what
it is, why no public API serves, and the TensorFlow versions it was checked on.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import tensorflow as tf
from tensorflow.python.eager import forwardprop_util as _forwardprop_util
from tensorflow.python.eager import record as _record
from tensorflow.python.ops import gradients_util as _gradients_util

__all__: list = []  # private module


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
    def accumulators() -> int:
        """How many ``ForwardAccumulator``s are live and recording on this thread (one busy
        computing a tangent does not count; inside :meth:`forwardprop_state` it does)."""
        return len(_forwardprop_util.pack_tangents([]).indices)

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
    def higher_order(tensors: Sequence[tf.Tensor]) -> bool:
        """Whether the live tapes and accumulators could take a second derivative through
        ``tensors`` (two of them watch one): TensorFlow then builds each ``tf.cond`` or
        ``tf.while_loop`` on such tensors inside a function of its own (its
        ``cflow_gradient_wrapper``, ``control_flow_util_v2.run_as_function_for_tape_gradients``),
        whose gradients TensorFlow builds later outside any XLA context. Public API cannot ask
        (``GradientTape`` says only what one tape watches). Checked on TensorFlow 2.21."""
        return (_gradients_util.PossibleTapeGradientTypes(list(tensors))
                == _gradients_util.POSSIBLE_GRADIENT_TYPES_HIGHER_ORDER)

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
