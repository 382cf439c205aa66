"""Forward-mode rules per op (``tfscan/_scan/jvp_rules.py``) against JAX: first and second order
through a scan whose step uses every op with a rule, with broadcasting, transposed matmuls,
reductions and closed-over constants, and an op without a rule (its gradient transposed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

import tfscan
from conftest import assert_trees_match
from tfscan._scan import jvp_rules

T = 4


def _step(np_, W, b):
    """One step for TensorFlow (``np_ = tf`` ops) or JAX: ``carry = (h [3], s [])``."""
    tf_ = np_ is tf

    def matmul(a, m, ta=False, tb=False):
        if tf_:
            return tf.linalg.matmul(a, m, transpose_a=ta, transpose_b=tb)
        return (a.T if ta else a) @ (m.T if tb else m)

    def sigmoid(x):
        return tf.sigmoid(x) if tf_ else jax.nn.sigmoid(x)

    def step(carry, x):
        h, s = carry
        z = tf.reshape(h, (1, 3)) if tf_ else h.reshape(1, 3)
        m = matmul(z, W, tb=True) + matmul(W, z, ta=True, tb=True)[:, 0][None]  # [1, 3]
        u = np_.tanh(m[0] * s + x) - b / (1.0 + np_.exp(-x))  # broadcast of s and b
        v = sigmoid(u) * np_.cos(h) + np_.sin(u) ** 2 - (tf.math.log if tf_ else jnp.log)(1.5 + np_.square(h)) / 2.0
        r = np_.sqrt(1.0 + v * v)  # Sqrt: no rule here, its gradient transposed
        s = (np_.reduce_sum(r) if tf_ else jnp.sum(r)) - (np_.reduce_mean(v) if tf_ else jnp.mean(v))
        h = tf.cast(v, tf.float64) - tf.expand_dims(s, 0) * 0.1 if tf_ else v - s[None] * 0.1
        return (h, s), -u
    return step


def test_forward_rules_match_jax_first_and_second_order():
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(3, 3)) * 0.5, rng.normal(size=3)
    h0, s0, xs = rng.normal(size=3), 0.3, rng.normal(size=(T, 3))
    t1, t2, tw = rng.normal(size=3), rng.normal(size=3), rng.normal(size=(3, 3))
    Wt, bt, ht, st, xst = (tf.constant(v) for v in (W, b, h0, np.float64(s0), xs))
    with tf.autodiff.ForwardAccumulator((ht, Wt), (tf.constant(t2), tf.constant(tw))) as outer:
        with tf.autodiff.ForwardAccumulator((ht, bt), (tf.constant(t1), tf.constant(t1))) as inner:
            (h, s), ys = tfscan.scan(_step(tf, Wt, bt), (ht, st), xst)
        t = inner.jvp((h, s, ys))
    got = ((h, s, ys), t, outer.jvp((h, s, ys)), outer.jvp(t))

    def f(h0, W, b):
        (h, s), ys = jax.lax.scan(_step(jnp, W, b), (h0, jnp.float64(s0)), xs)
        return h, s, ys

    def first(h0, W, b):
        return jax.jvp(f, (h0, W, b), (t1, jnp.zeros_like(W), t1))

    (p, tp), (op, otp) = jax.jvp(first, (h0, W, b), (t2, tw, jnp.zeros_like(b)))
    assert_trees_match(got, (p, tp, op, otp), rtol=1e-9, atol=1e-11)


def test_rules_tangents_of_ops_alone():
    """Each rule on one op in a graph, against TensorFlow's own accumulator (broadcasts)."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 3)), rng.normal(size=(3,))
    tx, ty = rng.normal(size=(2, 3)), rng.normal(size=(3,))
    cases = {
        "AddV2": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
        "RealDiv": lambda a, b: a / (2.0 + b * b), "AddN": lambda a, b: tf.add_n([a, a * 2.0, a]),
        "TanhGrad": lambda a, b: tf.raw_ops.TanhGrad(y=tf.tanh(a), dy=b + a),
        "SigmoidGrad": lambda a, b: tf.raw_ops.SigmoidGrad(y=tf.sigmoid(a), dy=b + a),
        "MatMul": lambda a, b: tf.linalg.matmul(a, a, transpose_b=True),
        "Sum": lambda a, b: tf.reduce_sum(a, axis=1, keepdims=True) + tf.reduce_mean(b),
        "Transpose": lambda a, b: tf.transpose(a) * b[:, None],
    }

    @tf.function
    def both(a, b, ta, tb, name):
        out = cases[name](a, b)
        mine = jvp_rules.forward_tangents([out], [(a, ta), (b, tb)])[0]
        with tf.autodiff.ForwardAccumulator((a, b), (ta, tb)) as acc:
            again = cases[name](a, b)
        return mine, acc.jvp(again)

    for name in cases:
        mine, theirs = both(tf.constant(x), tf.constant(y), tf.constant(tx), tf.constant(ty), name)
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)
