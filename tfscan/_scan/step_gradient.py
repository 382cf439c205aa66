"""A plain step's VJP built by walking its ops in reverse, not with ``tf.gradients``.

A plain step (:attr:`tfscan._scan.step.Traced.plain`: pure ops on tensors, no state, no
nested function, no op with a gradient of its own) is a straight-line graph of a few ops.
Its VJP is what JAX's transpose of a linearized jaxpr is: visit the ops from the outputs
back, give each the sum of its outputs' cotangents, and call the gradient function
TensorFlow registers for its type (:func:`tfscan._tf.gradient_function`, the one
``tf.gradients`` calls). ``tf.gradients`` does the same with more machinery — control-flow
and colocation bookkeeping, a ``grad_ys`` ``Identity`` per cotangent, zeros for every
unconnected source — which costs a scan's first call about twice the ops' own cost.

The walk raises :class:`Unsupported` for what it does not handle (an op without a
registered gradient, a gradient that is not a tensor or ``IndexedSlices``); the caller then
uses ``tf.gradients``.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tfscan import _tf

__all__ = []  # private module


class Unsupported(Exception):
    """The walk cannot build this VJP; ``tf.gradients`` should."""


def _trainable(t: tf.Tensor) -> bool:
    return t.dtype.is_floating or t.dtype.is_complex


def vjp(targets: Sequence[tf.Tensor], sources: Sequence[tf.Tensor], cotangents: Sequence[tf.Tensor]) -> list:
    """``tf.gradients(targets, sources, grad_ys=cotangents, unconnected_gradients=ZERO)``,
    dense, for a graph of plain ops; each entry a tensor (zeros for an unconnected source)."""
    # Ops that lie between the sources and the targets: those a source reaches and that
    # reach a target (a gradient flowing anywhere else is never read).
    reaches_target: set = set()
    stack = [t.op for t in targets]
    while stack:
        op = stack.pop()
        if op in reaches_target:
            continue
        reaches_target.add(op)
        stack.extend(t.op for t in op.inputs if _trainable(t))
    order = [op for op in _tf.default_graph().get_operations() if op in reaches_target]
    reached = {id(s) for s in sources}  # tensors a source reaches
    between = set()
    for op in order:  # a graph lists its ops in creation order: inputs before their users
        if any(id(t) in reached for t in op.inputs):
            between.add(op)
            reached.update(id(t) for t in op.outputs)
    grads: dict = {}  # id(tensor) -> [cotangent parts]
    tensors: dict = {}

    def add(t, g):
        if g is None:
            return
        if isinstance(g, tf.IndexedSlices):
            g = tf.convert_to_tensor(g)
        if not isinstance(g, tf.Tensor):
            raise Unsupported(f"a gradient of type {type(g).__name__}")
        grads.setdefault(id(t), []).append(g)
        tensors[id(t)] = t

    for t, g in zip(targets, cotangents):
        add(t, g)
    for op in reversed(order):
        if op not in between:
            continue
        outs = [_summed(grads.get(id(t))) for t in op.outputs]
        if all(g is None for g in outs):
            continue
        try:
            fn = _tf.gradient_function(op)
        except LookupError as e:
            raise Unsupported(f"no gradient registered for {op.type}") from e
        if fn is None:  # not differentiable (a shape, a stop_gradient)
            continue
        outs = [g if g is not None or not _trainable(t) else tf.zeros_like(t) for g, t in zip(outs, op.outputs)]
        with tf.name_scope(op.name.split("/")[-1] + "_grad"):
            in_grads = fn(op, *outs)
        in_grads = list(in_grads) if isinstance(in_grads, (list, tuple)) else [in_grads]
        if len(in_grads) != len(op.inputs):
            raise Unsupported(f"the gradient of {op.type} returned {len(in_grads)} values for {len(op.inputs)} inputs")
        for t, g in zip(op.inputs, in_grads):
            if id(t) in reached and _trainable(t):
                add(t, g)
    result = []
    for s in sources:
        g = _summed(grads.get(id(s)))
        result.append(tf.zeros_like(s) if g is None else g)
    return result


def _summed(parts):
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else tf.add_n(parts)
