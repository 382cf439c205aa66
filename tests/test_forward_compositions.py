"""Forward mode meeting compiled calls (issue #9): what raised raw XLA errors now agrees with JAX,
or raises a tfscan error naming the transformation and the fix.

Each case is one construct, one wrapper of the function holding it (eager, ``tf.function``,
``tf.function(jit_compile=True)``) and one composition of derivatives opened outside that
function: a Hessian-vector product (a tape inside an accumulator), nested accumulators, a
tape or an accumulator alone. Values and dtypes are checked against the same program in JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan

X = np.array([0.7, -0.4, 1.1], np.float32)
V = np.array([0.3, 1.0, -0.5], np.float32)


def _tf_program(name: str):
    if name == "scan":
        return lambda x, n: tf.reduce_sum(tfscan.scan(lambda c, xi: (tf.sin(c) * xi + c, c * xi), x[0], x)[1])
    if name == "cond":
        return lambda x, n: tfscan.cond(x[0] > 0, lambda v: tf.reduce_sum(tf.sin(v) * v), tf.reduce_sum, x)
    if name == "switch":
        return lambda x, n: tfscan.switch(tf.cast(tf.stop_gradient(x[0]) > 0, tf.int32),
                                          [tf.reduce_sum, lambda v: tf.reduce_sum(tf.sin(v) * v)], x)
    if name == "tf.cond in tfscan.jit":
        inner = tfscan.jit(lambda x: tf.cond(x[0] > 0, lambda: tf.reduce_sum(tf.sin(x) * x),
                                             lambda: tf.reduce_sum(x)))
        return lambda x, n: inner(x)
    if name == "fori_loop(run-time bound)":
        return lambda x, n: tf.reduce_sum(tfscan.fori_loop(0, n, lambda i, c: tf.sin(c) * 1.5 + x[1], x))
    if name == "while_loop(max_steps)":
        return lambda x, n: tf.reduce_sum(tfscan.while_loop(
            lambda s: s[0] < 3, lambda s: (s[0] + 1, tf.sin(s[1]) * 1.5 + x[1]), (tf.constant(0), x), max_steps=10)[1])
    raise ValueError(name)


def _jax_program(x):
    return jax.lax.cond(x[0] > 0, lambda v: jnp.sum(jnp.sin(v) * v), jnp.sum, x)


def _jax_scan(x):
    return jnp.sum(jax.lax.scan(lambda c, xi: (jnp.sin(c) * xi + c, c * xi), x[0], x)[1])


_WRAPPERS = {"eager": lambda f: f, "tf.function": tf.function,
             "jit_compile": lambda f: tf.function(f, jit_compile=True), "tfscan.jit": tfscan.jit}


def _jvp(F, x, v, n):
    with tf.autodiff.ForwardAccumulator(x, v) as acc:
        y = F(x, n)
    return acc.jvp(y)


def _grad(F, x, v, n):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = F(x, n)
    return tape.gradient(y, x)


def _hvp(F, x, v, n):
    with tf.autodiff.ForwardAccumulator(x, v) as acc:
        g = _grad(F, x, v, n)
    return acc.jvp(g)


def _nested(F, x, v, n):
    with tf.autodiff.ForwardAccumulator(x, v) as acc:
        j = _jvp(F, x, v, n)
    return acc.jvp(j)


def _grad_of_jvp(F, x, v, n):
    with tf.GradientTape() as tape:
        tape.watch(x)
        j = _jvp(F, x, v, n)
    return tape.gradient(j, x)


_COMPOSITIONS = {"jvp": _jvp, "grad": _grad, "hvp": _hvp, "jvp of jvp": _nested, "grad of jvp": _grad_of_jvp}


def _want(composition: str, name: str = "cond"):
    f = _jax_scan if name == "scan" else _jax_program
    jv = lambda f: (lambda x: jax.jvp(f, (x,), (jnp.asarray(V),))[1])  # noqa: E731
    fn = {"jvp": jv(f), "grad": jax.grad(f), "hvp": jv(jax.grad(f)), "jvp of jvp": jv(jv(f))}[composition]
    return np.asarray(fn(jnp.asarray(X)))


# (construct, wrapper, composition): each raised a raw XLA/TensorFlow error before.
_WORKING = [
    ("tf.cond in tfscan.jit", "eager", "hvp"),  # OptionalFromValue
    ("cond", "jit_compile", "hvp"),  # OptionalFromValue
    ("switch", "jit_compile", "jvp of jvp"),  # SystemError
    ("tf.cond in tfscan.jit", "tf.function", "grad"),  # OptionalFromValue (reverse mode alone)
    ("tf.cond in tfscan.jit", "jit_compile", "hvp"),  # variant/int64 TypeError
    # The JVP scan's programs were freed before TensorFlow differentiated the graph that ran them.
    ("scan", "tf.function", "jvp of jvp"),  # "the gradient of this scan ... was freed"
    # A jitted function calling one that holds a tf.cond took its own JVP rules, whose trace
    # fails in TensorFlow's forward rule of the tf.cond's gradient.
    ("tf.cond in tfscan.jit", "tfscan.jit", "hvp"),  # AssertionError in cond_v2
    ("tf.cond in tfscan.jit", "tf.function", "hvp"),  # OptionalFromValue inside XLA
]


@pytest.mark.parametrize("name,wrapper,composition", _WORKING)
def test_composition_agrees_with_jax(name, wrapper, composition):
    F = _WRAPPERS[wrapper](_tf_program(name))
    got = _COMPOSITIONS[composition](F, tf.constant(X), tf.constant(V), tf.constant(3))
    want = _want(composition, name)
    assert got.dtype == tf.float32 and got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)


# (construct, wrapper, composition, the error's words): a tfscan error naming the fix.
_REJECTED = [
    # TensorFlow's JVP of a tf.function call transposes its gradient: the loop has none
    # (JAX linearizes it; tfscan.jit's own JVP does too).
    ("fori_loop(run-time bound)", "tf.function", "jvp", r"Forward mode .*tfscan\.jit instead of tf\.function"),
    # Reverse over forward through a tf.cond: TensorFlow's gradient of its forward rule fails
    # (it gave a silent None).
    ("tf.cond in tfscan.jit", "eager", "grad of jvp", r"reverse mode .* of forward mode .*tfscan\.cond"),
    # Forward over the bounded loop's first-order reverse mode: XLA's "fixed tensor list size".
    ("while_loop(max_steps)", "eager", "hvp", r"Forward mode over the reverse mode of tfscan\.while_loop"),
    # An accumulator outside the tf.function: TensorFlow transposes the loop's first-order
    # reverse mode (XLA's "fixed tensor list size", a LookupError on XlaDynamicUpdateSlice).
    ("while_loop(max_steps)", "tf.function", "jvp",
     r"Forward mode .*while_loop\(\.\.\., max_steps=N\) .* tfscan\.jit instead of tf\.function"),
    ("while_loop(max_steps)", "jit_compile", "jvp of jvp",
     r"Forward mode .*while_loop\(\.\.\., max_steps=N\) .* tfscan\.jit instead of tf\.function"),
    ("while_loop(max_steps)", "tf.function", "grad of jvp",
     r"Forward mode .*while_loop\(\.\.\., max_steps=N\) .* tfscan\.jit instead of tf\.function"),
]


@pytest.mark.parametrize("name,wrapper,composition,words", _REJECTED)
def test_composition_raises_a_tfscan_error(name, wrapper, composition, words):
    F = _WRAPPERS[wrapper](_tf_program(name))
    with pytest.raises(ValueError, match=words):
        _COMPOSITIONS[composition](F, tf.constant(X), tf.constant(V), tf.constant(3))


def test_while_loop_jvp_after_a_tape_reads_the_new_call_tensors():
    """A bounded ``while_loop`` whose body closes over ``x``, called with a fresh ``x`` each
    time (as a training loop does): a tape's call first traces the plan, then accumulators
    build its JVP loop. The JVP loop was built on the second call's tensors while it traced the
    first call's body, so it read the first ``x`` without a tangent: a silently wrong JVP."""
    def f(x):
        body = lambda s: (s[0] + 1, tf.sin(s[1]) * 1.5 + x[1])  # noqa: E731
        return tf.reduce_sum(tfscan.while_loop(lambda s: s[0] < 3, body, (tf.constant(0), x), max_steps=10)[1])

    def f_jax(x):
        return jnp.sum(jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c) * 1.5 + x[1], x))

    jv = lambda g: (lambda x: jax.jvp(g, (x,), (jnp.asarray(V),))[1])  # noqa: E731
    F = lambda x, n: f(x)  # noqa: E731
    for k, composition in enumerate(["grad", "jvp", "jvp of jvp", "jvp"]):
        x = X * (1.0 + 0.5 * k)  # a new tensor, and a new value, every call
        got = _COMPOSITIONS[composition](F, tf.constant(x), tf.constant(V), None)
        want = {"grad": jax.grad(f_jax), "jvp": jv(f_jax), "jvp of jvp": jv(jv(f_jax))}[composition](jnp.asarray(x))
        np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-4, atol=1e-5, err_msg=composition)
