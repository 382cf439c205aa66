"""The gradient of a scan: a custom VJP whose forward saves each step's input carry.

First-order gradients run one compiled reverse loop (``_program.backward``). When the
gradient itself is being recorded (nested tapes, ``ForwardAccumulator``), the backward
pass is instead written as two differentiable scans — recompute the carries, then walk
back — so gradients of gradients come out of the same machinery.
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf
from tensorflow.python.eager import record

from tfscan import _program
from tfscan._program import Programs, is_float

__all__ = []  # private module


def differentiable_scan(programs: Programs, init: Sequence[tf.Tensor], xs: Sequence[tf.Tensor],
                        consts: Sequence[tf.Tensor], dynamic_length: Any = None) -> list[tf.Tensor]:
    """``carry + ys`` (flat) of the scan, with a gradient for every float input."""
    n_i, n_x = len(init), len(xs)

    @tf.custom_gradient
    def scan_vjp(*flat):
        init, xs, consts = flat[:n_i], flat[n_i: n_i + n_x], flat[n_i + n_x:]
        with record.stop_recording():  # the outer tape sees this call only through grad_fn
            carry, ys, saved = programs.forward(init, xs, consts, dynamic_length, save=True)
        outs = list(carry) + list(ys)

        def grad_fn(*d_outs, variables=None):
            d_outs = [_zeros_if_none(d, o) for d, o in zip(d_outs, outs)]
            d_carry, d_ys = d_outs[:n_i], d_outs[n_i:]
            if record.could_possibly_record():
                grads = _recorded_backward(programs, init, xs, consts, d_carry, d_ys, dynamic_length)
            else:
                grads = programs.backward(xs, consts, saved, d_carry, d_ys, dynamic_length)
            grads = [g for part in grads for g in part]
            if variables is not None:
                return grads, [None] * len(variables)
            return grads

        return outs, grad_fn

    return list(scan_vjp(*init, *xs, *consts))


def _zeros_if_none(d: Any, out: tf.Tensor) -> Any:
    if not is_float(out.dtype):
        return None
    return tf.zeros_like(out) if d is None else d


def _recorded_backward(programs: Programs, init, xs, consts, d_carry, d_ys, dynamic_length):
    """The VJP as differentiable scans (for higher-order and forward-mode derivatives)."""
    from tfscan._scan import scan  # the public scan differentiates this backward pass

    plan, static = programs.plan, programs.static
    fc, fx, fy, fk = _program.float_indices(plan, consts)
    length = static.length if static.length is not None else dynamic_length

    def carries_step(c, x):
        new_c, _ = plan.apply(c, x, consts)
        return list(new_c), list(c)

    _, carries = scan(carries_step, list(init), list(xs), length=length, reverse=static.reverse)

    def vjp_step(acc, sl):
        d_c, d_k = acc
        x_t, c_t, dy_t = sl
        g_c, g_x, g_k = _program.step_vjp(plan, c_t, x_t, list(consts), d_c, dy_t)
        return (g_c, [a + g for a, g in zip(d_k, g_k)]), g_x

    acc0 = ([d_carry[i] for i in fc], [tf.zeros_like(consts[i]) for i in fk])
    seqs = (list(xs), list(carries), [d_ys[i] for i in fy])
    (g_c, g_k), g_x = scan(vjp_step, acc0, seqs, length=length, reverse=not static.reverse)
    d_init, d_xs, d_k = [None] * len(init), [None] * len(xs), [None] * len(consts)
    for j, i in enumerate(fc):
        d_init[i] = g_c[j]
    for j, i in enumerate(fx):
        d_xs[i] = g_x[j]
    for j, i in enumerate(fk):
        d_k[i] = g_k[j]
    return d_init, d_xs, d_k
