"""Checkpointed scans: keep the carry every ``k`` steps, recompute the rest for the gradient.

A scan of ``T`` steps becomes an outer scan over ``T // k`` segments whose step is an inner
scan of ``k`` steps, plus a tail scan of the remaining ``T % k``. The outer scan saves only
its input carries (the checkpoints) and recomputes a segment when the backward pass reaches
it, so residual memory is ``O(T/k + k)`` carries — ``O(sqrt(T))`` with ``k = sqrt(T)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import tensorflow as tf

from tfscan import _tree

__all__ = []  # private module


def checkpointed_scan(scan: Callable, f: Callable, init: Any, xs: Any, length: int, reverse: bool,
                      unroll: int | bool, every: int | str) -> tuple[Any, Any]:
    """``scan(f, init, xs, length, reverse, unroll)`` with checkpoints every ``every`` steps."""
    k = max(1, math.isqrt(length)) if every == "sqrt" else every
    segments, tail = divmod(length, k)
    if segments <= 1:
        return scan(f, init, xs, length=length, reverse=reverse, unroll=unroll, remat=True)
    if reverse:  # walk the reversed sequence forwards, then put the ys back in order
        xs = _tree.map_leaves(lambda x: tf.reverse(x, [0]), xs)
    main = _tree.map_leaves(lambda x: tf.reshape(x[: segments * k], _with_lead([segments, k], x, 1)), xs)

    def segment(carry, x_segment):
        return scan(f, carry, x_segment, length=k, unroll=unroll)

    carry, ys = scan(segment, init, main, length=segments, remat=True)
    ys = _tree.map_leaves(lambda y: tf.reshape(y, _with_lead([segments * k], y, 2)), ys)
    if tail:
        rest = _tree.map_leaves(lambda x: x[segments * k:], xs)
        carry, ys_tail = scan(f, carry, rest, length=tail, unroll=unroll)
        ys = _tree.map_leaves(lambda a, b: tf.concat([a, b], 0), ys, ys_tail)
    if reverse:
        ys = _tree.map_leaves(lambda y: tf.reverse(y, [0]), ys)
    return carry, ys


def _with_lead(lead: list, t: tf.Tensor, drop: int):
    """``lead + t.shape[drop:]``, from the run-time shape where it is not static."""
    rest = t.shape[drop:]
    if rest.is_fully_defined():
        return lead + rest.as_list()
    return tf.concat([tf.constant(lead, tf.int32), tf.shape(t, out_type=tf.int32)[drop:]], 0)
