"""A compiled program tfscan launches in a graph (one ``XlaLaunch`` op) has a gradient.

TensorFlow registers none for ``XlaLaunch``; tfscan's (``tfscan._scan.launched``) is the
program's VJP, itself launched and differentiable: tapes and accumulators outside the
``tf.function``, ``tf.gradients`` and ``tf.vectorized_map`` differentiate a differentiable
``cond``/``switch`` (emitted as ``XlaLaunch`` ops) to any order. Checked against JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from tfscan import _tf

W0 = np.random.default_rng(3).standard_normal((3, 3)).astype(np.float32) * 0.5
X0 = np.random.default_rng(4).standard_normal(3).astype(np.float32)
V0 = np.random.default_rng(5).standard_normal(3).astype(np.float32)


def _f(lax, W, x, kind):
    """A conditional over ``x`` reading ``W`` (a tf.Variable for tfscan): a scalar."""
    if lax is tfscan:
        step, total = (lambda v: tf.sin(tf.linalg.matvec(W, v)) * v), tf.reduce_sum
    else:
        step, total = (lambda v: jnp.sin(W @ v) * v), jnp.sum
    if kind == "cond":
        return total(lax.cond(x[0] > -10.0, step, lambda v: v * v, x))
    return total(lax.switch(1, [lambda v: v * v, step, lambda v: -v], x))


def _launches(fn, *args) -> int:
    graph = fn.get_concrete_function(*args).graph
    return [op.type for op in graph.get_operations()].count("XlaLaunch")


@pytest.mark.parametrize("kind, traced_first", [("cond", False), ("switch", False), ("cond", True)])
def test_tapes_outside_the_function_take_first_and_second_derivatives(kind, traced_first):
    """Traced under the tapes (the conditional records its own derivatives) or before them
    (nothing records while tracing): the XlaLaunch op's IdentityN gives the derivatives."""
    W = tf.Variable(W0)
    fn = tf.function(lambda x: _f(tfscan, W, x, kind))
    x, v = tf.constant(X0), tf.constant(V0)
    if traced_first:
        fn(x)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = fn(x)
        gx, gw = inner.gradient(y, [x, W])
        gv = tf.reduce_sum(gx * v)
    hvp = outer.gradient(gv, x)
    assert _launches(fn, tf.TensorSpec([3])) == 1  # the conditional is an XlaLaunch op

    f = lambda w, x: _f(jax.lax, w, x, kind)  # noqa: E731
    want_gx, want_gw = jax.grad(f, argnums=1)(W0, X0), jax.grad(f)(W0, X0)
    want_hvp = jax.jvp(lambda x: jax.grad(f, argnums=1)(W0, x), (X0,), (V0,))[1]
    np.testing.assert_allclose(y.numpy(), f(W0, X0), rtol=1e-5)
    np.testing.assert_allclose(gx.numpy(), want_gx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw.numpy(), want_gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hvp.numpy(), want_hvp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["cond", "switch"])
def test_tf_gradients_to_second_order_differentiate_the_launched_conditional(kind):
    W = tf.Variable(W0)
    x, v = tf.constant(X0), tf.constant(V0)

    @tf.function
    def second(x):  # tf.gradients of tf.gradients, in the graph; a tape inside, tf.gradients of it
        y = _f(tfscan, W, x, kind)
        g = tf.gradients(y, x)[0]
        with tf.GradientTape() as t:
            t.watch(x)
            y2 = _f(tfscan, W, x, kind)
        g2 = t.gradient(y2, x)
        return g, tf.gradients(tf.reduce_sum(g * v), x)[0], tf.gradients(tf.reduce_sum(g2 * v), x)[0]

    g, hvp, hvp2 = second(x)
    assert _launches(second, tf.TensorSpec([3])) >= 4

    f = lambda x: _f(jax.lax, W0, x, kind)  # noqa: E731
    want_hvp = jax.jvp(jax.grad(f), (X0,), (V0,))[1]
    np.testing.assert_allclose(g.numpy(), jax.grad(f)(X0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hvp.numpy(), want_hvp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hvp2.numpy(), want_hvp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["cond", "switch"])
def test_accumulators_outside_the_function_take_first_and_second_order_jvps(kind):
    """TensorFlow's JVP of a tf.function call transposes its backward function: the VJP
    conditional there is launched with a gradient of its own (the VJP of the VJP), and its
    branches' tapes record even inside the accumulator's transposition (never zeros)."""
    W = tf.Variable(W0)
    x, v = tf.constant(X0), tf.constant(V0)
    fn = tf.function(lambda x: _f(tfscan, W, x, kind))
    with tf.autodiff.ForwardAccumulator(x, v) as outer:
        with tf.autodiff.ForwardAccumulator(x, v) as inner:
            y = fn(x)
        jvp = inner.jvp(y)
    jvp2 = outer.jvp(jvp)
    with tf.autodiff.ForwardAccumulator(x, v) as acc:  # a Hessian-vector product
        with tf.GradientTape() as tape:
            tape.watch(x)
            y2 = fn(x)
        g = tape.gradient(y2, x)
    hvp = acc.jvp(g)

    f = lambda x: _f(jax.lax, W0, x, kind)  # noqa: E731
    jf = lambda x: jax.jvp(f, (x,), (V0,))[1]  # noqa: E731
    for got, want in [(jvp, jf(X0)), (jvp2, jax.jvp(jf, (X0,), (V0,))[1]),
                      (hvp, jax.jvp(jax.grad(f), (X0,), (V0,))[1])]:
        assert got.dtype == tf.float32 and got.shape == np.shape(want)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)


def test_vectorized_per_example_gradients_through_the_launched_conditional():
    W = tf.Variable(W0)
    xs = np.random.default_rng(6).standard_normal((4, 3)).astype(np.float32)

    def per_example(x):
        with tf.GradientTape() as t:
            t.watch(x)
            y = _f(tfscan, W, x, "cond")
        return t.gradient(y, x)

    got = tf.function(lambda xs: tf.vectorized_map(per_example, xs))(tf.constant(xs))
    want = jax.vmap(jax.grad(lambda x: _f(jax.lax, W0, x, "cond")))(xs)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_an_xla_launch_op_that_is_not_tfscans_has_tensorflows_lookup_error():
    held = tf.function(lambda x: x * 2.0, jit_compile=True)
    concrete = held.get_concrete_function(tf.TensorSpec([]))

    @tf.function(autograph=False)
    def run(x):
        y = _tf.launch_compiled(concrete, [x])[0]
        return tf.gradients(y, x)

    tfscan.cond(True, tf.sin, tf.cos, 1.0)  # tfscan's gradient for XlaLaunch is registered by now
    with pytest.raises(LookupError, match="No gradient defined for operation.*XlaLaunch"):
        run(tf.constant(1.0))


def test_another_launched_program_gets_its_vjp_program_as_gradient():
    """associative_scan in a graph is one XlaLaunch op too: a tape outside the tf.function
    takes its gradient from the program's VJP program (tfscan._scan.launched), twice over."""
    x, v = tf.constant(X0), tf.constant(V0)
    fn = tf.function(lambda x: tf.reduce_sum(tf.sin(tfscan.associative_scan(lambda a, b: a * b + a, x))))
    fn(x)  # traced with no tape live (a tape live while tracing keeps TensorFlow's call)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = fn(x)
        g = inner.gradient(y, x)
        gv = tf.reduce_sum(g * v)
    hvp = outer.gradient(gv, x)
    assert _launches(fn, tf.TensorSpec([3])) == 1

    f = lambda x: jnp.sum(jnp.sin(jax.lax.associative_scan(lambda a, b: a * b + a, x)))  # noqa: E731
    np.testing.assert_allclose(g.numpy(), jax.grad(f)(X0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hvp.numpy(), jax.jvp(jax.grad(f), (X0,), (V0,))[1], rtol=1e-4, atol=1e-5)
