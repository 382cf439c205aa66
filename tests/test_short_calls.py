"""The short-call fast paths (issue 14, item 6) still see every change a call must see:
a rebound closure cell, a rebound global, a list mutated in place, a tape."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import tfscan

SCALE = tf.constant(2.0)


def _global_step(c, x):
    return c + SCALE * x, c


def test_a_rebound_closure_cell_is_seen():
    k = 1.0

    def step(c, x):
        return c + k * x, c

    xs = tf.ones(3)
    assert float(tfscan.scan(step, 0.0, xs)[0]) == 3.0
    k = 2.0  # noqa: F841 - read by step through its cell
    assert float(tfscan.scan(step, 0.0, xs)[0]) == 6.0
    assert float(tfscan.jit(lambda xs: tfscan.scan(step, 0.0, xs)[0])(xs)) == 6.0
    k = 3.0  # noqa: F841 - a new jit (as a new jax.jit) traces again and sees it
    assert float(tfscan.jit(lambda xs: tfscan.scan(step, 0.0, xs)[0])(xs)) == 9.0


def test_a_rebound_global_tensor_and_a_mutated_list_are_seen():
    global SCALE
    xs = tf.ones(4)
    assert float(tfscan.scan(_global_step, 0.0, xs)[0]) == 8.0
    old, SCALE = SCALE, tf.constant(0.5)
    try:
        assert float(tfscan.scan(_global_step, 0.0, xs)[0]) == 2.0
    finally:
        SCALE = old
    weights = [1.0]

    def step(c, x):
        return c + weights[0] * x, c

    assert float(tfscan.scan(step, 0.0, xs)[0]) == 4.0
    weights[0] = 5.0
    assert float(tfscan.scan(step, 0.0, xs)[0]) == 20.0


def test_a_tape_started_between_calls_still_records():
    a = tf.constant(0.5)

    def step(c, x):
        return tf.tanh(a * c + x), c

    xs = tf.constant(np.linspace(-1, 1, 5).astype(np.float32))
    tfscan.scan(step, 0.0, xs)  # no tape: the direct call
    with tf.GradientTape() as tape:
        tape.watch(a)
        c, _ = tfscan.scan(step, 0.0, xs)
    assert tape.gradient(c, a) is not None
    ref = 0.0
    for x in xs.numpy():
        ref = np.tanh(0.5 * ref + x)
    np.testing.assert_allclose(float(c), ref, rtol=1e-6)
