"""A plain step's VJP, walked over its ops (``tfscan._scan.step_gradient``), is ``tf.gradients``'.

Each case is a step of pure ops; the walk's gradients are compared with ``tf.gradients`` on the
same graph and, through a scan's gradient, with JAX's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import assert_trees_match
from tfscan._scan import step_gradient

CASES = {
    # name: (f(a, b) -> outputs, a shape, b shape)
    "broadcast": (lambda a, b: [tf.tanh(a * b + b)], (3,), (2, 3)),
    "fan-out": (lambda a, b: [a * a + tf.sin(a) * b, tf.reduce_sum(a * b, 0)], (2, 3), (2, 3)),
    "matmul": (lambda a, b: [tf.nn.sigmoid(tf.matmul(a, b)), tf.transpose(a)], (2, 3), (3, 4)),
    "unconnected output and input": (lambda a, b: [a * 2.0, tf.ones_like(b)], (3,), (3,)),
    "multi-output op": (lambda a, b: [p * q for p, q in zip(tf.split(a, 2), tf.unstack(b))], (4,), (2, 2)),
    "select, pow, stop": (lambda a, b: [tf.where(a > 0, a ** 3, tf.stop_gradient(b) * a), tf.maximum(a, b)],
                          (5,), (5,)),
    "gather, reshape": (lambda a, b: [tf.reshape(tf.gather(a, [0, 2, 2]), [3, 1]) * b], (4,), (3, 2)),
    "output is input": (lambda a, b: [a, b * 1.5], (2,), (2,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_walk_matches_tf_gradients(name):
    f, sa, sb = CASES[name]
    rng = np.random.default_rng(len(name))
    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float64, sa)
        b = tf.compat.v1.placeholder(tf.float64, sb)
        outs = f(a, b)
        cts = [tf.constant(rng.normal(size=o.shape.as_list())) for o in outs]
        got = step_gradient.vjp(outs, [a, b], cts)
        want = tf.gradients(outs, [a, b], grad_ys=cts, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        want = [tf.convert_to_tensor(w) for w in want]
        with tf.compat.v1.Session() as sess:
            feed = {a: rng.normal(size=sa), b: rng.normal(size=sb)}
            got, want = sess.run([got, want], feed)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_scan_gradient_of_a_plain_step_matches_jax():
    # Fan-out of the carry, a broadcast constant, an integer carry and an x read twice.
    rng = np.random.default_rng(1)
    w, xs = rng.normal(size=(3,)), rng.normal(size=(6, 3))

    def step_tf(w):
        def step(carry, x):
            h, n = carry
            h = tf.tanh(h * w + x) + 0.5 * h * x
            return (h, n + 1), (tf.reduce_sum(h * h), h)
        return step

    def step_jax(w):
        def step(carry, x):
            h, n = carry
            h = jnp.tanh(h * w + x) + 0.5 * h * x
            return (h, n + 1), (jnp.sum(h * h), h)
        return step

    def loss_tf(w, xs):
        (h, _), (s, hs) = tfscan.scan(step_tf(w), (tf.zeros(3, tf.float64), tf.constant(0)), xs)
        return tf.reduce_sum(h) + tf.reduce_sum(s) + tf.reduce_sum(tf.sin(hs))

    def loss_jax(w, xs):
        (h, _), (s, hs) = jax.lax.scan(step_jax(w), (jnp.zeros(3), 0), xs)
        return jnp.sum(h) + jnp.sum(s) + jnp.sum(jnp.sin(hs))

    want = jax.grad(loss_jax, argnums=(0, 1))(w, xs)
    assert_trees_match(tfscan.grad(loss_tf, argnums=(0, 1))(tf.constant(w), tf.constant(xs)), want, rtol=1e-10)
    with tf.GradientTape() as tape:
        wt, xst = tf.constant(w), tf.constant(xs)
        tape.watch([wt, xst])
        loss = loss_tf(wt, xst)
    assert_trees_match(tuple(tape.gradient(loss, [wt, xst])), want, rtol=1e-10)
