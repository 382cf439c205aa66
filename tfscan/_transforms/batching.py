"""Batching rules that make ``pfor`` (the engine of ``tf.vectorized_map``) batch a scan.

``tfscan.vmap`` vectorizes a function with TensorFlow's ``pfor`` converter, which
rewrites every op of a per-example graph into an op on the whole batch. Two things
stand between ``pfor`` and a scan written as one compiled ``While`` loop:

* XLA's ``XlaDynamicUpdateSlice`` / ``XlaDynamicSlice`` (how the loop writes its
  per-step outputs) have no ``pfor`` converter. They are registered here (for every
  ``pfor`` user: a pure addition): the batch axis goes in front, with a ``0`` start.
* ``pfor``'s ``While`` converter is written for loops whose trip count differs per
  example: each iteration it partitions the still-running examples, keeps
  ``TensorArray``s of finished ones and wraps the body in a conditional. A scan's trip
  count is the same for the whole batch, so this is pure overhead, and
  ``dynamic_partition`` does not compile under XLA. While :func:`batching` is active
  (inside ``tfscan.vmap``) ``While`` ops are converted with JAX's batching rule for
  ``while_loop`` instead: one loop over the batched loop variables; if the
  predicate itself is batched, the loop runs while any example runs and finished
  examples keep their values (``where``), exactly as ``jax.vmap`` does. Outside
  ``tfscan.vmap``, ``tf.vectorized_map`` keeps TensorFlow's own converter.

Two more rules (also only inside ``tfscan.vmap``) keep the batched step as cheap as one
written for the batch by hand: a scan reads ``xs[t]`` with a ``GatherV2`` at an index
shared by the batch, which becomes a slice of the batched ``xs`` (pfor would build a
general gather); and ``tf.linalg.matvec(W, v)`` of a batched ``v`` becomes one
``v @ W^T`` (pfor would transpose the batch around the matmul on every step).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import tensorflow as tf

from tfscan import _tf
from tfscan._tf import pfor as pfor_lib, xla

__all__ = []  # private module

_state = threading.local()


def active() -> bool:
    return getattr(_state, "depth", 0) > 0


_INSTALL: list = []  # what install() puts in pfor's converter registry, in order
_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Put tfscan's converters in pfor's registry (once, on the first ``vmap``): importing
    tfscan changes no TensorFlow registry."""
    global _installed
    with _install_lock:
        if not _installed:
            for step in _INSTALL:
                step()
            _installed = True


@contextlib.contextmanager
def batching() -> Iterator[None]:
    """Use tfscan's ``While`` batching rule for ``pfor`` conversions in this block."""
    install()
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def _register(op_type: str, converter) -> None:
    def step():
        if pfor_lib.converter(op_type) is None:  # a later TF may have its own
            pfor_lib.set_converter(op_type, converter)
    _INSTALL.append(step)


def _batch_size(pfor_input) -> tf.Tensor:
    return pfor_input.pfor.loop_len_vector  # shape [1]


def _tile(t: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """``t`` repeated ``n`` times along a new leading axis."""
    return tf.repeat(t[None], tf.reshape(n, []), axis=0) if t.shape.rank is None else \
        tf.tile(t[None], tf.concat([tf.cast(n, tf.int32), tf.ones([t.shape.rank], tf.int32)], 0))


def _convert_dynamic_update_slice(pfor_input):
    buf, buf_stacked, _ = pfor_input.input(0)
    upd, upd_stacked, _ = pfor_input.input(1)
    idx, idx_stacked, _ = pfor_input.input(2)
    n = _batch_size(pfor_input)
    if not buf_stacked:
        buf = _tile(buf, n)
    if not upd_stacked:
        upd = _tile(upd, n)
    if not idx_stacked:
        start = tf.concat([tf.zeros([1], idx.dtype), idx], 0)
        return pfor_lib.wrap(xla.dynamic_update_slice(buf, upd, start), True)
    # Per-example start indices: one small loop over the batch (rare: a loop index
    # that differs between examples).

    def body(b, out):
        start = tf.concat([tf.reshape(b, [1]), idx[b]], 0)
        return b + 1, xla.dynamic_update_slice(out, upd[b][None], tf.cast(start, idx.dtype))

    _, out = tf.while_loop(lambda b, _: b < tf.reshape(n, []), body,
                           (tf.constant(0, idx.dtype), buf))
    return pfor_lib.wrap(out, True)


def _convert_dynamic_slice(pfor_input):
    x, x_stacked, _ = pfor_input.input(0)
    idx, idx_stacked, _ = pfor_input.input(1)
    sizes = pfor_input.unstacked_input(2)
    n = _batch_size(pfor_input)
    if not x_stacked:
        x = _tile(x, n)
    if not idx_stacked:
        start = tf.concat([tf.zeros([1], idx.dtype), idx], 0)
        return pfor_lib.wrap(xla.dynamic_slice(x, start, tf.concat([tf.cast(n, sizes.dtype), sizes], 0)), True)
    static_sizes = tf.get_static_value(sizes)
    if static_sizes is None:
        raise pfor_lib.ConversionNotImplementedError(
            "XlaDynamicSlice with per-example start indices needs static slice sizes.")
    return pfor_lib.wrap(tf.map_fn(
        lambda a: xla.dynamic_slice(a[0], a[1], static_sizes), (x, idx),
        fn_output_signature=tf.TensorSpec(static_sizes.tolist(), x.dtype)), True)


def _override(op_type: str):
    """Replace ``op_type``'s converter inside :func:`batching` only; elsewhere pfor's own runs."""
    def wrap(converter):
        def step():
            original = pfor_lib.converter(op_type)

            def dispatch(pfor_input):
                if active():
                    out = converter(pfor_input)
                    if out is not None:
                        return out
                return original(pfor_input)
            pfor_lib.set_converter(op_type, dispatch)
        _INSTALL.append(step)
        return converter
    return wrap


@_override("GatherV2")
def _convert_gather(pfor_input):
    """A batched table read at one shared index (a scan reading ``xs[t]``): a slice, not a gather."""
    param, param_stacked, _ = pfor_input.input(0)
    indices, indices_stacked, _ = pfor_input.input(1)
    axis = tf.get_static_value(pfor_input.input(2).t)
    if not param_stacked or indices_stacked or pfor_input.get_attr("batch_dims") != 0 or axis is None \
            or pfor_input.input(2).is_stacked:
        return None
    axis = int(axis)
    if axis < 0:
        if param.shape.rank is None:
            return None
        axis += param.shape.rank - 1
    return pfor_lib.wrap(tf.gather(param, indices, axis=axis + 1), True)


@_override("MatMul")
def _convert_matmul(pfor_input):
    """``W @ v`` for a batched column ``v`` (``tf.linalg.matvec``): one matmul, no transposes."""
    a, a_stacked, _ = pfor_input.input(0)
    b, b_stacked, _ = pfor_input.input(1)
    ta, tb = pfor_input.get_attr("transpose_a"), pfor_input.get_attr("transpose_b")
    if a_stacked or not b_stacked or tb or b.shape.rank != 3 or b.shape[2] != 1:
        return None
    # out[n] = op(a) @ b[n] = (b[n]^T @ op(a)^T)^T, and b[n]^T is a row.
    v = tf.squeeze(b, 2)
    out = tf.matmul(v, a, transpose_b=not ta)
    return pfor_lib.wrap(out[:, :, None], True)


_register("XlaDynamicUpdateSlice", _convert_dynamic_update_slice)
_register("XlaDynamicSlice", _convert_dynamic_slice)


# ----------------------------------------------------------------------------------
# While loops: JAX's batching rule.

_ORIGINAL_WHILE: dict = {}


def _convert_while(pfor_input):
    if not active() or any(inp.t.dtype == tf.variant for inp in pfor_input.inputs):
        # TensorLists (a TensorArray in the loop) keep pfor's own internal stacking.
        return _ORIGINAL_WHILE[pfor_input.op_type](pfor_input)
    return _WhileBatcher(pfor_input).convert()


def _install_while() -> None:
    for name in ("While", "StatelessWhile"):
        _ORIGINAL_WHILE[name] = pfor_lib.converter(name)
        pfor_lib.set_converter(name, _convert_while)


_INSTALL.append(_install_while)


class _WhileBatcher:
    """One ``While`` over the batched loop variables (batch axis 0 of the stacked ones)."""

    def __init__(self, pfor_input):
        self.pfor_input = pfor_input
        self.pfor = pfor_input.pfor
        graph = pfor_input.op.graph
        self.cond_func = _tf.graph_function(graph, pfor_input.get_attr("cond").name)
        self.body_func = _tf.graph_function(graph, pfor_input.get_attr("body").name)
        if self.cond_func is None or self.body_func is None:
            raise ValueError(f"tfscan.vmap: cannot find the functions of while loop {pfor_input.op.name}.")
        body_graph = self.body_func.graph
        self.pass_through = {i for i, (a, b) in enumerate(zip(body_graph.inputs, body_graph.outputs))
                             if a is b}
        self.parallel_iterations = pfor_input.get_attr("parallel_iterations")
        self.n = pfor_input.num_inputs

    def _converter(self, func, all_indices_partitioned=None):
        pfor = self.pfor
        return pfor_lib.PFor(
            loop_var=pfor.loop_var,
            loop_len=pfor.loop_len_vector[0],
            pfor_ops=func.graph.get_operations(),
            fallback_to_while_loop=pfor.fallback_to_while_loop,
            all_indices=pfor.all_indices,
            all_indices_partitioned=pfor.all_indices_partitioned,
            pfor_config=pfor.pfor_config)

    def _cond(self, args, stacked):
        wrapped = [pfor_lib.wrap(a, s) for a, s in zip(args, stacked)]
        return pfor_lib.convert_function_call(self.cond_func, self._converter(self.cond_func), wrapped)[0]

    def _body(self, args, stacked):
        wrapped = [pfor_lib.wrap(a, s) for a, s in zip(args, stacked)]
        return pfor_lib.convert_function_call(self.body_func, self._converter(self.body_func), wrapped)

    def _shapes(self, stacked):
        n_static = tf.get_static_value(self.pfor.loop_len_vector)
        batch = tf.TensorShape([int(n_static[0]) if n_static is not None else None])
        op = self.pfor_input.op
        attr_shapes = op.get_attr("output_shapes") or [None] * self.n
        shapes = []
        for i, (out, s) in enumerate(zip(op.outputs, stacked)):
            shape = out.shape
            if attr_shapes[i] is not None:
                shape = shape.merge_with(tf.TensorShape(attr_shapes[i]))
            shapes.append(batch.concatenate(shape) if s else shape)
        return shapes

    def _build(self, inputs, stacked, batched_pred, record):
        """The converted loop as a ``tf.function``; ``record`` collects stacking mismatches."""
        shapes = self._shapes(stacked)
        n = self.pfor.loop_len_vector

        def cond(*args):
            c = self._cond(args, stacked)
            if c.is_stacked:
                record["pred_stacked"] = True
                return tf.reduce_any(c.t)
            return tf.reshape(c.t, [])

        def body(*args):
            outs = self._body(args, stacked)
            new = []
            for i, (o, s) in enumerate(zip(outs, stacked)):
                t = o.t
                if o.is_stacked and not s:
                    record.setdefault("mismatch", set()).add(i)
                elif s and not o.is_stacked:
                    t = _tile(t, n)
                new.append(t)
            if batched_pred:
                c = self._cond(args, stacked)
                keep = c.t if c.is_stacked else tf.fill(tf.reshape(n, [1]), tf.reshape(c.t, []))
                for i in range(self.n):
                    if stacked[i] and i not in self.pass_through:
                        mask = tf.reshape(keep, tf.concat([n, tf.ones([tf.rank(new[i]) - 1], tf.int32)], 0))
                        new[i] = tf.where(mask, new[i], args[i])
            if record.get("mismatch"):
                return list(args)  # an abandoned trace: the stacking changes, then we retrace
            for t, shape in zip(new, shapes):
                t.set_shape(shape)
            return new

        @tf.function(autograph=False)
        def while_fn():
            return tf.while_loop(cond, body, list(inputs), shape_invariants=shapes,
                                 parallel_iterations=self.parallel_iterations)

        return while_fn

    def convert(self):
        inputs = [inp.t for inp in self.pfor_input.inputs]
        stacked = [inp.is_stacked for inp in self.pfor_input.inputs]
        n = self.pfor.loop_len_vector
        batched_pred = False
        for _ in range(self.n + 2):
            record: dict = {}
            fn = self._build(inputs, stacked, batched_pred, record)
            fn.get_concrete_function()  # trace: find the loop variables that become batched
            if record.get("pred_stacked") and not batched_pred:
                # Per-example trip counts: every loop-variant variable becomes batched.
                batched_pred = True
                stacked = [s or i not in self.pass_through for i, s in enumerate(stacked)]
            elif record.get("mismatch"):
                stacked = [s or i in record["mismatch"] for i, s in enumerate(stacked)]
            else:
                break
            inputs = [_tile(t, n) if s and not inp.is_stacked else t
                      for t, s, inp in zip([i.t for i in self.pfor_input.inputs], stacked,
                                           self.pfor_input.inputs)]
        else:  # pragma: no cover - the stacked set only grows, so this terminates
            raise RuntimeError("tfscan.vmap: batching a while loop did not converge.")
        outs = fn()
        return [pfor_lib.wrap(o, s) for o, s in zip(outs, stacked)]
