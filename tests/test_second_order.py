"""Reverse over reverse: a gradient of a gradient, however TensorFlow users ask for it.

Each loop construct × each way of taking a second derivative in reverse mode, against
JAX's ``grad(grad(f))``: ``tf.gradients`` of ``tf.gradients`` in a ``tf.function``, nested
``GradientTape``s (eagerly and in a ``tf.function``), ``tfscan.grad`` of ``tfscan.grad`` (also
in ``tfscan.jit``), and a tape around a ``tfscan.grad`` that was called before without one
(its traced program is reused from the cache). ``while_loop(max_steps=N)`` has a first-order
reverse mode only (JAX has none): every way raises tfscan's error naming the fix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import nested_tapes

A = np.float32(0.7)
XS = np.array([0.1, 0.5, -0.3, 0.2], np.float32)


def _constructs():
    """name -> (tfscan f(a), JAX f(a) or None when the second derivative is an error)."""
    def scan_tf(a):
        c, ys = tfscan.scan(lambda c, x: (tf.sin(c * a) + x, c * c), a, tf.constant(XS))
        return c + tf.reduce_sum(ys)

    def scan_jx(a):
        c, ys = jax.lax.scan(lambda c, x: (jnp.sin(c * a) + x, c * c), a, XS)
        return c + jnp.sum(ys)

    def cond_tf(a):  # a tfscan.cond inside the step
        step = lambda c, x: (tfscan.cond(c > 0.5, lambda v: tf.sin(v * a), lambda v: v * a, c + x), c)  # noqa: E731
        return tf.reduce_sum(tfscan.scan(step, a, tf.constant(XS))[1])

    def cond_jx(a):
        step = lambda c, x: (jax.lax.cond(c > 0.5, lambda v: jnp.sin(v * a), lambda v: v * a, c + x), c)  # noqa: E731
        return jnp.sum(jax.lax.scan(step, a, XS)[1])

    return {
        "scan": (scan_tf, scan_jx),
        "scan_cond": (cond_tf, cond_jx),
        "fori_loop": (lambda a: tfscan.fori_loop(0, 5, lambda i, c: tf.sin(c * a) + 1.0, a),
                      lambda a: jax.lax.fori_loop(0, 5, lambda i, c: jnp.sin(c * a) + 1.0, a)),
        "map": (lambda a: tf.reduce_sum(tfscan.map(lambda x: tf.sin(x * a) * x, tf.constant(XS))),
                lambda a: jnp.sum(jax.lax.map(lambda x: jnp.sin(x * a) * x, XS))),
        "while_max": (lambda a: tfscan.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, tf.sin(c[1] * a) + 1.0),
                                                  (tf.constant(0), a), max_steps=8)[1], None),
    }


_tapes = nested_tapes


def _tf_gradients(f):
    @tf.function
    def second(a):
        g = tf.gradients(f(a), a)[0]
        return tf.gradients(g, a)[0]
    return second


def _cached_then_tape(f):
    grad = tfscan.grad(f)

    def second(a):
        grad(a)  # traced and compiled where nothing records
        with tf.GradientTape() as tape:
            tape.watch(a)
            g = grad(a)
        return tape.gradient(g, a)
    return second


WAYS = {
    "tf.gradients twice": _tf_gradients,
    "nested tapes": _tapes,
    "nested tapes in tf.function": lambda f: tf.function(_tapes(f)),
    "grad(grad)": lambda f: tfscan.grad(tfscan.grad(f)),
    "jit(grad(grad))": lambda f: tfscan.jit(tfscan.grad(tfscan.grad(f))),
    "tape around a cached grad": _cached_then_tape,
}


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("construct", list(_constructs()))
def test_second_derivative_matches_jax_or_names_the_fix(construct, way):
    f_tf, f_jx = _constructs()[construct]
    second = WAYS[way](f_tf)
    if f_jx is None:
        with pytest.raises(ValueError, match="is first-order.*fori_loop with static bounds"):
            second(tf.constant(A))
        return
    want = jax.grad(jax.grad(f_jx))(A)
    got = second(tf.constant(A))
    assert got is not None, "a second derivative came out as None"
    assert got.dtype == tf.float32 and got.shape == ()
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=2e-4, atol=1e-5)


def test_a_jitted_gradient_traced_under_vmap_is_differentiated_again_under_a_tape():
    """``vmap(grad(loss))`` traces the gradient's program where no tape records; a later
    ``jit(grad(grad(loss)))`` found that trace in the cache and TensorFlow met its reverse loop
    (``LookupError``: no gradient for the loop)."""
    rng = np.random.RandomState(0)
    w = rng.randn(3, 3).astype(np.float32) * 0.5
    xs = rng.randn(4, 6, 3).astype(np.float32)

    def loss_tf(w, x):
        def step(h, xt):
            h = tf.tanh(tf.linalg.matvec(w, h) + xt)
            return h, tf.reduce_sum(h)
        h, ys = tfscan.scan(step, tf.zeros(3), x)
        return tf.reduce_sum(ys) + tf.reduce_sum(h ** 2)

    def loss_jx(w, x):
        def step(h, xt):
            h = jnp.tanh(w @ h + xt)
            return h, jnp.sum(h)
        h, ys = jax.lax.scan(step, jnp.zeros(3), x)
        return jnp.sum(ys) + jnp.sum(h ** 2)

    batched = tfscan.vmap(tfscan.grad(loss_tf), in_axes=(None, 0))(tf.constant(w), tf.constant(xs))
    np.testing.assert_allclose(batched.numpy(), jax.vmap(jax.grad(loss_jx), in_axes=(None, 0))(w, xs),
                               rtol=2e-4, atol=1e-5)
    got = tfscan.jit(tfscan.grad(lambda w: tf.reduce_sum(tfscan.grad(loss_tf)(w, tf.constant(xs[0])) ** 2)))(
        tf.constant(w))
    want = jax.grad(lambda w: jnp.sum(jax.grad(loss_jx)(w, xs[0]) ** 2))(w)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-4, atol=1e-5)


def test_vmap_of_grad_of_grad_names_the_spellings_that_work():
    """``vmap(grad(grad(f)))`` through a scan raised TensorFlow's raw "out of scope" error at
    its call. It raises tfscan's error naming the spellings that work, and those match JAX's
    ``vmap(grad(grad(f)))``: nested tapes, and a ForwardAccumulator over ``tfscan.grad``."""
    xs = tf.constant(XS)

    def f(a):
        return tf.reduce_sum(tfscan.scan(lambda c, x: (tf.sin(c * a) + x, c), a, xs)[1])

    def f_jx(a):
        return jnp.sum(jax.lax.scan(lambda c, x: (jnp.sin(c * a) + x, c), a, XS)[1])

    def forward_over_grad(a):
        with tf.autodiff.ForwardAccumulator(a, tf.ones_like(a)) as acc:
            g = tfscan.grad(f)(a)
        return acc.jvp(g)

    a = np.array([0.3, 0.7, 0.9], np.float32)
    with pytest.raises(ValueError, match="vmap: .*tfscan.grad\\(tfscan.grad\\(f\\)\\).*nested tf.GradientTape"):
        tfscan.vmap(tfscan.grad(tfscan.grad(f)))(tf.constant(a))
    want = jax.vmap(jax.grad(jax.grad(f_jx)))(a)
    for spelling in (_tapes(f), forward_over_grad):
        np.testing.assert_allclose(tfscan.vmap(spelling)(tf.constant(a)).numpy(), want, rtol=2e-4, atol=1e-5)
