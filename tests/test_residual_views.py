"""The forward loop saves no residual that is a view of what the backward loop already has.

``vmap`` of a scan batches each matrix-vector product with ``pfor``, which reads its
operands through ``ExpandDims``/``Squeeze``/``Reshape``: those views of ``x``, of the
input carry and of the new carry were each saved per step (the new carry twice, ``x``
copied into a buffer of the size of ``xs``). Counted in the optimised HLO of the ported
JAX train step (issue 14 item 1), against the buffers JAX's own program keeps."""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

import tfscan

T, B, I, H = 7, 5, 3, 4
rng = np.random.default_rng(0)
P = {"W": tf.constant(rng.normal(size=(H, H)) * 0.3, tf.float32),
     "U": tf.constant(rng.normal(size=(I, H)) * 0.3, tf.float32),
     "V": tf.constant(rng.normal(size=(H, 1)) * 0.3, tf.float32)}
XS = tf.constant(rng.normal(size=(B, T, I)), tf.float32)
YS = tf.constant(rng.normal(size=(B, T, 1)), tf.float32)


def _vecmat(v, m):
    return tf.linalg.matvec(m, v, transpose_a=True)


def _loss_one(p, xs, ys):
    def step(h, xy):
        x, y = xy
        h = tf.tanh(_vecmat(h, p["W"]) + _vecmat(x, p["U"]))
        return h, tf.reduce_sum((_vecmat(h, p["V"]) - y) ** 2, axis=-1)
    return tf.reduce_mean(tfscan.scan(step, tf.zeros(H), (xs, ys))[1])


def _train(p, xs, ys):
    return tfscan.value_and_grad(
        lambda p: tf.reduce_mean(tfscan.vmap(_loss_one, in_axes=(None, 0, 0))(p, xs, ys)))(p)


def _loop_states(hlo: str) -> list[list[str]]:
    """The element shapes of each ``while`` loop's state tuple."""
    states = []
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%\S+ = \((.*?)\) while\(", line)
        if m:
            states.append(re.findall(r"\w+\[[\d,]*\]", re.sub(r"/\*index=\d+\*/", "", m.group(1))))
    return states


def test_ported_train_step_saves_no_view_residuals():
    fn = tf.function(_train, jit_compile=True, autograph=False)
    hlo = fn.experimental_get_compiler_ir(P, XS, YS)(stage="optimized_hlo")
    loops = _loop_states(hlo)
    assert len(loops) == 2, loops
    forward = next(s for s in loops if f"f32[{T},{B}]" in s)  # the forward loop writes the per-step losses
    # xs itself as vmap gave it (batch-major, read in place: never a time-major copy nor a
    # copy of its rows); the input carries and the new carries once each (JAX's forward loop
    # keeps three buffers of f32[T,B,H]).
    assert forward.count(f"f32[{B},{T},{I}]") == 1 and f"f32[{T},{B},{I}]" not in forward, forward
    assert forward.count(f"f32[{T},{B},{H}]") == 2, forward
    assert len(forward) == 11, forward
    loss, grads = fn(P, XS, YS)
    with tf.GradientTape() as tape:  # the same loss as a plain loop, differentiated by TensorFlow
        tape.watch(P)
        h, errs = tf.zeros([B, H]), []
        for t in range(T):
            h = tf.tanh(h @ P["W"] + XS[:, t] @ P["U"])
            errs.append(tf.reduce_sum((h @ P["V"] - YS[:, t]) ** 2, axis=-1))
        ref = tf.reduce_mean(tf.stack(errs))
    ref_grads = tape.gradient(ref, P)
    np.testing.assert_allclose(loss.numpy(), ref.numpy(), rtol=1e-5)
    for k in P:
        np.testing.assert_allclose(grads[k].numpy(), ref_grads[k].numpy(), rtol=1e-4, atol=1e-6)


def test_a_reshaped_x_is_read_from_xs_not_saved():
    """A plain step reading ``x`` through a reshape: the gradient w.r.t. ``U`` reads the
    reshaped ``x``, which the backward loop now reshapes again from ``xs``."""
    xs = tf.reshape(tf.transpose(XS, [1, 0, 2]), [T, B * I])

    def loss(u):
        def step(h, x):
            h = tf.tanh(h @ P["W"] + tf.reshape(x, [B, I]) @ u)
            return h, tf.reduce_sum(h, -1)
        return tf.reduce_sum(tfscan.scan(step, tf.zeros([B, H]), xs)[1])

    fn = tf.function(lambda u: tfscan.value_and_grad(loss)(u), jit_compile=True, autograph=False)
    loops = _loop_states(fn.experimental_get_compiler_ir(P["U"])(stage="optimized_hlo"))
    forward = next(s for s in loops if f"f32[{T},{B}]" in s)
    assert f"f32[{T},{B},{I}]" not in forward, forward  # no saved copy of the reshaped rows
    value, grad = fn(P["U"])
    with tf.GradientTape() as tape:
        tape.watch(P["U"])
        h, total = tf.zeros([B, H]), 0.0
        for t in range(T):
            h = tf.tanh(h @ P["W"] + tf.reshape(xs[t], [B, I]) @ P["U"])
            total += tf.reduce_sum(h)
    np.testing.assert_allclose(value.numpy(), total.numpy(), rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), tape.gradient(total, P["U"]).numpy(), rtol=1e-4, atol=1e-6)
