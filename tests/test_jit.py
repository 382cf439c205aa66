"""tfscan.jit: JAX's caching rules (retrace counter), static arguments, lowering, composition."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import assert_trees_match


def cumsum_tf(xs):
    return tfscan.scan(lambda c, x: (c + x, c + x), tf.zeros_like(xs[0]), xs)


def cumsum_jax(xs):
    return jax.lax.scan(lambda c, x: (c + x, c + x), jnp.zeros_like(xs[0]), xs)


def test_matches_jax_jit(rng):
    xs = rng.normal(size=(6, 3))
    assert_trees_match(tfscan.jit(cumsum_tf)(tf.constant(xs)), jax.jit(cumsum_jax)(xs), rtol=1e-12)


def test_new_values_reuse_new_shapes_and_dtypes_retrace(rng):
    f = tfscan.jit(cumsum_tf)
    assert f.trace_count == 0
    f(tf.constant(rng.normal(size=(4, 2))))
    f(tf.constant(rng.normal(size=(4, 2))))
    f(rng.normal(size=(4, 2)))  # NumPy float64: the same signature
    assert f.trace_count == 1
    f(tf.constant(rng.normal(size=(5, 2))))  # new shape
    assert f.trace_count == 2
    f(tf.constant(rng.normal(size=(5, 2)), tf.float32))  # new dtype
    assert f.trace_count == 3
    f(tf.constant(rng.normal(size=(4, 2))))  # cached
    assert f.trace_count == 3 and f._cache_size() == 3


def test_python_numbers_are_not_baked_in():
    f = tfscan.jit(lambda a, b: a * b + 1)
    assert float(f(2.0, 3.0)) == 7.0
    assert float(f(4.0, 5.0)) == 21.0
    assert f.trace_count == 1  # a float is a float32 tensor, its value is not part of the key
    assert int(f(2, 3)) == 7 and f(2, 3).dtype == tf.int32  # an int is an int32: one more trace
    assert f.trace_count == 2


def test_structure_changes_retrace():
    f = tfscan.jit(lambda d: sum(tf.reduce_sum(v) for v in d.values()))
    f({"a": tf.ones([2])})
    f({"a": tf.zeros([2])})
    f({"a": tf.ones([2]), "b": tf.ones([2])})
    assert f.trace_count == 2


def test_static_argnums_and_argnames():
    calls = []

    @functools.partial(tfscan.jit, static_argnums=1)
    def power(x, n, *, offset=0.0):
        calls.append(n)
        y = tfscan.scan(lambda c, _: (c * x, None), tf.ones_like(x), length=n)[0]
        return y + offset

    assert float(power(tf.constant(2.0), 3)) == 8.0
    assert float(power(tf.constant(3.0), 3)) == 27.0
    assert power.trace_count == 1
    # By name it is static too (static_argnames is completed from the signature); as in
    # JAX, passing it by keyword instead of by position is a new signature.
    assert float(power(tf.constant(3.0), n=3)) == 27.0
    assert float(power(tf.constant(4.0), n=3)) == 64.0
    assert power.trace_count == 2
    assert float(power(tf.constant(2.0), 4, offset=1.0)) == 17.0
    assert float(power(tf.constant(2.0), 4, offset=2.0)) == 18.0  # offset is dynamic
    assert power.trace_count == 3 and calls == [3, 3, 4]

    @tfscan.jit(static_argnames="mode")
    def g(x, mode):
        return x * 2 if mode == "double" else x * 3
    assert float(g(1.0, mode="double")) == 2.0 and float(g(1.0, "triple")) == 3.0
    assert g.trace_count == 2


def test_outputs_are_pytrees_and_python_values():
    @tfscan.jit
    def f(x):
        return {"y": (x, None, [x * 2]), "k": 3}
    out = f(tf.constant(1.0))
    assert set(out) == {"k", "y"} and out["y"][1] is None
    assert int(out["k"]) == 3 and float(out["y"][2][0]) == 2.0


def test_lower_shows_one_while_loop_of_constant_size():
    f = tfscan.jit(cumsum_tf)
    short = f.lower(tf.zeros([10])).as_text()
    long = f.lower(tf.TensorSpec([100000], tf.float32)).as_text()
    assert " while(" in short and "HloModule" in short
    assert abs(len(long) - len(short)) < 0.2 * len(short)  # the loop is not unrolled
    assert "while" in f.lower(tf.zeros([10])).as_text(stage="hlo")
    assert f.lower(tf.zeros([10])).compile().as_text() == short


def test_gradient_through_jit(rng):
    W, xs = rng.normal(size=(3, 3)) * 0.5, rng.normal(size=(5, 3))

    def loss_tf(W, xs):
        h, _ = tfscan.scan(lambda h, x: (tf.tanh(tf.linalg.matvec(W, h, transpose_a=True) + x), None),
                           tf.zeros([3], tf.float64), xs)
        return tf.reduce_sum(h * h)

    def loss_jax(W, xs):
        h, _ = jax.lax.scan(lambda h, x: (jnp.tanh(h @ W + x), None), jnp.zeros(3), xs)
        return jnp.sum(h * h)

    Wt, xst = tf.constant(W), tf.constant(xs)
    with tf.GradientTape() as tape:
        tape.watch([Wt, xst])
        value = tfscan.jit(loss_tf)(Wt, xst)
    got = tape.gradient(value, [Wt, xst])
    assert_trees_match(got, list(jax.grad(loss_jax, argnums=(0, 1))(W, xs)), rtol=1e-10)
    assert_trees_match(tfscan.jit(tfscan.grad(loss_tf))(Wt, xst), jax.jit(jax.grad(loss_jax))(W, xs),
                       rtol=1e-10)


def test_closed_over_variable_is_read_at_call_time():
    v = tf.Variable(2.0)
    f = tfscan.jit(lambda x: x * v)
    assert float(f(3.0)) == 6.0
    v.assign(5.0)
    assert float(f(3.0)) == 15.0 and f.trace_count == 1


def test_jit_inside_tf_function_and_nested_jit():
    inner = tfscan.jit(lambda x: x + 1.0)
    outer = tfscan.jit(lambda x: inner(x) * 2.0)
    assert float(outer(1.0)) == 4.0

    @tf.function
    def g(x):
        return inner(x)
    assert float(g(tf.constant(1.0))) == 2.0


def test_method():
    class Model:
        def __init__(self, w):
            self.w = w

        @functools.partial(tfscan.jit, static_argnums=0)
        def apply(self, x):
            return x * self.w
    m = Model(3.0)
    assert float(m.apply(tf.constant(2.0))) == 6.0


def test_disable_jit_runs_python():
    seen = []

    @tfscan.jit
    def f(x):
        seen.append(float(x))  # fails on a traced tensor
        return x * 2
    with tfscan.disable_jit():
        assert float(f(tf.constant(1.5))) == 3.0
    assert seen == [1.5] and f.trace_count == 0


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match=r"static argument n must be hashable.*list"):
        tfscan.jit(lambda x, n: x, static_argnums=1)(1.0, [1, 2])
    with pytest.raises(TypeError, match=r"argument x\['s'\] is str .* not a tensor.*static_argnums"):
        tfscan.jit(lambda x: x)({"s": "text"})
    with pytest.raises(ValueError, match=r"static_argnums=\(2,\) refers to positional argument 2"):
        tfscan.jit(lambda x, y: x, static_argnums=2)
    with pytest.raises(ValueError, match=r"static_argnames=\('z',\) names 'z'"):
        tfscan.jit(lambda x, y: x, static_argnames="z")
    with pytest.raises(TypeError, match=r"static_argnums must be ints"):
        tfscan.jit(lambda x: x, static_argnums=(1.5,))


def test_a_python_bool_argument_is_a_flag_and_a_mismatched_python_int_is_named():
    """``x * flag``: TensorFlow multiplies a float by a bool *tensor* as booleans, so a bool
    passed as a tensor gave ``[False, True]`` for ``[0.5, 2.0] * True`` (JAX, eager TF and
    ``tf.function``: ``[0.5, 2.0]``). A Python bool is now static, as in ``tf.function``."""
    x = tf.constant([0.5, 2.0])
    f = tfscan.jit(lambda x, flag, scale=1.0: x * flag * scale)
    for flag in [True, False, True]:
        out = f(x, flag)
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out.numpy(), [0.5 * flag, 2.0 * flag])
        np.testing.assert_allclose(f(x, flag=flag).numpy(), [0.5 * flag, 2.0 * flag])
    assert f.trace_count <= 4  # True and False, positional and by keyword
    with pytest.raises(TypeError, match=r"jit: the function mixes dtypes.*int -> int32.*here scale.*3\.0"):
        f(x, True, 3)
