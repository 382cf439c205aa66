"""``vmap`` of a loop whose body has a conditional or a nested loop, checked against JAX.

Each loop (``scan``, ``fori_loop``, ``while_loop``, ``map``) runs a body that calls
``cond``, ``switch`` or a nested ``while_loop`` on a batched state and a shared weight it
passes through unchanged; the batch has examples on different branches. Checked: the
values, that the passed-through weight stays unbatched (``out_axes=None``), the gradient
of the vmapped program and the vmapped gradient — or, where JAX has no reverse mode (a
``while_loop``), the same error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan

f32 = np.float32
_K = np.array([0.5, -1.0, 2.0], f32)
_XS = np.array([[0.3, -0.7, 1.1], [-0.4, -0.2, 0.9]], f32)  # two examples, different branches
_W = f32(1.5)
_REVERSE = "Reverse-mode differentiation does not work"


def _program(lib: str, loop: str, nested: str):
    """``f(x, w) -> (state, w)``: ``loop`` over a body that calls ``nested``."""
    if lib == "tf":
        scan, fori, while_, cond, switch, map_ = (tfscan.scan, tfscan.fori_loop, tfscan.while_loop,
                                                  tfscan.cond, tfscan.switch, tfscan.map)
        sin, total, to_i, ks = tf.sin, tf.reduce_sum, (lambda b: tf.cast(b, tf.int32)), tf.constant(_K)
    else:
        L = jax.lax
        scan, fori, while_, cond, switch, map_ = L.scan, L.fori_loop, L.while_loop, L.cond, L.switch, L.map
        sin, total, to_i, ks = jnp.sin, jnp.sum, (lambda b: b.astype(jnp.int32)), jnp.asarray(_K)

    def body(c, w):  # c: the batched state; w: a shared weight, returned unchanged
        if nested == "cond":
            return cond(total(c) > 0, lambda v, u: (sin(v) * u, u), lambda v, u: (v - u, u), c, w)
        if nested == "switch":
            return switch(to_i(total(c) > 0) + to_i(total(c * c) > 0.5),
                          [lambda v, u: (v - u, u), lambda v, u: (sin(v) * u, u), lambda v, u: (v * v, u)], c, w)
        return while_(lambda a: a[0] < 2, lambda a: (a[0] + 1, a[1] * 0.9 + 0.1 * a[2], a[2]), (0, c, w))[1:]

    if loop == "scan":
        return lambda x, w: scan(lambda cw, k: (body(cw[0] * k, cw[1]), cw[0]), (x, w), ks)[0]
    if loop == "fori_loop":
        return lambda x, w: fori(0, 3, lambda i, cw: body(*cw), (x, w))
    if loop == "while_loop":
        return lambda x, w: while_(lambda a: a[0] < 3, lambda a: (a[0] + 1, *body(a[1], a[2])), (0, x, w))[1:]
    return lambda x, w: (map_(lambda v: body(v, w)[0], x), w)


def close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


_LOOPS = ["scan", "fori_loop", "while_loop", "map"]
_NESTED = ["cond", "switch", "while_loop"]


@pytest.mark.parametrize("nested", _NESTED)
@pytest.mark.parametrize("loop", _LOOPS)
def test_values_and_the_unbatched_weight(loop, nested):
    f, jf = _program("tf", loop, nested), _program("jax", loop, nested)
    want = jax.vmap(jf, in_axes=(0, None), out_axes=(0, None))(_XS, _W)
    got = tfscan.vmap(f, in_axes=(0, None), out_axes=(0, None))(tf.constant(_XS), tf.constant(_W))
    close(got[0], want[0])
    close(got[1], want[1])


def _has_reverse_mode(loop, nested):
    return "while_loop" not in (loop, nested)


@pytest.mark.parametrize("nested", _NESTED)
@pytest.mark.parametrize("loop", ["scan", "while_loop", "map"])
def test_gradient_of_the_vmapped_loop(loop, nested):
    f, jf = _program("tf", loop, nested), _program("jax", loop, nested)

    def jloss(x, w):
        return jnp.sum(jax.vmap(jf, in_axes=(0, None))(x, w)[0] ** 2)

    x, w = tf.constant(_XS), tf.constant(_W)
    if not _has_reverse_mode(loop, nested):
        with pytest.raises(ValueError, match=_REVERSE):
            jax.grad(jloss, (0, 1))(_XS, _W)
        with pytest.raises(ValueError, match=_REVERSE), tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(tfscan.vmap(f, in_axes=(0, None))(x, w)[0] ** 2)
            tape.gradient(loss, [x, w])
        return
    want = jax.grad(jloss, (0, 1))(_XS, _W)
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        loss = tf.reduce_sum(tfscan.vmap(f, in_axes=(0, None))(x, w)[0] ** 2)
    got = tape.gradient(loss, [x, w])
    close(got[0], want[0])
    close(got[1], want[1])


@pytest.mark.parametrize("nested", ["cond", "switch"])
@pytest.mark.parametrize("loop", ["fori_loop", "map"])
def test_vmapped_gradient(loop, nested):
    f, jf = _program("tf", loop, nested), _program("jax", loop, nested)
    want = jax.vmap(jax.grad(lambda x, w: jnp.sum(jf(x, w)[0] ** 2), (0, 1)), in_axes=(0, None))(_XS, _W)
    got = tfscan.vmap(tfscan.grad(lambda x, w: tf.reduce_sum(f(x, w)[0] ** 2), (0, 1)),
                      in_axes=(0, None))(tf.constant(_XS), tf.constant(_W))
    close(got[0], want[0])
    close(got[1], want[1])


@pytest.mark.parametrize("nested", ["cond", "switch"])
def test_scan_with_a_conditional_in_a_tf_function(nested):
    """Without vmap: the step's gradient intermediates of a conditional were TensorFlow's
    ``variant`` optionals, which the forward loop could not save (a ``TypeError``)."""
    f, jf = _program("tf", "scan", nested), _program("jax", "scan", nested)
    x, w = tf.constant(_XS[0]), tf.constant(_W)

    @tf.function
    def value_and_grad(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(f(x, w)[0] ** 2)
        return loss, tape.gradient(loss, [x, w])

    loss, grads = value_and_grad(x, w)
    want, jgrads = jax.value_and_grad(lambda x, w: jnp.sum(jf(x, w)[0] ** 2), (0, 1))(_XS[0], _W)
    close(loss, want)
    close(grads[0], jgrads[0])
    close(grads[1], jgrads[1])


def test_vmap_of_vmap_of_a_fori_loop_with_batched_bounds():
    """Each example runs its own number of steps at both levels: the inner vmap's while loop
    selects finished examples with a mask whose shape XLA needs as a constant under the outer
    vmap ("Reshape must be a compile-time constant")."""
    def program(lib):
        fori = tfscan.fori_loop if lib == "tf" else jax.lax.fori_loop
        return lambda x, n: fori(0, n, lambda i, c: c * 0.9 + x, x)

    x = np.arange(6, dtype=f32).reshape(2, 3)
    n = np.array([[1, 2, 3], [4, 0, 2]], np.int32)
    want = jax.vmap(jax.vmap(program("jax")))(x, n)
    close(tfscan.vmap(tfscan.vmap(program("tf")))(tf.constant(x), tf.constant(n)), want)


def _safe_program(lib: str, nested: str, where: str):
    """``f(xs, w) -> loss``: ``vmap`` over the examples of a conditional whose branch not taken
    by an example has a NaN or infinite derivative there (``sqrt`` of a negative, ``log`` of
    0), alone or in a scan's step; ``w`` is an unbatched weight the branches read."""
    if lib == "tf":
        cond, switch, scan, vmap, sqrt, log, total = (tfscan.cond, tfscan.switch, tfscan.scan, tfscan.vmap,
                                                      tf.sqrt, tf.math.log, tf.reduce_sum)
    else:
        L = jax.lax
        cond, switch, scan, vmap, sqrt, log, total = L.cond, L.switch, L.scan, jax.vmap, jnp.sqrt, jnp.log, jnp.sum

    def safe(v, w):
        if nested == "cond":
            return cond(v > 0, lambda v: sqrt(v * w), lambda v: v * w, v)
        index = (v > 0).astype(jnp.int32) if lib == "jax" else tf.cast(v > 0, tf.int32)
        return switch(index + (v > 1.0 if lib == "jax" else tf.cast(v > 1.0, tf.int32)),
                      [lambda v: v * w, lambda v: sqrt(v * w), lambda v: log(v - 1.0) * w], v)

    def example(x, w):
        if where == "alone":
            return safe(x[0], w)
        return scan(lambda c, v: (c + safe(v, w), None), x[0] * 0, x)[0]

    return lambda xs, w: total(vmap(example, in_axes=(0, None))(xs, w))


@pytest.mark.parametrize("where", ["alone", "in a scan"])
@pytest.mark.parametrize("nested", ["cond", "switch"])
def test_gradient_of_a_vmapped_conditional_ignores_the_branch_not_taken(nested, where):
    """As JAX (``select(pred, x, stop_gradient(x))`` on each branch's operands): the NaN
    derivative of a branch at an example it does not give reaches neither that example's
    gradient nor, summed over the batch, the unbatched weight's (before: NaN in both)."""
    xs = np.array([[-2.0, 0.5, 3.0], [0.0, 4.0, -1.0], [2.5, 1.0, 0.25]], f32)
    w = f32(1.5)
    want = jax.grad(_safe_program("jax", nested, where), argnums=(0, 1))(xs, w)
    got = tfscan.grad(_safe_program("tf", nested, where), argnums=(0, 1))(tf.constant(xs), tf.constant(w))
    assert np.isfinite(np.asarray(want[1])), want  # the oracle's weight gradient is a number
    for g, e in zip(got, want):
        np.testing.assert_allclose(g.numpy(), np.asarray(e), rtol=1e-5, atol=1e-6)
