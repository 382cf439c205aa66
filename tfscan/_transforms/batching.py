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
  examples keep their values (``where``), exactly as ``jax.vmap`` does (:mod:`while_batching`).
  Outside ``tfscan.vmap``, ``tf.vectorized_map`` keeps TensorFlow's own converter.

A scan itself is batched whole (``scan_batching``, at the ``IdentityN`` carrying its
outputs): one tfscan scan of the batched step, whose own residual-saving VJP applies.
A conditional (``If``/``Case``) is batched by JAX's rule too (``branch_batching``).

Two more rules (also only inside ``tfscan.vmap``) keep the batched step as cheap as one
written for the batch by hand: a scan reads ``xs[t]`` with a ``GatherV2`` at an index
shared by the batch, which becomes a slice of the batched ``xs`` (pfor would build a
general gather); and ``tf.linalg.matvec(W, v)`` of a batched ``v`` becomes one
``v @ W^T`` (pfor would transpose the batch around the matmul on every step). A
reduction over axes known when traced keeps its shifted axes constant (pfor computes
them with ops, and the reduction's gradient would then read run-time shapes).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import tensorflow as tf

from tfscan import _tf
from tfscan._core import context as _context
from tfscan._core import gradients as _gradients
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
def batching(whole_scans: bool = False) -> Iterator[None]:
    """Use tfscan's ``While`` batching rule for ``pfor`` conversions in this block.

    ``whole_scans``: the function being batched is a per-example function as ``vmap`` traced
    it (no gradient of it in the graph), so the ops of a scan's forward loop are read by the
    scan alone and ``pfor`` may leave them unbatched (:mod:`tfscan._transforms.scan_batching`).
    """
    install()
    saved = getattr(_state, "whole_scans", False)
    _state.depth = getattr(_state, "depth", 0) + 1
    _state.whole_scans = whole_scans
    try:
        yield
    finally:
        _state.depth -= 1
        _state.whole_scans = saved


def whole_scans() -> bool:
    return active() and getattr(_state, "whole_scans", False)


def _register(op_type: str, converter) -> None:
    def step():
        if pfor_lib.converter(op_type) is None:  # a later TF may have its own
            pfor_lib.set_converter(op_type, converter)
    _INSTALL.append(step)


def _batch_size(pfor_input) -> tf.Tensor:
    return pfor_input.pfor.loop_len_vector  # shape [1]


def tile(t: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """``t`` repeated ``n`` times along a new leading axis."""
    return tf.repeat(t[None], tf.reshape(n, []), axis=0) if t.shape.rank is None else \
        tf.tile(t[None], tf.concat([tf.cast(n, tf.int32), tf.ones([t.shape.rank], tf.int32)], 0))


def along(mask: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """A per-example ``mask`` (shape ``[batch]``) reshaped to broadcast against ``like``; the
    shape is a constant when the rank is known (under a second ``vmap`` XLA needs it so)."""
    rank = like.shape.rank
    if rank is not None:
        return tf.reshape(mask, [-1] + [1] * (rank - 1))
    return tf.reshape(mask, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def _convert_dynamic_update_slice(pfor_input):
    buf, buf_stacked, _ = pfor_input.input(0)
    upd, upd_stacked, _ = pfor_input.input(1)
    idx, idx_stacked, _ = pfor_input.input(2)
    n = _batch_size(pfor_input)
    if not buf_stacked:
        buf = tile(buf, n)
    if not upd_stacked:
        upd = tile(upd, n)
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
        x = tile(x, n)
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


def _static_reduction(op_func):
    """A reduction over axes known when traced: the shifted axes stay a constant (pfor
    computes them with ops, and the reduction's gradient then reads run-time shapes, which
    keeps a batched scan step from saving its residuals)."""
    def convert(pfor_input):
        if not pfor_input.input(0).is_stacked or pfor_input.input(1).is_stacked:
            return None
        axes = tf.get_static_value(pfor_input.input(1).t)
        if axes is None:
            return None
        t = pfor_input.stacked_input(0)
        rank = t.shape.rank
        if rank is None and (axes < 0).any():
            return None
        axes = [int(a) + 1 if a >= 0 else int(a) + rank for a in axes.reshape(-1)]
        return pfor_lib.wrap(op_func(t, axes, keepdims=pfor_input.get_attr("keep_dims")), True)
    return convert


for _name, _fn in (("Sum", tf.reduce_sum), ("Prod", tf.reduce_prod), ("Max", tf.reduce_max),
                   ("Min", tf.reduce_min), ("Mean", tf.reduce_mean), ("All", tf.reduce_all),
                   ("Any", tf.reduce_any)):
    _override(_name)(_static_reduction(_fn))


@_override("IdentityN")
def _convert_identity_n(pfor_input):
    """A scan's outputs (an ``IdentityN`` carrying its gradient): the scan's own batching rule.
    A loop's outputs whose gradient is an error keep it (the batched loop has none either)."""
    name = _gradients.is_failing(pfor_input.op)
    if name is not None:
        outs = _gradients.identity(name, [w.t for w in pfor_input.inputs])
        return [pfor_lib.wrap(t, w.is_stacked) for t, w in zip(outs, pfor_input.inputs)]
    from tfscan._transforms import scan_batching  # imports the scan machinery: only when used
    return scan_batching.convert(pfor_input)


_register("XlaDynamicUpdateSlice", _convert_dynamic_update_slice)
_register("XlaDynamicSlice", _convert_dynamic_slice)


# ----------------------------------------------------------------------------------
# While loops: JAX's batching rule.

_ORIGINAL_WHILE: dict = {}


def loops_batched() -> int:
    """How many ``While`` ops ``pfor`` has batched on this thread (a scan is batched whole by
    its own rule and not counted): a vmapped program with none is differentiated by TF."""
    return getattr(_state, "loops", 0)


def _convert_while(pfor_input):
    _state.loops = loops_batched() + 1
    if not active() or any(inp.t.dtype == tf.variant for inp in pfor_input.inputs):
        # TensorLists (a TensorArray in the loop) keep pfor's own internal stacking.
        return _ORIGINAL_WHILE[pfor_input.op_type](pfor_input)
    from tfscan._transforms import while_batching
    return while_batching.WhileBatcher(pfor_input).convert()


def _install_while() -> None:
    for name in ("While", "StatelessWhile"):
        _ORIGINAL_WHILE[name] = pfor_lib.converter(name)
        pfor_lib.set_converter(name, _convert_while)


_INSTALL.append(_install_while)


def sub_converter(pfor, fgraph):
    """A ``PFor`` for the ops of a function graph called inside the loop ``pfor`` converts."""
    return pfor_lib.PFor(
        loop_var=pfor.loop_var,
        loop_len=pfor.loop_len_vector[0],
        pfor_ops=fgraph.get_operations(),
        fallback_to_while_loop=pfor.fallback_to_while_loop,
        all_indices=pfor.all_indices,
        all_indices_partitioned=pfor.all_indices_partitioned,
        pfor_config=pfor.pfor_config)


def _convert_call(pfor_input):
    """A function call, converted as pfor's own rule does, but also when the function has
    no ``FuncGraph`` (imported from a ``GraphDef``, as a step's nested ``jit``/``cond``/
    ``while_loop`` is when tfscan re-emits the step: the graph is built from its
    ``FunctionDef``) or lives in the library of an enclosing graph."""
    fgraph = _tf.function_graph(pfor_input.op.graph, pfor_input.get_attr("f").name)
    if fgraph is None:
        return None  # pfor's own rule (and its error)
    return pfor_lib.convert_graph_call(fgraph, sub_converter(pfor_input.pfor, fgraph), pfor_input.inputs,
                                       len(pfor_input.op.outputs), inline=_context.in_inline_batching())


_override("PartitionedCall")(_convert_call)
_override("StatefulPartitionedCall")(_convert_call)


def _convert_launch(pfor_input):
    """An ``XlaLaunch`` op (how tfscan calls a compiled program in a ``tf.function`` graph,
    ``_tf.launch_compiled``), converted as the function call it stands for: its inputs are
    the function's, in order. In every ``pfor`` (``tf.vectorized_map`` of a function that
    calls a scan too), as pfor converts a ``PartitionedCall``."""
    fgraph = _tf.function_graph(pfor_input.op.graph, pfor_input.get_attr("function").name)
    if fgraph is None:
        raise pfor_lib.ConversionNotImplementedError("XlaLaunch of a function pfor cannot find")
    return pfor_lib.convert_graph_call(fgraph, sub_converter(pfor_input.pfor, fgraph), pfor_input.inputs,
                                       len(pfor_input.op.outputs), inline=_context.in_inline_batching())


_INSTALL.append(lambda: pfor_lib.set_converter("XlaLaunch", _convert_launch))


def _convert_branches(pfor_input):
    """A conditional (``cond``/``switch``): JAX's batching rule (``branch_batching``)."""
    from tfscan._transforms import branch_batching
    return branch_batching.convert(pfor_input)


for _name in _tf.CONDITIONAL_OPS:
    _override(_name)(_convert_branches)
