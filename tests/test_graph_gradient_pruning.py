"""Inside a tf.function, a scan's backward loop computes only the gradients the live tape can
ask for (issue 14, item 2), and every gradient still matches JAX's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

import tfscan
from tfscan._scan import program as _program

T = 7


def _light_tf(a):
    return lambda c, x: (tf.tanh(a * c + x), tf.tanh(a * c + x))


def _light_jax(a):
    return lambda c, x: (jnp.tanh(a * c + x), jnp.tanh(a * c + x))


def _data():
    rng = np.random.default_rng(0)
    return np.float64(0.7), rng.uniform(-1, 1, size=T)


def _loss_watching_a(a, xs):
    """``(tape, sum(ys**2))`` of the light scan, with the tape watching ``a`` only."""
    with tf.GradientTape() as tape:
        tape.watch(a)
        _, ys = tfscan.scan(_light_tf(a), tf.constant(0.0, tf.float64), xs)
        loss = tf.reduce_sum(ys ** 2)
    return tape, loss


def test_tape_in_a_tf_function_backward_skips_unwatched_xs(monkeypatch):
    a0, xs0 = _data()
    asked = []
    backward = _program.Programs.backward

    def spy(self, xs, consts, saved, d_carry, d_ys, dynamic_length=None, wanted=None, saved_for=None):
        asked.append(wanted)
        return backward(self, xs, consts, saved, d_carry, d_ys, dynamic_length, wanted, saved_for)

    monkeypatch.setattr(_program.Programs, "backward", spy)

    @tf.function(autograph=False)
    def grad_a(a, xs):
        tape, loss = _loss_watching_a(a, xs)
        return tape.gradient(loss, a)

    got = grad_a(tf.constant(a0), tf.constant(xs0))
    want = jax.grad(lambda a: jnp.sum(jax.lax.scan(_light_jax(a), 0.0, xs0)[1] ** 2))(a0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert asked and asked[-1] is not None and asked[-1][0] is False  # d(xs) not computed


def test_tf_gradients_after_a_pruned_tape_still_gets_every_gradient():
    """The tape at the forward pass watched only ``a``; tf.gradients in the same graph then
    asks for d(xs) too (from the same residuals: a graph's scan saves those of every input)."""
    a0, xs0 = _data()

    @tf.function(autograph=False)
    def grads(a, xs):
        tape, loss = _loss_watching_a(a, xs)
        return tape.gradient(loss, a), tf.gradients(loss, [a, xs])

    g_tape, (g_a, g_xs) = grads(tf.constant(a0), tf.constant(xs0))
    want_a, want_xs = jax.grad(lambda a, xs: jnp.sum(jax.lax.scan(_light_jax(a), 0.0, xs)[1] ** 2),
                               argnums=(0, 1))(a0, xs0)
    np.testing.assert_allclose(g_tape.numpy(), want_a, rtol=1e-12)
    np.testing.assert_allclose(g_a.numpy(), want_a, rtol=1e-12)
    np.testing.assert_allclose(g_xs.numpy(), want_xs, rtol=1e-12)
