"""``vmap``'s derivatives: its forward rule, and its gradient when TensorFlow's own does not serve.

Forward mode is JAX's rule ``jvp(vmap(f)) == vmap(jvp(f))`` (:func:`tangents`): the
recorded operation's forward function vmaps the per-example JVP (the function traced under
a ``ForwardAccumulator``), so an accumulator never transposes the gradient below.

When every loop in the batched program is a tfscan scan (batched whole, with its own
VJP) and no variable is read, TensorFlow differentiates the batched program itself
(:func:`native_gradient`). Otherwise (an eager tape, a variable read inside, another
loop, a forward accumulator) the gradient is the vmapped per-example VJP,
``grad(vmap(f)) == vmap(vjp(f))``, summed over the batch for shared and captured inputs
(:func:`backward`); it is attached by :func:`with_gradient` both as a tape record and,
in a graph, as the registered gradient of an ``IdentityN``. A cotangent of an unmapped
output (``out_axes=None``) belongs to the batch once: example 0 gets it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import tensorflow as tf

from tfscan import _tf
from tfscan._core import context as _context
from tfscan._core import gradients as _gradients
from tfscan._core import tree as _tree
from tfscan._core.flat import scatter, split_list
from tfscan._scan import forward as _forward
from tfscan._scan.plan import is_float
from tfscan._tf import record
from tfscan._transforms import vmap_axes as _axes
from tfscan._transforms import vmap_program as _program

if TYPE_CHECKING:
    from tfscan._transforms.vmap_program import Batched

__all__ = []  # private module


def needs_gradient(inputs: Sequence[tf.Tensor], entry: Batched) -> bool:
    """Whether a gradient could be asked for: a graph being built, or a live tape."""
    if not any(is_float(d) for d in entry.out_dtypes):
        return False
    if tf.executing_eagerly() and not record.could_possibly_record():
        return False
    return any(is_float(t.dtype) or t.dtype == tf.resource for t in inputs)


def native_gradient(entry: Batched, inputs: Sequence[tf.Tensor]) -> bool:
    """Whether TensorFlow's own gradient of the batched program serves this call: not inside
    a step tfscan traces and copies, nor under a forward accumulator (see ``Batched.native``)."""
    return entry.native and not tf.executing_eagerly() and not _context.in_internal_trace() and \
        not record.tangent_indices(list(inputs))


def with_gradient(fun: Callable, entry: Batched, outs, mapped, shared, captured) -> list:
    """Attach the vmapped per-example gradient to ``outs`` (eager tape, graph tape, tf.gradients),
    and the vmapped per-example JVP of ``fun`` for accumulators."""
    inputs = list(mapped) + list(shared) + list(captured)
    for v in entry.variables:
        if v is not None:
            _tf.mark_variable_accessed(v)  # so that tapes watch it

    def tape_gradient(*d_outs):
        return backward(entry, mapped, shared, captured, list(d_outs), outs)

    def forward_function(*d_inputs):
        return tangents(fun, entry, mapped, shared, captured, list(d_inputs))

    if not tf.executing_eagerly():
        with record.stop_recording():  # the tapes and accumulators see only the operation below
            outs = _gradients.identity(entry.grad_name, list(outs) + inputs)[: len(outs)]
    record.record_operation("tfscan_vmap", outs, inputs, tape_gradient, forward_function)
    return outs


def tangents(fun: Callable, entry: Batched, mapped, shared, captured, d_inputs) -> list:
    """The tangents of the batched outputs for the tangents ``d_inputs`` of ``mapped + shared +
    captured`` (``None``: none): the per-example JVP of ``fun``, vmapped (``None`` for
    outputs that are not float)."""
    n_m, n_s = len(mapped), len(shared)
    dm, ds, dc = split_list(d_inputs, [n_m, n_s])
    m_f = [j for j, t in enumerate(mapped) if is_float(t.dtype) and dm[j] is not None]
    s_f = [j for j, t in enumerate(shared) if is_float(t.dtype) and ds[j] is not None]
    # What ``fun`` closes over, with a tangent: the tensor itself, or the variable of a handle.
    watched = [(c if entry.variables[j] is None else entry.variables[j], dc[j]) for j, c in enumerate(captured)
               if dc[j] is not None and (is_float(c.dtype) or entry.variables[j] is not None)]
    objects = [o for o, _ in watched]
    float_outs = [i for i, d in enumerate(entry.out_dtypes) if is_float(d)]
    templates, args_tree = entry.templates, entry.args_tree

    def per_example_jvp(m, s, tm, ts, tk):
        def flat_call(*values):
            out = _program.example_call(fun, args_tree, templates, values[:n_m], values[n_m:])
            return [tf.convert_to_tensor(v) for v in _tree.flatten(out)[0]]

        _, t_outs = _forward.jvp_call(flat_call, list(m) + list(s),
                                      scatter(n_m, m_f, tm) + scatter(n_s, s_f, ts), list(zip(objects, tk)))
        return [t_outs[i] for i in float_outs]

    axes = entry.mapped_axes
    out = _vmap()(per_example_jvp, in_axes=(list(axes), [None] * n_s, [axes[j] for j in m_f], [None] * len(s_f),
                                            [None] * len(watched)),
                  out_axes=[entry.out_axes[i] for i in float_outs], axis_size=entry.size)(
        list(mapped), list(shared), [dm[j] for j in m_f], [ds[j] for j in s_f], [t for _, t in watched])
    return scatter(len(entry.out_dtypes), float_outs, out)


def backward(entry: Batched, mapped, shared, captured, d_outs, outs) -> list:
    """Gradients for ``mapped + shared + captured`` (``None`` where there is none)."""
    mapped_axes = entry.mapped_axes
    size = entry.size
    if size is None:
        size = tf.shape(mapped[0], out_type=tf.int32)[mapped_axes[0]]
    # The cotangent of an output that is not mapped (out_axes None) belongs to the whole
    # batch once: example 0 gets it, the others zeros.
    float_outs = [i for i, d in enumerate(entry.out_dtypes) if is_float(d)]
    dys, dy_axes = [], []
    for i in float_outs:
        d, axis = d_outs[i], entry.out_axes[i]
        d = tf.zeros_like(outs[i]) if d is None else tf.convert_to_tensor(d)
        if axis is None:
            rest = tf.zeros(tf.concat([tf.reshape(size - 1, [1]), tf.shape(d)], 0), d.dtype)
            d = tf.concat([d[None], rest], 0)
            axis = 0
        dys.append(d)
        dy_axes.append(axis)
    m_f = [j for j, t in enumerate(mapped) if is_float(t.dtype)]
    s_f = [j for j, t in enumerate(shared) if is_float(t.dtype)]
    c_f = [j for j, t in enumerate(captured) if is_float(t.dtype)]
    c_v = [j for j, v in enumerate(entry.variables) if v is not None and v.trainable]
    pe = entry.vjp_pe()  # its scans save residuals, as the VJP reads them

    def per_example(m, s, c, dy):
        # Symbolic gradients (this is always traced): unlike a tape they also work where
        # recording is paused, as when a scan traces its step's VJP.
        sources = [m[j] for j in m_f] + [s[j] for j in s_f] + [c[j] for j in c_f] + [c[j] for j in c_v]
        zero = tf.UnconnectedGradients.ZERO
        if record.tangent_indices(sources):
            # Differentiated by an accumulator (forward over reverse: a Hessian-vector
            # product), which does not see through ``tf.gradients`` of the call (the second
            # derivative came out 0): a tape, recording even inside a busy accumulator.
            with record.forwardprop_state(), tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(sources)
                outs = _tf.call_concrete(pe, list(m) + list(s), list(c))
            gradient = lambda ys, d: tape.gradient(ys, sources, output_gradients=d, unconnected_gradients=zero)  # noqa: E731
        else:
            outs = _tf.call_concrete(pe, list(m) + list(s), list(c))
            gradient = lambda ys, d: tf.gradients(ys, sources, grad_ys=d, unconnected_gradients=zero)  # noqa: E731
        targets = [outs[i] for i in float_outs]
        grads = gradient(targets, list(dy)) if targets else [None] * len(sources)
        out = []
        for k, (g, src) in enumerate(zip(grads, sources)):
            if src.dtype == tf.resource:
                v = entry.variables[c_v[k - (len(sources) - len(c_v))]]
                g = tf.zeros(v.shape, v.dtype) if g is None else g
            elif g is None:
                g = tf.zeros_like(src)
            out.append(tf.convert_to_tensor(g))
        return out

    with _context.per_example_vjp():
        grads = _vmapped_vjp(per_example, mapped_axes, mapped, shared, captured, dys, dy_axes, size)
    grads = iter(grads)
    result: list = []
    for j, ax in enumerate(mapped_axes):
        result.append(_axes.move_from_front(next(grads), ax) if j in m_f else None)
    for j in range(len(shared)):
        result.append(tf.reduce_sum(next(grads), 0) if j in s_f else None)
    c_grads = [None] * len(captured)
    for j in c_f + c_v:
        c_grads[j] = tf.reduce_sum(next(grads), 0)
    return result + c_grads


def _vmap() -> Callable:
    from tfscan._transforms.vmap import vmap  # the public transform (which imports this module)
    return vmap


def _vmapped_vjp(per_example, mapped_axes, mapped, shared, captured, dys, dy_axes, size):
    return _vmap()(per_example, in_axes=(list(mapped_axes), [None] * len(shared), [None] * len(captured), dy_axes),
                out_axes=0, axis_size=None if mapped else size)(list(mapped), list(shared), list(captured), dys)
