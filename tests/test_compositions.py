"""Transformations composed with each other, each checked against the same program in JAX.

The first part has one focused test per behaviour of issue #9 (forward mode through
steps that differentiate, compiled functions, conditionals, vmapped nested calls, weak
types); each fails on the code before its fix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan

FA = tf.autodiff.ForwardAccumulator
f32 = np.float32


def tf_jvp(fn, primal, tangent=1.0):
    """``(fn(primal), d fn . tangent)`` by a ForwardAccumulator around an eager call."""
    x = tf.constant(f32(primal))
    with FA(x, tf.constant(f32(tangent))) as acc:
        out = fn(x)
    return out.numpy(), acc.jvp(out).numpy()


def jax_jvp(fn, primal, tangent=1.0):
    out, t = jax.jvp(fn, (f32(primal),), (f32(tangent),))
    return np.asarray(out), np.asarray(t)


def tf_jvp2(fn, primal):
    """The second derivative by a JVP of a JVP (nested accumulators)."""
    x = tf.constant(f32(primal))
    with FA(x, tf.constant(f32(1.0))) as outer:
        with FA(x, tf.constant(f32(1.0))) as inner:
            out = fn(x)
        t = inner.jvp(out)
    return outer.jvp(t).numpy()


def jax_jvp2(fn, primal):
    first = lambda v: jax.jvp(fn, (v,), (f32(1.0),))[1]  # noqa: E731
    return np.asarray(jax.jvp(first, (f32(primal),), (f32(1.0),))[1])


def close(got, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=atol)


# -- 1. forward mode through a scan whose step calls grad (was silently 0.0) -------------------

def test_jvp_of_scan_whose_step_calls_grad():
    def loop(v):
        return tfscan.scan(lambda x, i: (tfscan.grad(tf.cos)(x), i), v, tf.range(10))[0]

    def jloop(v):
        return jax.lax.scan(lambda x, i: (jax.grad(jnp.cos)(x), i), v, jnp.arange(10))[0]

    got, want = tf_jvp(loop, 0.5), jax_jvp(jloop, 0.5)
    close(got, want)
    assert abs(got[1]) > 0.1  # ~0.3827, the value


def test_jvp_of_scan_whose_step_calls_grad_and_closes_over_the_primal():
    # the tangent of a closed-over tensor reaches the step's own gradient too
    def loop(v):
        return tfscan.scan(lambda c, _: (2 * tf.sin(c * v) + tfscan.grad(tf.cos)(c * v), None),
                           1.3, length=3)[0]

    def jloop(v):
        return jax.lax.scan(lambda c, _: (2 * jnp.sin(c * v) + jax.grad(jnp.cos)(c * v), None),
                            f32(1.3), length=3)[0]

    close(tf_jvp(loop, 0.7), jax_jvp(jloop, 0.7))


def test_jvp_of_scan_whose_step_uses_a_tape_with_zero_unconnected_gradients():
    def gcos(x):
        with tf.GradientTape() as t:
            t.watch(x)
            y = tf.cos(x)
        return t.gradient(y, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    loop = lambda v: tfscan.scan(lambda x, i: (gcos(x), i), v, tf.range(3))[0]  # noqa: E731
    jloop = lambda v: jax.lax.scan(lambda x, i: (jax.grad(jnp.cos)(x), i), v, jnp.arange(3))[0]  # noqa: E731
    close(tf_jvp(loop, 0.5), jax_jvp(jloop, 0.5))


# -- 2. forward mode around a jitted function with a conditional -------------------------------

@pytest.mark.parametrize("kind", ["tf.cond", "cond", "switch"])
def test_jvp_of_jit_with_a_conditional(kind):
    branches = {
        "tf.cond": lambda x: tf.cond(x > 0, lambda: tf.sin(x) * x, lambda: x),
        "cond": lambda x: tfscan.cond(x > 0, lambda y: tf.sin(y) * y, lambda y: y, x),
        "switch": lambda x: tfscan.switch(tf.cast(x > 0, tf.int32), [lambda y: y, lambda y: tf.sin(y) * y], x),
    }
    f = tfscan.jit(branches[kind])
    jf = lambda x: jax.lax.cond(x > 0, lambda y: jnp.sin(y) * y, lambda y: y, x)  # noqa: E731
    close(tf_jvp(f, 0.5), jax_jvp(jf, 0.5))
    close(tf_jvp2(f, 0.5), jax_jvp2(jf, 0.5))
    close(f(tf.constant(f32(-0.5))), jf(f32(-0.5)))
    assert f.trace_count == 1  # the accumulator does not retrace the function


# -- 12. a Python bool returned for a float carry leaf is rejected (JAX: TypeError) -----------

def test_python_bool_for_a_float_carry_is_rejected_as_in_jax():
    with pytest.raises(TypeError, match="equal types"):
        jax.lax.scan(lambda c, _: (True, None), f32(0.0), length=3)
    with pytest.raises(TypeError, match=r"carry leaf carry of init has type float32\[\] but f returned bool\[\]"):
        tfscan.scan(lambda c, _: (True, None), 0.0, length=3)
    with pytest.raises(TypeError, match=r"init_val.*float32\[\] but body_fun returned bool\[\]"):
        tfscan.while_loop(lambda c: c < 1.0, lambda c: True, 0.0)
    with pytest.raises(TypeError, match=r"int32\[\] but f returned float32\[\]"):
        tfscan.scan(lambda c, _: (1.5, None), 0, length=3)  # JAX: a float is no int either
    # a Python number of the leaf's kind still takes its dtype (a weak type in JAX)
    assert tfscan.scan(lambda c, _: (1.5, None), tf.constant(0.0, tf.float16), length=2)[0].dtype == tf.float16


def test_every_mismatched_carry_leaf_is_listed():
    with pytest.raises(TypeError, match=r"2 leaves:[\s\S]*carry\[0\][\s\S]*carry\[1\]"):
        tfscan.scan(lambda c, _: ((True, tf.zeros(2)), None), (0.0, 0.0), length=3)


# -- 13. unroll=0 unrolls fully, as in JAX ------------------------------------------------------

def test_unroll_zero_unrolls_fully():
    xs = np.arange(1.0, 5.0, dtype=f32)
    want = jax.lax.scan(lambda c, x: (c * x + 1, c), f32(1.0), xs, unroll=0)
    got = tfscan.scan(lambda c, x: (c * x + 1, c), 1.0, tf.constant(xs), unroll=0)
    close(got[0], want[0])
    close(got[1], want[1])


# -- 14. a Python scalar in init takes the step's dtype (JAX's weak types) ---------------------

def test_python_scalar_init_takes_the_steps_dtype():
    xs = np.arange(1, 4, dtype=np.int8)
    want = jax.lax.scan(lambda c, x: (c + x, c), 0, xs)
    got = tfscan.scan(lambda c, x: (c + x, c), 0, tf.constant(xs))
    assert got[0].dtype == tf.int8 == want[0].dtype and got[1].dtype == tf.int8
    close(got[0], want[0])
    # a Python-scalar leaf beside tensor leaves; float scalars too
    h = np.ones(3, np.float16)
    want = jax.lax.scan(lambda c, x: ((c[0] + x, c[1] + 1), None), (0.0, np.int32(0)), h)[0]
    got = tfscan.scan(lambda c, x: ((c[0] + x, c[1] + 1), None), (0.0, tf.constant(0)), tf.constant(h))[0]
    assert got[0].dtype == tf.float16 == want[0].dtype and got[1].dtype == tf.int32
    # while_loop: the body's own constant fixes the dtype
    one = np.int8(1)
    want = jax.lax.while_loop(lambda c: c < 3, lambda c: c + one, 0)
    got = tfscan.while_loop(lambda c: c < 3, lambda c: c + tf.constant(1, tf.int8), 0)
    assert got.dtype == tf.int8 == want.dtype and int(got) == int(want) == 3


def test_a_tensor_leaf_never_changes_dtype():
    xs = tf.ones(3, tf.int8)
    with pytest.raises(TypeError):
        jax.lax.scan(lambda c, x: (c + x, None), jnp.int32(0), jnp.ones(3, jnp.int8).astype(jnp.float32))
    with pytest.raises(TypeError):
        tfscan.scan(lambda c, x: (c + x, None), tf.constant(0), xs)
    # a Python int becomes float when the step makes it one (JAX promotes the weak int)
    want = jax.lax.scan(lambda c, x: (c * 0.5, None), 3, jnp.ones(2))[0]
    got = tfscan.scan(lambda c, x: (tf.cast(c, tf.float32) * 0.5, None), 3, xs[:2])[0]
    assert got.dtype == tf.float32
    close(got, want)


# -- 15. fori_loop with float bounds -----------------------------------------------------------

def test_fori_loop_with_whole_float_bounds():
    want = jax.lax.fori_loop(0.0, 3.0, lambda i, c: c + i, 0.0)
    got = tfscan.fori_loop(0.0, 3.0, lambda i, c: c + i, 0.0)
    assert got.dtype == tf.float32  # JAX: float32 (float64 under x64, as the tests run it)
    close(got, want)
    with pytest.raises(TypeError, match="equal types"):
        jax.lax.fori_loop(0, 3.0, lambda i, c: c, 0.0)
    with pytest.raises(TypeError, match="equal types"):
        tfscan.fori_loop(0, 3.0, lambda i, c: c, 0.0)
    with pytest.raises(TypeError, match=r"upper=3\.5 is a float that is not a whole number.*upper=3"):
        tfscan.fori_loop(0.0, 3.5, lambda i, c: c, 0.0)
