"""Cotangents of the ys that are the same at every step, passed as one row.

The gradient of ``sum(ys)`` (or of a mean) reaches a scan as ``tile(1, [T, ...])``, and
a loss that reads only the final carry leaves the ys' cotangent out (``None``, zeros).
Materialised, either is a ``[T, ...]`` tensor the size of the ys, read by the backward
loop one row at a time. When the cotangent is visibly constant along the time axis —
zeros, or in a graph a ``Tile`` / ``BroadcastTo`` / ``Fill`` / ``ZerosLike`` / ``OnesLike``
whose rows are all equal (through ``Identity``, leading-axis ``Reshape``, and slices or
reversals of whole rows) — the
backward loop gets that one row (a :class:`Row`) instead and reuses it at every step;
the ``[T, ...]`` op is left unused (pruned in a graph). JAX gets the same from XLA, which
sinks a broadcast into the loop that slices it.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = []  # private module


class Row:
    """A ``[T, ...]`` cotangent whose every row (along axis 0) is ``value``."""

    __slots__ = ("value",)

    def __init__(self, value: tf.Tensor):
        self.value = value


def zero_row(out: Any) -> Row:
    """The row of the zero cotangent of ``out`` (a tensor or a ``tf.TensorSpec``)."""
    if out.shape[1:].is_fully_defined():
        return Row(tf.zeros(out.shape[1:], out.dtype))
    return Row(tf.zeros(tf.shape(out)[1:], out.dtype))


def row_of(d: Any) -> Row | None:
    """``Row`` when the symbolic tensor ``d`` is visibly the same along axis 0, else ``None``."""
    if not tf.is_symbolic_tensor(d) or d.shape.rank is None or d.shape.rank < 1:
        return None
    row = _row(d, 8)
    return None if row is None else Row(tf.cast(row, d.dtype))


def _row(d: tf.Tensor, depth: int) -> tf.Tensor | None:
    """A tensor of shape ``d.shape[1:]`` equal to every ``d[t]``, or ``None``."""
    op = d.op
    if depth == 0 or d.shape.rank is None or d.shape.rank < 1:
        return None
    if op.type in ("ZerosLike", "OnesLike"):
        fill = tf.zeros if op.type == "ZerosLike" else tf.ones
        return fill(tf.shape(d)[1:], d.dtype)
    if op.type == "Fill":
        return tf.fill(tf.shape(d)[1:], op.inputs[1])
    if op.type == "Identity":
        return _row(op.inputs[0], depth - 1)
    if op.type == "Tile":
        x, multiples = op.inputs
        if x.shape.rank is None or x.shape.rank != d.shape.rank or x.shape[0] != 1:
            return None
        row = tf.squeeze(x, 0)  # one op (``x[0]`` is a strided slice and three vectors)
        static = tf.get_static_value(multiples)
        if static is not None and all(int(m) == 1 for m in static[1:]):
            return row  # the common case (the gradient of a sum): the row as it is
        return tf.tile(row, multiples[1:])
    if op.type == "BroadcastTo":
        x, shape = op.inputs
        rank = d.shape.rank
        if x.shape.rank is None:
            return None
        if x.shape.rank == rank:
            if x.shape[0] != 1:
                return None
            x = x[0]
        return tf.broadcast_to(x, shape[1:])
    if op.type in ("Slice", "StridedSlice", "ReverseV2"):
        # Rows taken along axis 0 (or reversed along it), each whole: the same rows.
        x = op.inputs[0]
        whole = x.shape.rank == d.shape.rank and d.shape[1:].is_fully_defined() and x.shape[1:] == d.shape[1:]
        if op.type == "StridedSlice":
            strides = tf.get_static_value(op.inputs[3])
            whole = whole and strides is not None and all(int(v) in (1, -1) for v in strides[:1]) \
                and all(int(v) == 1 for v in strides[1:]) \
                and not any(op.get_attr(m) for m in ("ellipsis_mask", "new_axis_mask", "shrink_axis_mask"))
        if op.type == "ReverseV2":
            axes = tf.get_static_value(op.inputs[1])
            whole = whole and axes is not None and all(int(a) % d.shape.rank == 0 for a in axes.reshape([-1]))
        return _row(x, depth - 1) if whole else None
    if op.type == "Reshape":
        # A tensor the same along axis 0, reshaped so that the new axis 0 splits the old one
        # (``[T*k, ...] -> [T, k, ...]``, ``[T, ...] -> [T, 1, ...]``): the same along it too.
        x = op.inputs[0]
        if x.shape.rank is None or x.shape.rank < 1 or x.shape[0] is None or d.shape[0] is None:
            return None
        if d.shape[0] == 0 or x.shape[0] % d.shape[0]:
            return None
        inner = _row(x, depth - 1) if d.shape[1:].is_fully_defined() else None
        if inner is None:
            return None
        reps = x.shape[0] // d.shape[0]
        return tf.reshape(tf.tile(tf.reshape(inner, [-1]), [reps]), d.shape[1:])
    return None
