"""The benchmark workloads' gradients read saved residuals (no silent recomputation), and a
step whose gradient must recompute says so once, with the reason."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf

import tfscan
from tfscan._core import cache as _cache
from tfscan._scan.residuals import RecomputeWarning

B, H, I = 4, 8, 3
rng = np.random.default_rng(0)
W = tf.constant(rng.normal(size=(H, H)) * 0.3, tf.float32)
U = tf.constant(rng.normal(size=(I, H)) * 0.3, tf.float32)
WL = tf.constant(rng.normal(size=(I + H, 4 * H)) * 0.3, tf.float32)
XS = tf.constant(rng.normal(size=(6, B, I)), tf.float32)


def elman(h, x):
    h = tf.tanh(h @ W + x @ U)
    return h, h


def light(c, x):
    c = tf.tanh(0.9 * c + x)
    return c, c


def lstm(state, x):
    h, c = state
    i, f, g, o = tf.split(tf.concat([x, h], -1) @ WL, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    h = tf.sigmoid(o) * tf.tanh(c)
    return (h, c), h


A = tf.constant([[1.0, 0.1], [0.0, 1.0]])
C = tf.constant([[1.0, 0.0]])
Q, R = 0.01 * tf.eye(2), tf.constant([[0.5]])


def kalman(state, y):
    m, P = state
    m, P = tf.linalg.matvec(A, m), A @ P @ tf.transpose(A) + Q
    S = C @ P @ tf.transpose(C) + R
    K = P @ tf.transpose(C) @ tf.linalg.inv(S)
    resid = y - tf.linalg.matvec(C, m)
    return (m + tf.linalg.matvec(K, resid), (tf.eye(2) - K @ C) @ P), resid


CASES = {
    "elman": (elman, tf.zeros([B, H]), XS),
    "light": (light, tf.zeros([]), tf.constant(rng.normal(size=20), tf.float32)),
    "lstm": (lstm, (tf.zeros([B, H]), tf.zeros([B, H])), XS),
    "kalman": (kalman, (tf.zeros([2]), tf.eye(2)), tf.constant(rng.normal(size=(10, 1)), tf.float32)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_workloads_take_the_residual_saving_path(name):
    step, init, xs = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecomputeWarning)  # a fallback fails the test
        with tf.GradientTape() as tape:
            tape.watch(xs)
            carry, ys = tfscan.scan(step, init, xs)
            loss = tf.reduce_sum(ys) + sum(tf.reduce_sum(c) for c in tf.nest.flatten(carry))
        assert tape.gradient(loss, xs) is not None
    programs = list(_cache.eager_cache("scan")._data.values())[-1]
    vjps = [v for v in programs._vjps.values()]
    assert vjps and all(v is not None and v.split is not None for v in vjps), name


def test_a_step_whose_gradient_recomputes_says_why_once():
    @tf.function(input_signature=[tf.TensorSpec([None, 3])])
    def f(xs):
        # The backward step reads a shape known only at run time (the None batch): it cannot
        # be saved as a residual, so the step is recomputed.
        def step(c, x):
            return c + tf.reduce_sum(tf.square(x)) * tf.cast(tf.shape(x)[0], tf.float32), None
        with tf.GradientTape() as tape:
            tape.watch(xs)
            c, _ = tfscan.scan(step, 0.0, tf.reshape(xs, [2, -1, 3]))  # each x: [None, 3]
        return tape.gradient(c, xs)

    with pytest.warns(RecomputeWarning, match="recomputes every step"):
        g = f(tf.ones([4, 3]))
    np.testing.assert_allclose(g.numpy(), np.full((4, 3), 4.0))  # 2 x * (batch of 2)
