"""The compiled loop: one ``While`` whose per-step outputs go to preallocated buffers.

Outputs are written with XLA's dynamic-update-slice into tensors of shape
``[length, ...]`` allocated before the loop (never a ``TensorArray``: a TensorList
cannot cross the XLA/TF boundary and is not vectorizable under XLA). With
``unroll=k`` the body holds ``k`` steps and a second loop runs the remainder.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf

from tfscan import _tf
from tfscan._core import context as _context
from tfscan._tf import xla
from tfscan._transforms import batching as _batching

__all__ = []  # private module

Body = Callable[[list, list], tuple[list, list]]


def run(body: Body, carry: Sequence[tf.Tensor], seqs: Sequence[tf.Tensor], length: Any,
        reverse: bool, unroll: int | bool, out_specs: Sequence[tf.TensorSpec],
        out_shapes: Sequence[Any] | None = None, rows: Any = None, index: bool = False) -> tuple[list, list]:
    """Run ``body(carry, slices) -> (carry, outs)`` for ``length`` steps.

    ``seqs`` are read at the step index along axis 0; ``outs`` are stacked along a new
    axis 0 in index order (so with ``reverse`` the buffers still hold step ``i`` at ``i``).
    ``index``: the step index (a scalar int32, the row the step reads and writes) ends
    ``slices``, computed from the loop counter, not read from a ``tf.range(length)``
    sequence (which TensorFlow's constant folding would turn into a ``length``-element
    literal of the compiled program, read with a gather at every step).
    ``length`` is an int or a scalar int32 tensor (a trip count known at run time).
    ``out_shapes`` (one per output, a list or a 1-D tensor) saves probing the body for
    output shapes that are not static. ``rows`` (the rows of ``seqs``, padded past a
    run-time ``length``) sizes the buffers instead, which are then returned uncut: the
    program's shapes depend on ``rows`` only, so XLA compiles it once per ``rows``.
    A sequence that is a transpose of axes 0 and 1 is read from the transpose's input
    (:func:`_row`).
    """
    _batching.install()  # the XlaDynamic(Update)Slice ops below get pfor converters (tf.vectorized_map)
    carry = list(carry)
    shapes = [c.shape for c in carry]
    static = length if isinstance(length, int) else None
    # A run-time length may be 0 while XLA still compiles the body, whose one-row update
    # must fit the buffer: allocate at least one row and cut back to ``length`` after.
    cut = rows is None and static is None
    if rows is None:
        rows = length if static is not None else tf.maximum(length, 1)
    if out_shapes is None:
        out_shapes = _out_shapes(body, carry, seqs, out_specs, index)
    bufs = [tf.zeros(_stacked_shape(rows, s), spec.dtype) for s, spec in zip(out_shapes, out_specs)]
    if static == 0:
        return carry, bufs
    unroll = static if (unroll is True and static is not None) else unroll
    if unroll is True:
        raise ValueError("scan: unroll=True needs a length known when the scan is traced; "
                         "pass an int unroll for a length known only at run time.")

    def steps(k: int) -> Callable:
        def loop_body(i, state):
            carry, bufs = state[:len(shapes)], state[len(shapes):]
            for u in range(k):
                t = i * k + u if k > 1 else i
                idx = (length - 1 - t) if reverse else t
                # One axis constant for the step's reads and writes (each op would make its own)
                axis = tf.constant(0) if seqs or bufs else None
                xs = [_row(s, idx, axis) for s in seqs] + ([idx] if index else [])
                carry, outs = body(list(carry), xs)
                carry = [keep_shape(c, s) for c, s in zip(carry, shapes)]
                starts: dict = {"axis": axis}  # one start vector per rank, shared by the writes of a step
                bufs = [_write(b, o, idx, starts) for b, o in zip(bufs, outs)]
            return list(carry) + list(bufs)
        return loop_body

    main = length // unroll
    i0 = tf.constant(0, tf.int32)
    state = carry + bufs
    if static is None or main > 0:
        # One iteration runs inline, with no While; not in the per-example trace of a vmap,
        # whose batching rule replaces the scan's While whole (its ops batched one by one,
        # the gradient of vmap read tensors of that trace: length 1, or remat's tail of 1).
        if static is not None and main == 1 and not _context.in_vmap_trace():
            state = steps(unroll)(i0, state)
        else:  # one While built directly (not tf.while_loop's): see _tf.counted_loop
            state = _tf.counted_loop(steps(unroll), i0, main, state)
    if unroll > 1 and (static is None or static % unroll):
        state = _tf.counted_loop(steps(1), main * unroll, length, state)
    carry, bufs = state[:len(shapes)], state[len(shapes):]
    if cut:
        bufs = [b[:length] for b in bufs]
    return list(carry), list(bufs)


def _row(seq: tf.Tensor, idx: Any, axis: Any = 0) -> tf.Tensor:
    """``seq[idx]``; of a sequence that is a transpose of axes 0 and 1 (``vmap``'s mapped xs
    moved behind the time axis, :mod:`tfscan._transforms.scan_batching`), the row is read
    from the transpose's input along its axis 1: the loop then reads the untransposed
    tensor, and XLA never materialises the transpose (a copy of the whole sequence)."""
    source = _swapped01(seq)
    return tf.gather(seq, idx, axis=axis) if source is None else tf.gather(source, idx, axis=1)


def _swapped01(t: tf.Tensor) -> tf.Tensor | None:
    """The input of ``t = transpose(x, [1, 0, 2, ..., n-1])`` (a graph tensor), else ``None``."""
    if tf.executing_eagerly() or not tf.is_symbolic_tensor(t) or t.op.type != "Transpose":
        return None
    perm = tf.get_static_value(t.op.inputs[1])
    rank = t.shape.rank
    if perm is None or rank is None or rank < 2 or list(perm) != [1, 0] + list(range(2, rank)):
        return None
    return t.op.inputs[0]


def _out_shapes(body: Body, carry: list, seqs: Sequence[tf.Tensor],
                out_specs: Sequence[tf.TensorSpec], index: bool = False) -> list:
    """Static output shapes, or run-time ones from one probe step that XLA prunes."""
    if all(s.shape.is_fully_defined() for s in out_specs):
        return [s.shape.as_list() for s in out_specs]
    probe_x = [tf.zeros(tf.shape(s)[1:], s.dtype) for s in seqs] + ([tf.constant(0)] if index else [])
    _, outs = body(list(carry), probe_x)
    return [tf.shape(o) for o in outs]


def _stacked_shape(length: Any, shape: Any) -> Any:
    if isinstance(length, int) and isinstance(shape, list):
        return [length] + shape
    return tf.concat([tf.reshape(tf.cast(length, tf.int32), [1]), tf.cast(shape, tf.int32)], 0)


def _write(buf: tf.Tensor, value: tf.Tensor, idx: Any, starts: dict | None = None) -> tf.Tensor:
    """``buf`` with ``value`` at row ``idx``; ``starts`` holds the start vectors made so far
    for this ``idx``, by rank, and the new axis (a step writing several outputs makes each once)."""
    starts = {} if starts is None else starts
    rank = value.shape.rank
    if rank is None:  # (a residual of a traced gradient may have lost its rank:
        # XLA knows it when it compiles, so the start vector's length is a constant there)
        start = tf.concat([tf.reshape(tf.cast(idx, tf.int32), [1]), tf.zeros(tf.rank(value)[None], tf.int32)], 0)
    elif rank in starts:
        start = starts[rank]
    else:
        start = starts[rank] = tf.stack([idx] + [0] * rank) if rank else tf.reshape(idx, [1])
    # ``expand_dims`` (one op and its axis), not ``value[None]`` (a strided slice and three vectors)
    if "axis" not in starts:
        starts["axis"] = tf.constant(0)
    return xla.dynamic_update_slice(buf, tf.expand_dims(value, starts["axis"]), tf.cast(start, tf.int32))


def keep_shape(t: tf.Tensor, shape: tf.TensorShape) -> tf.Tensor:
    if shape.is_compatible_with(t.shape) and t.shape.is_subtype_of(shape):
        return t
    return tf.ensure_shape(t, shape)
