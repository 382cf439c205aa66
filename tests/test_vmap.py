"""tfscan.vmap against a Python loop over the batch and against jax.vmap on the same programs."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import assert_trees_match

B, T, D, H = 3, 5, 2, 4


def seed_weights(rng):
    """The seed's Elman RNN weights (float64, so that JAX and TF agree to 1e-12)."""
    return (rng.normal(size=(H, H)) * 0.5, rng.normal(size=(D, H)) * 0.5, rng.normal(size=(H,)) * 0.1)


def rnn_tf(W_hh, W_xh, b_h):
    def rnn(h, xs):
        def step(h, x):
            h = tf.tanh(tf.linalg.matvec(W_hh, h, transpose_a=True)
                        + tf.linalg.matvec(W_xh, x, transpose_a=True) + b_h)
            return h, h
        return tfscan.scan(step, h, xs)
    return rnn


def rnn_jax(W_hh, W_xh, b_h):
    def rnn(h, xs):
        def step(h, x):
            h = jnp.tanh(h @ W_hh + x @ W_xh + b_h)
            return h, h
        return jax.lax.scan(step, h, xs)
    return rnn


def python_loop(fun, in_axes, args, size):
    """The definition of vmap: call fun on each slice and stack (out_axes=0)."""
    outs = []
    for i in range(size):
        sliced = [a if ax is None else tf.gather(a, i, axis=ax) for a, ax in zip(args, in_axes)]
        outs.append(fun(*sliced))
    return tf.nest.map_structure(lambda *xs: tf.stack(xs), *outs)


# --- The seed's two examples --------------------------------------------------------------

def test_seed_batched_xs(rng):
    """An RNN over a batch of sequences xs of shape (B, T, D), one shared initial state."""
    w = seed_weights(rng)
    xs, h0 = rng.normal(size=(B, T, D)), np.zeros(H)
    got = tfscan.vmap(rnn_tf(*map(tf.constant, w)), in_axes=(None, 0))(tf.constant(h0), tf.constant(xs))
    want = jax.vmap(rnn_jax(*w), in_axes=(None, 0))(h0, xs)
    assert_trees_match(got, want, rtol=1e-12, atol=1e-12)
    assert_trees_match(got, python_loop(rnn_tf(*map(tf.constant, w)), (None, 0), [h0, xs], B),
                       rtol=1e-12, atol=1e-12)
    assert got[1].shape == (B, T, H)


def test_seed_batched_init(rng):
    """The same RNN from a batch of initial states over one shared sequence."""
    w = seed_weights(rng)
    xs, h0 = rng.normal(size=(T, D)), rng.normal(size=(B, H))
    got = tfscan.vmap(rnn_tf(*map(tf.constant, w)), in_axes=(0, None))(tf.constant(h0), tf.constant(xs))
    want = jax.vmap(rnn_jax(*w), in_axes=(0, None))(h0, xs)
    assert_trees_match(got, want, rtol=1e-12, atol=1e-12)


def test_both_batched_other_axes(rng):
    """Time-major xs (T, B, D) mapped over axis 1, outputs with the batch axis moved."""
    w = seed_weights(rng)
    xs, h0 = rng.normal(size=(T, B, D)), rng.normal(size=(B, H))
    fun_tf = tfscan.vmap(rnn_tf(*map(tf.constant, w)), in_axes=(0, 1), out_axes=(0, 1))
    want = jax.vmap(rnn_jax(*w), in_axes=(0, 1), out_axes=(0, 1))(h0, xs)
    assert_trees_match(fun_tf(tf.constant(h0), tf.constant(xs)), want, rtol=1e-12, atol=1e-12)


def test_float32_matches_hand_batched_scan(rng):
    """The batching rule runs the same loop as the scan batched by hand."""
    w = [tf.constant(a, tf.float32) for a in seed_weights(rng)]
    xs = tf.constant(rng.normal(size=(B, T, D)), tf.float32)
    h0 = tf.constant(rng.normal(size=(B, H)), tf.float32)
    c, ys = tfscan.vmap(rnn_tf(*w))(h0, xs)

    def step(h, x):
        h = tf.tanh(h @ w[0] + x @ w[1] + w[2])
        return h, h
    c2, ys2 = tfscan.scan(step, h0, tf.transpose(xs, [1, 0, 2]))
    np.testing.assert_allclose(c.numpy(), c2.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ys.numpy(), np.transpose(ys2.numpy(), [1, 0, 2]), rtol=1e-5, atol=1e-6)


# --- Nests and axes -----------------------------------------------------------------------

Carry = collections.namedtuple("Carry", ["h", "count"])


def nested_programs():
    def fun_tf(params, inputs, scale):
        def step(c, x):
            h = tf.tanh(c.h * params["decay"] + x["u"] * params["gain"])
            return Carry(h, c.count + 1), {"h": h * scale, "v": x["v"] * 2}
        return tfscan.scan(step, Carry(inputs["h0"], tf.constant(0, tf.int32)),
                           {"u": inputs["u"], "v": inputs["v"]})

    def fun_jax(params, inputs, scale):
        def step(c, x):
            h = jnp.tanh(c.h * params["decay"] + x["u"] * params["gain"])
            return Carry(h, c.count + 1), {"h": h * scale, "v": x["v"] * 2}
        return jax.lax.scan(step, Carry(inputs["h0"], jnp.int32(0)), {"u": inputs["u"], "v": inputs["v"]})

    return fun_tf, fun_jax


def test_nests_with_mixed_in_axes(rng):
    """Dict/namedtuple nests; in_axes prefixes with None leaves; a mapped int leaf."""
    fun_tf, fun_jax = nested_programs()
    params = {"decay": rng.normal(size=(H,)), "gain": rng.normal(size=(B, H))}
    inputs = {"h0": rng.normal(size=(H,)), "u": rng.normal(size=(B, T, H)),
              "v": rng.integers(-5, 5, size=(T, B)).astype(np.int32)}
    scale = 0.5
    in_axes = ({"decay": None, "gain": 0}, {"h0": None, "u": 0, "v": 1}, None)
    got = tfscan.vmap(fun_tf, in_axes=in_axes)(tf.nest.map_structure(tf.constant, params),
                                                tf.nest.map_structure(tf.constant, inputs), scale)
    want = jax.vmap(fun_jax, in_axes=in_axes)(params, inputs, scale)
    assert_trees_match(got, want, rtol=1e-12, atol=1e-12)
    assert isinstance(got[0], Carry)


def test_in_axes_list_negative_axes_and_kwargs(rng):
    x, y = rng.normal(size=(4, B)), rng.normal(size=(B, 4))

    def f(a, b, *, c):
        return {"sum": a + b + c, "prod": a * b}
    got = tfscan.vmap(f, in_axes=[-1, 0], out_axes={"sum": -1, "prod": 0})(
        tf.constant(x), tf.constant(y), c=tf.constant(y))
    want = jax.vmap(f, in_axes=[-1, 0], out_axes={"sum": -1, "prod": 0})(x, y, c=y)
    assert_trees_match(got, want, rtol=1e-12)


def test_unmapped_outputs_and_axis_size(rng):
    w, x = rng.normal(size=(H,)), rng.normal(size=(B, H))

    def f(x, w):
        return x * w, w * 2.0
    got = tfscan.vmap(f, in_axes=(0, None), out_axes=(0, None))(tf.constant(x), tf.constant(w))
    want = jax.vmap(f, in_axes=(0, None), out_axes=(0, None))(x, w)
    assert_trees_match(got, want, rtol=1e-12)
    # An unmapped output with an int out_axes is broadcast; axis_size when nothing is mapped.
    got = tfscan.vmap(lambda w: w + 1.0, in_axes=None, axis_size=B, out_axes=1)(tf.constant(w))
    want = jax.vmap(lambda w: w + 1.0, in_axes=None, axis_size=B, out_axes=1)(w)
    assert_trees_match(got, want, rtol=1e-12)


def test_python_scalar_and_none_arguments_pass_through():
    def f(x, n, nothing):
        assert isinstance(n, int) and nothing is None  # unmapped non-tensors arrive as they are
        return tfscan.scan(lambda c, _: (c * x, c), tf.ones_like(x), length=n)[1]
    got = tfscan.vmap(f, in_axes=(0, None, None))(tf.constant([1.0, 2.0, 3.0]), 4, None)
    np.testing.assert_array_equal(got.numpy(), [[1, 1, 1, 1], [1, 2, 4, 8], [1, 3, 9, 27]])


def test_nested_vmap(rng):
    x = rng.normal(size=(2, B, T))

    def f(v):
        return tfscan.scan(lambda c, a: (c + a, c * a), tf.zeros([], v.dtype), v)
    got = tfscan.vmap(tfscan.vmap(f), in_axes=1, out_axes=1)(tf.constant(x))
    want = jax.vmap(jax.vmap(lambda v: jax.lax.scan(lambda c, a: (c + a, c * a), 0.0, v)),
                    in_axes=1, out_axes=1)(x)
    assert_trees_match(got, want, rtol=1e-12)


def test_zero_batch():
    c, ys = tfscan.vmap(lambda v: tfscan.scan(lambda c, a: (c + a, c), 0.0, v))(tf.zeros([0, T], tf.float32))
    assert c.shape == (0,) and ys.shape == (0, T)


def test_dynamic_batch_size_in_a_graph(rng):
    @tf.function(input_signature=[tf.TensorSpec([None, T], tf.float64)])
    def f(x):
        return tfscan.vmap(lambda v: tfscan.scan(lambda c, a: (c + a, c), 0.0 * v[0], v))(x)
    x = rng.normal(size=(B, T))
    want = jax.vmap(lambda v: jax.lax.scan(lambda c, a: (c + a, c), 0.0 * v[0], v))(x)
    assert_trees_match(f(tf.constant(x)), want, rtol=1e-12)


def test_disable_jit_runs_a_python_loop(rng):
    seen = []

    def f(v):
        seen.append(v.numpy().tolist())  # eager: values are visible
        return tfscan.scan(lambda c, a: (c + a, c), tf.zeros([], v.dtype), v)
    x = rng.normal(size=(B, T))
    with tfscan.disable_jit():
        got = tfscan.vmap(f)(tf.constant(x))
    assert len(seen) == B
    assert_trees_match(got, jax.vmap(lambda v: jax.lax.scan(lambda c, a: (c + a, c), 0.0, v))(x), rtol=1e-12)


def test_batched_while_loop_predicate(rng):
    """Per-example trip counts: run until every example is done; done ones keep their value."""
    limits = np.array([1.0, 5.0, 20.0])

    def f_tf(limit):
        return tf.while_loop(lambda i, x: x < limit, lambda i, x: (i + 1, x * 2.0 + 1.0),
                             (tf.constant(0), tf.constant(1.0, tf.float64)))

    def f_jax(limit):
        return jax.lax.while_loop(lambda s: s[1] < limit, lambda s: (s[0] + 1, s[1] * 2.0 + 1.0),
                                  (jnp.int32(0), 1.0))
    got = tfscan.vmap(f_tf)(tf.constant(limits))
    assert_trees_match(got, jax.vmap(f_jax)(limits))


def test_xla_slices_with_per_example_indices():
    """XLA's dynamic (update) slice, the ops a scan's loop uses, batched at any index."""
    from tensorflow.compiler.tf2xla.python import xla
    buf = tf.reshape(tf.range(12.0), [4, 3])

    def f(i, u):
        written = xla.dynamic_update_slice(buf, tf.reshape(u * tf.constant([1.0, 2.0]), [1, 2]),
                                           tf.stack([i, i % 2]))
        return written, xla.dynamic_slice(buf, tf.stack([i, 0]), [2, 2])
    idx, us = tf.constant([0, 1, 3]), tf.constant([1.0, 2.0, 3.0])
    got = tfscan.vmap(f)(idx, us)
    assert_trees_match(got, python_loop(f, (0, 0), [idx, us], 3))


def test_op_without_batching_rule_is_a_clear_error():
    with pytest.raises(NotImplementedError, match=r"op 'Unique' of type Unique, which has no batching rule"):
        tfscan.vmap(lambda x: tf.unique(x)[0])(tf.constant([[1, 2, 2], [3, 3, 4]]))


def test_one_while_loop_in_the_compiled_program(rng):
    """vmap of a scan is one loop over the batched carry, not a loop over examples."""
    w = [tf.constant(a, tf.float32) for a in seed_weights(rng)]
    fun = tfscan.jit(tfscan.vmap(rnn_tf(*w)))
    hlo = fun.lower(tf.zeros([64, H]), tf.zeros([64, 100, D])).as_text()
    assert hlo.count(" while(") == 1, hlo


# --- Gradients ----------------------------------------------------------------------------

def loss_programs():
    def loss_tf(W, h, xs):
        def step(h, x):
            h = tf.tanh(tf.linalg.matvec(W, h, transpose_a=True) + x)
            return h, tf.reduce_sum(h * h)
        h, sq = tfscan.scan(step, h, xs)
        return tf.reduce_sum(sq) + tf.reduce_sum(h)

    def loss_jax(W, h, xs):
        def step(h, x):
            h = jnp.tanh(h @ W + x)
            return h, jnp.sum(h * h)
        h, sq = jax.lax.scan(step, h, xs)
        return jnp.sum(sq) + jnp.sum(h)

    return loss_tf, loss_jax


def loss_args(rng):
    return rng.normal(size=(H, H)) * 0.5, rng.normal(size=(B, H)), rng.normal(size=(B, T, H))


def test_vmap_of_grad_per_example_gradients(rng):
    loss_tf, loss_jax = loss_programs()
    W, h0, xs = loss_args(rng)

    def per_example(W, h, xs):
        with tf.GradientTape() as tape:
            tape.watch(W)
            value = loss_tf(W, h, xs)
        return tape.gradient(value, W)
    got = tfscan.vmap(per_example, in_axes=(None, 0, 0))(tf.constant(W), tf.constant(h0), tf.constant(xs))
    want = jax.vmap(jax.grad(loss_jax), in_axes=(None, 0, 0))(W, h0, xs)
    assert_trees_match(got, want, rtol=1e-10, atol=1e-12)


def test_vmap_of_tfscan_grad(rng):
    loss_tf, loss_jax = loss_programs()
    W, h0, xs = loss_args(rng)
    got = tfscan.vmap(tfscan.grad(loss_tf, argnums=(0, 1)), in_axes=(None, 0, 0))(
        tf.constant(W), tf.constant(h0), tf.constant(xs))
    want = jax.vmap(jax.grad(loss_jax, argnums=(0, 1)), in_axes=(None, 0, 0))(W, h0, xs)
    assert_trees_match(got, want, rtol=1e-10, atol=1e-12)


def test_grad_of_vmap(rng):
    """Gradients reach mapped and shared arguments, closed-over tensors and variables."""
    loss_tf, loss_jax = loss_programs()
    W, h0, xs = loss_args(rng)
    scale = rng.normal(size=(B,))
    Wt, st = tf.constant(W), tf.Variable(scale)

    def total_tf(W, h0, xs):
        return tf.reduce_sum(tfscan.vmap(lambda h, x: loss_tf(W, h, x) * 2.0)(h0, xs) * st)

    def total_jax(W, h0, xs, scale):
        return jnp.sum(jax.vmap(lambda h, x: loss_jax(W, h, x) * 2.0)(h0, xs) * scale)

    args = [Wt, tf.constant(h0), tf.constant(xs)]
    with tf.GradientTape() as tape:
        tape.watch(args)
        value = total_tf(*args)
    got = tape.gradient(value, args + [st])
    want = jax.grad(total_jax, argnums=(0, 1, 2, 3))(W, h0, xs, scale)
    assert_trees_match(got, list(want), rtol=1e-10, atol=1e-12)

    # The same through tfscan.grad (compiled) and with W a shared (in_axes=None) argument.
    def total_shared(W, h0, xs):
        return tf.reduce_sum(tfscan.vmap(loss_tf, in_axes=(None, 0, 0))(W, h0, xs))
    got = tfscan.grad(total_shared, argnums=(0, 1, 2))(*args)
    want = jax.grad(lambda W, h, x: jnp.sum(jax.vmap(loss_jax, in_axes=(None, 0, 0))(W, h, x)),
                    argnums=(0, 1, 2))(W, h0, xs)
    assert_trees_match(got, want, rtol=1e-10, atol=1e-12)


def test_grad_of_vmap_with_unmapped_output(rng):
    w, x = rng.normal(size=(H,)), rng.normal(size=(B, H))

    def f(x, w):
        return tf.reduce_sum(x * w), tf.reduce_sum(w * w)

    def total(f_vmapped, x, w, s):
        a, b = f_vmapped(x, w)
        return s(a) + 3.0 * b
    got = tfscan.grad(lambda x, w: total(tfscan.vmap(f, in_axes=(0, None), out_axes=(0, None)), x, w,
                                         tf.reduce_sum), argnums=(0, 1))(tf.constant(x), tf.constant(w))
    want = jax.grad(lambda x, w: total(jax.vmap(lambda x, w: (jnp.sum(x * w), jnp.sum(w * w)),
                                                in_axes=(0, None), out_axes=(0, None)), x, w, jnp.sum),
                    argnums=(0, 1))(x, w)
    assert_trees_match(got, want, rtol=1e-12)


def second_derivative(f, x):
    xt = tf.constant(x)
    with tf.GradientTape() as outer:
        outer.watch(xt)
        with tf.GradientTape() as inner:
            inner.watch(xt)
            y = tf.reduce_sum(tfscan.vmap(f)(xt))
        g = inner.gradient(y, xt)
    return g, outer.gradient(g, xt)


def test_second_derivative_through_vmap(rng):
    x = rng.normal(size=(B,))
    g, h = second_derivative(lambda v: v * v * v, x)
    np.testing.assert_allclose(g.numpy(), 3 * x ** 2, rtol=1e-12)
    np.testing.assert_allclose(h.numpy(), 6 * x, rtol=1e-12)


def test_second_derivative_of_scan_through_vmap(rng):
    x = rng.normal(size=(B,))
    g, h = second_derivative(
        lambda v: tfscan.scan(lambda c, _: (c * v, None), tf.constant(1.0, tf.float64), length=3)[0], x)
    np.testing.assert_allclose(g.numpy(), 3 * x ** 2, rtol=1e-12)
    np.testing.assert_allclose(h.numpy(), 6 * x, rtol=1e-12)


def test_scan_whose_step_calls_vmap(rng):
    W = rng.normal(size=(H, H)) * 0.5
    xs, h0 = rng.normal(size=(T, B, H)), rng.normal(size=(B, H))

    def total_tf(W, h0, xs):
        def step(hs, x):
            new = tfscan.vmap(lambda h, u: tf.tanh(tf.linalg.matvec(W, h, transpose_a=True) + u))(hs, x)
            return new, new
        return tf.reduce_sum(tfscan.scan(step, h0, xs)[1] ** 2)

    def total_jax(W, h0, xs):
        def step(hs, x):
            new = jax.vmap(lambda h, u: jnp.tanh(h @ W + u))(hs, x)
            return new, new
        return jnp.sum(jax.lax.scan(step, h0, xs)[1] ** 2)

    args = [tf.constant(a) for a in (W, h0, xs)]
    np.testing.assert_allclose(total_tf(*args).numpy(), total_jax(W, h0, xs), rtol=1e-12)
    got = tfscan.grad(total_tf, argnums=(0, 1, 2))(*args)
    assert_trees_match(got, jax.grad(total_jax, argnums=(0, 1, 2))(W, h0, xs), rtol=1e-10, atol=1e-12)


def test_jit_of_vmap_of_grad(rng):
    loss_tf, loss_jax = loss_programs()
    W, h0, xs = loss_args(rng)
    fun = tfscan.jit(tfscan.vmap(tfscan.grad(loss_tf), in_axes=(None, 0, 0)))
    got = fun(tf.constant(W), tf.constant(h0), tf.constant(xs))
    want = jax.jit(jax.vmap(jax.grad(loss_jax), in_axes=(None, 0, 0)))(W, h0, xs)
    assert_trees_match(got, want, rtol=1e-10, atol=1e-12)


# --- Errors -------------------------------------------------------------------------------

def test_error_batch_sizes_disagree():
    with pytest.raises(ValueError, match=r"(?s)inconsistent sizes.*argument x .*size 2.*argument y .*size 3"):
        tfscan.vmap(lambda x, y: x + y)(tf.ones([2, 4]), tf.ones([3, 4]))
    with pytest.raises(ValueError, match=r"(?s)axis_size=5.*argument x"):
        tfscan.vmap(lambda x: x, axis_size=5)(tf.ones([2]))


def test_error_axis_out_of_range():
    with pytest.raises(ValueError, match=r"argument x\['a'\] along axis 2.*rank.*only 2"):
        tfscan.vmap(lambda x: x["a"], in_axes=({"a": 2},))({"a": tf.ones([2, 3])})
    with pytest.raises(ValueError, match=r"argument x along axis -3"):
        tfscan.vmap(lambda x: x, in_axes=-3)(tf.ones([2, 3]))
    with pytest.raises(ValueError, match=r"out_axes=3 is out of range for output"):
        tfscan.vmap(lambda x: x, out_axes=3)(tf.ones([2, 3]))
    with pytest.raises(ValueError, match=r"argument x along axis 0.*rank should be at least 1"):
        tfscan.vmap(lambda x: x)(1.0)


def test_error_in_axes_structure():
    with pytest.raises(ValueError, match=r"tuple of length 1 but .* 2 positional arguments"):
        tfscan.vmap(lambda x, y: x, in_axes=(0,))(tf.ones([2]), tf.ones([2]))
    with pytest.raises(ValueError, match=r"tree prefix.*in_axes\[0\] is \{'a': 0\} but x has structure"):
        tfscan.vmap(lambda x: x, in_axes=({"a": 0},))({"b": tf.ones([2])})
    with pytest.raises(ValueError, match=r"tree prefix.*in_axes\[0\]\[1\].*x\[1\]"):
        tfscan.vmap(lambda x: x, in_axes=((0, (0, 0)),))((tf.ones([2]), tf.ones([2])))
    with pytest.raises(TypeError, match=r"in_axes must be an int, None"):
        tfscan.vmap(lambda x: x, in_axes=0.5)
    with pytest.raises(TypeError, match=r"in_axes must be an int, None, or a tuple.*in_axes=\(\{'a': 0\},\)"):
        tfscan.vmap(lambda x: x, in_axes={"a": 0})
    with pytest.raises(TypeError, match=r"axis_size"):
        tfscan.vmap(lambda x: x, axis_size=-1)


def test_error_nothing_mapped_and_mapped_output_with_out_axes_none():
    with pytest.raises(ValueError, match=r"at least one non-None value in in_axes"):
        tfscan.vmap(lambda x: x, in_axes=None)(tf.ones([2]))
    with pytest.raises(ValueError, match=r"mapped output but out_axes is None: output\[1\]"):
        tfscan.vmap(lambda x: (x, x * 2), out_axes=(0, None))(tf.ones([2]))
    with pytest.raises(TypeError, match=r"argument x is mapped .* not a tensor"):
        tfscan.vmap(lambda x: x)(object())
    with pytest.raises(TypeError, match=r"argument x\[0\] is mapped .* string"):
        tfscan.vmap(lambda x: x)([tf.constant(["a", "b"])])


def test_tf_vectorized_map_of_a_function_calling_scan_in_a_graph():
    """In a tf.function a scan calls its compiled program as one XlaLaunch op: TensorFlow's
    own pfor (``tf.vectorized_map``) converts it as the function call it stands for."""
    rs = np.random.RandomState(0)
    w = tf.constant(rs.randn(3, 3).astype(np.float32) * 0.3)

    def f(a):
        return tfscan.scan(lambda h, x: (tf.tanh(tf.linalg.matvec(w, h) + x), h), a[0], a[1])[0]

    h0 = tf.constant(rs.randn(4, 3).astype(np.float32))
    xs = tf.constant(rs.randn(4, 5, 3).astype(np.float32))
    out = tf.function(lambda h0, xs: tf.vectorized_map(f, (h0, xs), fallback_to_while_loop=False))(h0, xs)
    np.testing.assert_allclose(out, np.stack([f((h0[i], xs[i])).numpy() for i in range(4)]), rtol=1e-5, atol=1e-6)
