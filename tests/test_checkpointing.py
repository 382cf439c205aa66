"""Binomial checkpointing (``remat="binomial"``): its schedule, and gradients equal to
``remat=False``'s and to JAX's.

The compiled backward pass is one loop that walks the schedule table, whatever the
length; the table itself is checked for every length 1..300 by simulating it in Python
(each backward step must see exactly the carry of its step, in reverse order, with at
most ``k`` snapshots), and its cost against an exhaustive search for the optimum.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from tfscan._scan import remat as _remat


def simulate(length: int, slots: int, forward: bool = False) -> tuple[list[int], int]:
    """Run a schedule on carries that are their own positions: ``(backward steps, advances)``.

    With ``forward``, the forward pass first writes the spine's snapshots (step ``t`` its
    input carry into ``slot_at[t]``) and the backward pass starts after the spine's rows.
    """
    table = _remat.schedule(length, slots)
    snaps, start = {0: 0}, 0
    if forward:
        start, slot_at = _remat.spine(length, slots)
        snaps = {int(w): t for t, w in enumerate(slot_at) if w < slots}
    seen, advances = [], 0
    for s, p, n, w, b in table[start:].tolist():
        assert s in snaps and snaps[s] == p, f"row restores slot {s} holding {snaps.get(s)}, wants {p}"
        assert 0 <= s < slots and 0 <= w <= slots
        carry = p + n
        advances += n
        if w < slots:
            snaps[w] = carry
        if b:
            seen.append(carry)
    return seen, advances


@functools.lru_cache(None)
def optimal_advances(length: int, c: int) -> int:
    """The fewest forward steps that reverse ``length`` steps with ``c`` snapshots (exhaustive)."""
    if length == 1:
        return 0
    if c == 1:
        return length * (length - 1) // 2
    return min(m + optimal_advances(length - m, c - 1) + optimal_advances(m, c) for m in range(1, length))


@pytest.mark.parametrize("slots", [1, 2, 3, 5, 9])
def test_schedule_reverses_every_length_with_k_snapshots(slots):
    for length in range(0, 301):
        seen, advances = simulate(length, slots)
        assert seen == list(reversed(range(length)))
        if slots == 1:
            assert advances == length * (length - 1) // 2
        seen, after_forward = simulate(length, slots, forward=True)
        assert seen == list(reversed(range(length)))
        spine_rows = _remat.spine(length, slots)[0]
        saved = int(_remat.schedule(length, slots)[:spine_rows, _remat.ADVANCE].sum())
        assert after_forward == _remat.forward_steps(length, slots) == advances - saved


def test_schedule_is_optimal_and_logarithmic():
    for c in range(1, 6):
        for length in range(1, 80):
            assert simulate(length, c)[1] == optimal_advances(length, c), (length, c)
    # ceil(log2 T) snapshots: recomputation grows like log T, the table like T.
    for T in (2000, 20000):
        k = _remat.binomial_slots(("binomial", None), T)[1]
        assert k == int(np.ceil(np.log2(T)))
        assert _remat.forward_steps(T, k) <= 5 * T and len(_remat.schedule(T, k)) <= 2 * T


def _programs(remat, reverse):
    def loss_tf(W, U, h0, xs):
        def step(h, x):
            h = tf.tanh(h @ W + x @ U)
            return h, (tf.reduce_sum(h * h), h[:, :1])
        h, (sq, first) = tfscan.scan(step, h0, xs, reverse=reverse, remat=remat)
        return tf.reduce_sum(sq * tf.cos(tf.cast(tf.range(tf.shape(sq)[0]), sq.dtype))) \
            + tf.reduce_sum(first * 3.0) + tf.reduce_sum(h)

    def loss_jax(W, U, h0, xs):
        def step(h, x):
            h = jnp.tanh(h @ W + x @ U)
            return h, (jnp.sum(h * h), h[:, :1])
        h, (sq, first) = jax.lax.scan(step, h0, xs, reverse=reverse)
        return jnp.sum(sq * jnp.cos(jnp.arange(sq.shape[0]))) + jnp.sum(first * 3.0) + jnp.sum(h)
    return loss_tf, loss_jax


def _grads(loss, args):
    args = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(args)
        value = loss(*args)
    return [value] + tape.gradient(value, args)


@pytest.mark.parametrize("T,remat", [(0, "binomial"), (1, "binomial"), (2, ("binomial", 1)), (7, "binomial"),
                                     (13, ("binomial", 2)), (31, ("binomial", 3)), (300, "binomial")])
@pytest.mark.parametrize("reverse", [False, True])
def test_binomial_gradients_equal_remat_false_and_jax(T, remat, reverse, rng):
    args = (rng.normal(size=(4, 4)) * 0.5, rng.normal(size=(3, 4)) * 0.5, rng.normal(size=(2, 4)),
            rng.normal(size=(T, 2, 3)))
    loss_tf, loss_jax = _programs(remat, reverse)
    got = _grads(loss_tf, args)
    base = _grads(_programs(False, reverse)[0], args)
    want = jax.value_and_grad(loss_jax, argnums=(0, 1, 2, 3))(*args)
    want = [want[0]] + list(want[1])
    for g, b, w in zip(got, base, want):
        np.testing.assert_allclose(g.numpy(), b.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-9, atol=1e-12)


def test_binomial_in_every_context_with_variables_and_int_leaves(rng):
    W = tf.Variable(rng.normal(size=(3, 3)) * 0.5)
    xs = tf.constant(rng.normal(size=(40, 3)))

    def loss(xs, remat):
        def step(c, x):
            i, h = c
            return (i + 1, tf.sin(tf.linalg.matvec(W, h) + x * tf.cast(i, tf.float64))), None
        (_, h), _ = tfscan.scan(step, (0, tf.ones(3, tf.float64)), xs, remat=remat)
        return tf.reduce_sum(h * h)

    def grad(xs, remat):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            value = loss(xs, remat)
        return tape.gradient(value, [W, xs])

    want = grad(xs, False)
    for fn in (grad, tf.function(grad, autograph=False), tf.function(grad, jit_compile=True, autograph=False)):
        for g, w in zip(fn(xs, ("binomial", 4)), want):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12)
    g = tfscan.grad(lambda xs: loss(xs, "binomial"))(xs)
    np.testing.assert_allclose(g.numpy(), want[1].numpy(), rtol=1e-12)


def test_binomial_errors():
    with pytest.raises(ValueError, match=r"remat=\('binomial', k\) needs k.*got k=0"):
        tfscan.scan(lambda c, x: (c, None), 0.0, length=2, remat=("binomial", 0))
    with pytest.raises(ValueError, match="remat must be"):
        tfscan.scan(lambda c, x: (c, None), 0.0, length=2, remat=("binomal", 2))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def run(xs):
        return tfscan.scan(lambda c, x: (c + x, None), 0.0, xs, remat="binomial")[0]
    with pytest.raises(ValueError, match="needs a length known when the scan is traced"):
        run.get_concrete_function()


def test_binomial_hessian_vector_product_equals_remat_false(rng):
    xs = tf.constant(rng.normal(size=(12, 3)))
    w = tf.constant([0.3, -0.2, 0.5], tf.float64)

    def hvp(remat):
        with tf.GradientTape() as outer:
            outer.watch(w)
            with tf.GradientTape() as inner:
                inner.watch(w)
                c, _ = tfscan.scan(lambda c, x: (tf.sin(c * w + x), None), tf.ones(3, tf.float64), xs, remat=remat)
                loss = tf.reduce_sum(c * c)
            g = inner.gradient(loss, w)
            s = tf.reduce_sum(g * tf.constant([1.0, 2.0, 3.0], tf.float64))
        return g, outer.gradient(s, w)

    for got, want in zip(hvp("binomial"), hvp(False)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10)
