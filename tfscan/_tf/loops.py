"""A counted loop emitted as one functional ``While`` op, built directly.

Part of the one door to TensorFlow internals (:mod:`tfscan._tf`): every entry says what
it is, why no public API serves, and the TensorFlow versions it was checked on.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf
from tensorflow.python.framework import func_graph as _func_graph
from tensorflow.python.framework import ops as _ops
from tensorflow.python.ops import control_flow_util_v2 as _cf_util
from tensorflow.python.ops import gen_functional_ops as _gen_functional_ops

from tfscan._tf.graphs import lean_graph
from tfscan._tf.tapes import record

__all__: list = []  # private module

# Loop-variable dtypes the lean builder leaves to ``tf.while_loop`` (TensorArrays and other
# TensorLists, variables and other resources: their handle data and read-only marks matter).
_OPAQUE = frozenset({tf.resource, tf.variant})


def counted_loop(body: Callable[[tf.Tensor, list], Sequence[tf.Tensor]], start: Any, limit: Any,
                 loop_vars: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """``loop_vars`` after ``for i in range(start, limit): loop_vars = body(i, loop_vars)``,
    as one ``StatelessWhile`` op whose state is ``[i, (limit), *loop_vars, *captures]``.

    ``start``: an int32 scalar (int or tensor); ``limit``: an int or an int32 scalar tensor
    (a loop-invariant input then). ``body`` must return tensors of the loop variables'
    dtypes and shapes. Used in a graph being built (inside ``tf.function``).

    Why private: ``tf.while_loop`` (``while_v2``) is the only public way to a ``While`` op,
    and it costs a compiled program's first call more than the loop needs (measured in
    ``benchmarks/README.md``, 6 ms of a 15 ms loop trace): it traces the predicate and the
    body through ``func_graph_from_py_func`` (nest packing, ``TraceType`` placeholders,
    automatic control dependencies), adds two int32 loop variables (a counter and a
    maximum-iteration count, for its gradient) beside the caller's own counter, an
    ``Identity`` per output, and gradient bookkeeping. tfscan's loops are counted, pure and
    differentiated by tfscan's own VJP, so this builds the two ``FuncGraph``\\ s with
    placeholder inputs (:func:`tfscan._tf.lean_graph`) and emits the op (``gen_functional_ops``), adding
    the functions to the graph as ``while_v2`` does (``control_flow_util_v2``), with the same
    XLA attributes (lowering, compile-time-constant propagation).

    Falls back to ``tf.while_loop`` (same values, its own op) when the loop is not one this
    builder may emit: a stateful op in the body (its order would need automatic control
    dependencies), a resource or variant among the loop variables or captures, a deferred
    capture, a body output whose shape is not the loop variable's, or a live tape or
    forward accumulator watching an input (they differentiate a ``While`` with
    ``while_v2``'s gradient, which expects ``while_v2``'s loop state). The op built here
    gets a gradient function that refuses, so no ``tf.gradients`` can misread its state.

    Checked on TensorFlow 2.21.
    """
    loop_vars = [tf.convert_to_tensor(v) for v in loop_vars]
    start = tf.convert_to_tensor(start, tf.int32)
    built = _lean(body, start, limit, loop_vars)
    if built is not None:
        return built

    def cond(i, *_):
        return i < limit

    def wrapped(i, *vs):
        return [i + 1] + list(body(i, list(vs)))
    return list(tf.while_loop(cond, wrapped, [start] + loop_vars))[1:]


def _lean(body, start, limit, loop_vars) -> list | None:
    if tf.executing_eagerly() or any(v.dtype in _OPAQUE for v in loop_vars):
        return None
    outer = _ops.get_default_graph()
    if not isinstance(outer, _func_graph.FuncGraph):
        return None
    static_limit = isinstance(limit, int)
    head = [start] + ([] if static_limit else [tf.convert_to_tensor(limit, tf.int32)])
    state = head + loop_vars
    n_head = len(head)

    def body_fn(*args):
        new = [tf.convert_to_tensor(v) for v in body(args[0], list(args[n_head:]))]
        return [args[0] + 1] + list(args[1:n_head]) + new

    body_graph = _graph(_cf_util.unique_fn_name("", "tfscan_body"), body_fn, state)
    if body_graph is None or body_graph.deferred_external_captures:
        return None
    captures = list(body_graph.external_captures)
    if any(c.dtype in _OPAQUE for c in captures):
        return None
    for out, var in zip(body_graph.outputs, state):
        if out.dtype != var.dtype or not out.shape.is_subtype_of(var.shape):
            return None
    inputs = state + captures
    if record.should_record_backprop(inputs) or record.tangent_indices(inputs):
        return None
    body_graph.outputs.extend(body_graph.internal_captures)  # loop-invariant: passed through

    def cond_fn(*args):
        return [args[0] < (limit if static_limit else args[1])]
    cond_graph = _graph(_cf_util.unique_fn_name("", "tfscan_cond"), cond_fn, inputs)
    if cond_graph is None or cond_graph.external_captures:
        return None
    outs = _gen_functional_ops.stateless_while(
        inputs, _cf_util.create_new_tf_function(cond_graph), _cf_util.create_new_tf_function(body_graph),
        output_shapes=[t.shape for t in state] + [t.shape for t in captures], parallel_iterations=10)
    op = outs[0].op
    _cf_util.maybe_set_lowering_attr(op)
    _cf_util.maybe_propagate_compile_time_consts_in_xla(op)
    op._gradient_function = _no_gradient  # noqa: SLF001 - see the docstring
    return list(outs[n_head: n_head + len(loop_vars)])


def _graph(name: str, fn: Callable, like: Sequence[tf.Tensor]) -> Any:
    """``fn``'s ``FuncGraph`` on placeholders shaped as ``like``, or ``None`` if it holds a
    stateful op. Its outer graph is the graph being built (captures resolve there)."""
    graph = lean_graph(name, fn, like)
    if any(op.op_def.is_stateful for op in graph.get_operations()):
        return None
    return graph


def _no_gradient(op: Any, *grads: Any) -> Any:
    raise LookupError(
        f"tfscan: the loop {op.name} is differentiated by tfscan's own VJP, not by TensorFlow's "
        "While gradient (its loop state is not while_v2's). Please report how this gradient was asked for.")
