"""Forward-mode rules per op, as JAX's JVP rules: a plain step's JVP op by op, inline.

A *plain* step (pure real-valued ops: :attr:`tfscan._scan.step.Traced.plain`) is
differentiated in forward mode by walking its ops from the differentiated inputs to the
outputs and emitting, for each op that reads a tangent, the tangent of its outputs: one or
two ops for the common elementwise and linear ops (``tanh``: ``TanhGrad(y, t)``; ``a * b``:
``ta * b + a * tb``). An op without a rule here falls back to its gradient transposed
(``tf.gradients`` twice on that op alone, its inputs held constant), what TensorFlow's
``ForwardAccumulator`` does for every op. TensorFlow has no public per-op JVP; a rule
table built on public ops is what keeps a JVP of a JVP small (the second level
differentiates the first level's rule ops, which have rules of their own).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf

__all__ = []  # private module


def forward_tangents(outs: Sequence[tf.Tensor], sources: Sequence[tuple[tf.Tensor, tf.Tensor]]) -> list | None:
    """Tangents of ``outs`` (``None`` where nothing differentiated reaches an output) given
    ``(tensor, tangent)`` pairs of the graph being built, or ``None`` when an op on the way
    has neither a rule nor a (second) gradient, or a value is not real."""
    known: dict[str, Any] = {}
    for s, t in sources:
        if t is not None:
            if not s.dtype.is_floating:
                return None
            known[s.name] = t
    try:
        for op in _between(outs, known):
            t_in = [known.get(x.name) for x in op.inputs]
            if all(t is None for t in t_in):
                continue
            if any(y.dtype.is_complex for y in op.outputs):
                return None
            if not any(y.dtype.is_floating for y in op.outputs):
                continue
            rule = _RULES.get(op.type)
            t_out = rule(op, t_in) if rule is not None else _transposed(op, t_in)
            for y, t in zip(op.outputs, t_out):
                if t is not None and y.dtype.is_floating:
                    known[y.name] = t
    except LookupError:  # an op without a (second) gradient: the accumulator may know a rule
        return None
    return [known.get(o.name) for o in outs]


def _between(outs: Sequence[tf.Tensor], known: dict) -> list:
    """The ops ``outs`` depend on through data edges, inputs before their consumers,
    not walking above the differentiated tensors ``known``."""
    order, done, stack = [], set(), [(o.op, False) for o in outs if o.name not in known]
    while stack:
        op, expanded = stack.pop()
        if op.name in done:
            continue
        if expanded:
            done.add(op.name)
            order.append(op)
            continue
        stack.append((op, True))
        stack.extend((x.op, False) for x in op.inputs if x.name not in known and x.op.name not in done)
    return order


def _transposed(op, t_in: list) -> list:
    """The tangents of ``op``'s outputs as its gradient transposed: ``g(u) = J^T u`` by
    ``tf.gradients`` with the inputs held constant (only ``op`` is differentiated), then
    ``J t`` as ``g``'s gradient w.r.t. ``u``."""
    xs = [x for x, t in zip(op.inputs, t_in) if t is not None]
    ts = [t for t in t_in if t is not None]
    ys = [y for y in op.outputs if y.dtype.is_floating]
    u = [tf.zeros_like(y) for y in ys]
    g = tf.gradients(ys, xs, grad_ys=u, stop_gradients=xs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    g = [tf.convert_to_tensor(x) for x in g]
    jt = tf.gradients(g, u, grad_ys=ts, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    found = iter(jt)
    return [next(found) if y.dtype.is_floating else None for y in op.outputs]


def _plus(a, b):
    if a is None:
        return b
    return a if b is None else a + b


def _like(t, y: tf.Tensor):
    """``t`` broadcast to the shape of the output ``y`` when it is statically smaller."""
    if t is None or (t.shape.is_fully_defined() and t.shape == y.shape):
        return t
    return tf.broadcast_to(t, tf.shape(y))


def _same(op, t):  # a unary op that is linear: the same op on the tangent
    return [t[0]]


def _add(op, t):
    return [_like(_plus(*t), op.outputs[0])]


def _sub(op, t):
    y = op.outputs[0]
    if t[1] is None:
        return [_like(t[0], y)]
    return [_like(-t[1] if t[0] is None else t[0] - t[1], y)]


def _mul(op, t):
    a, b = op.inputs
    # Each term pairs a tangent with the other operand: it has the output's shape already.
    return [_plus(None if t[0] is None else t[0] * b, None if t[1] is None else a * t[1])]


def _add_n(op, t):
    present = [x for x in t if x is not None]  # AddN's inputs all have the output's shape
    return [present[0] if len(present) == 1 else tf.add_n(present)]


def _div(op, t):
    y, (_, b) = op.outputs[0], op.inputs
    num = _plus(t[0], None if t[1] is None else -(y * t[1]))
    return [num / b]  # the output's shape: ``ta / b`` or ``y * tb / b``


def _tanh_grad(op, t):  # TanhGrad(y, dy) = dy * (1 - y^2)
    y, dy = op.inputs
    return [_plus(None if t[1] is None else tf.raw_ops.TanhGrad(y=y, dy=t[1]),
                  None if t[0] is None else -2.0 * dy * y * t[0])]


def _sigmoid_grad(op, t):  # SigmoidGrad(y, dy) = dy * y * (1 - y)
    y, dy = op.inputs
    return [_plus(None if t[1] is None else tf.raw_ops.SigmoidGrad(y=y, dy=t[1]),
                  None if t[0] is None else dy * (1.0 - 2.0 * y) * t[0])]


def _matmul(op, t):
    a, b = op.inputs
    ta, tb = op.get_attr("transpose_a"), op.get_attr("transpose_b")
    return [_plus(None if t[0] is None else tf.linalg.matmul(t[0], b, transpose_a=ta, transpose_b=tb),
                  None if t[1] is None else tf.linalg.matmul(a, t[1], transpose_a=ta, transpose_b=tb))]


def _second_input_kept(make: Callable) -> Callable:
    """A rule for an op linear in its first input, its second (an axis, a shape) kept."""
    def rule(op, t):
        if t[0] is None:
            return [None]
        return [make(op, t[0], op.inputs[1])]
    return rule


_RULES: dict[str, Callable] = {
    "Identity": _same,
    "Snapshot": _same,
    "AddV2": _add,
    "Add": _add,
    "Sub": _sub,
    "Neg": lambda op, t: [-t[0]],
    "Mul": _mul,
    "RealDiv": _div,
    "Div": _div,
    "AddN": _add_n,
    "StopGradient": lambda op, t: [None],
    "ZerosLike": lambda op, t: [None],
    "OnesLike": lambda op, t: [None],
    "Tanh": lambda op, t: [tf.raw_ops.TanhGrad(y=op.outputs[0], dy=t[0])],
    "TanhGrad": _tanh_grad,
    "Sigmoid": lambda op, t: [tf.raw_ops.SigmoidGrad(y=op.outputs[0], dy=t[0])],
    "SigmoidGrad": _sigmoid_grad,
    "Exp": lambda op, t: [t[0] * op.outputs[0]],
    "Log": lambda op, t: [t[0] / op.inputs[0]],
    "Square": lambda op, t: [2.0 * op.inputs[0] * t[0]],
    "Sin": lambda op, t: [tf.cos(op.inputs[0]) * t[0]],
    "Cos": lambda op, t: [-tf.sin(op.inputs[0]) * t[0]],
    "MatMul": _matmul,
    "Cast": lambda op, t: [tf.cast(t[0], op.outputs[0].dtype)],
    "Sum": _second_input_kept(lambda op, t, axis: tf.reduce_sum(t, axis, keepdims=op.get_attr("keep_dims"))),
    "Mean": _second_input_kept(lambda op, t, axis: tf.reduce_mean(t, axis, keepdims=op.get_attr("keep_dims"))),
    "Reshape": _second_input_kept(lambda op, t, shape: tf.reshape(t, shape)),
    "ExpandDims": _second_input_kept(lambda op, t, axis: tf.expand_dims(t, axis)),
    "Transpose": _second_input_kept(lambda op, t, perm: tf.transpose(t, perm)),
}
