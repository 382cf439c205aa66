"""Gradients through tfscan.scan against jax.grad, numeric checks, and every context."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import tfscan

RTOL = 1e-9


def rnn_programs(reverse=False, unroll=1):
    """One Elman-RNN loss written for tfscan and for JAX (float64)."""

    def loss_tf(W, U, h0, xs):
        def step(h, x):
            h = tf.tanh(h @ W + x @ U)
            return h, (tf.reduce_sum(h * h), h[:, :1])
        h, (sq, first) = tfscan.scan(step, h0, xs, reverse=reverse, unroll=unroll)
        return tf.reduce_sum(sq) + tf.reduce_sum(first * 3.0) + tf.reduce_sum(h)

    def loss_jax(W, U, h0, xs):
        def step(h, x):
            h = jnp.tanh(h @ W + x @ U)
            return h, (jnp.sum(h * h), h[:, :1])
        h, (sq, first) = jax.lax.scan(step, h0, xs, reverse=reverse, unroll=unroll)
        return jnp.sum(sq) + jnp.sum(first * 3.0) + jnp.sum(h)

    return loss_tf, loss_jax


def rnn_args(rng, T=6, B=2, I=3, H=4):
    return (rng.normal(size=(H, H)) * 0.4, rng.normal(size=(I, H)) * 0.4,
            rng.normal(size=(B, H)), rng.normal(size=(T, B, I)))


def tape_grads(loss, args):
    args = [tf.convert_to_tensor(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(args)
        value = loss(*args)
    return value, tape.gradient(value, args)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("unroll", [1, 4])
def test_gradients_match_jax(reverse, unroll, rng):
    loss_tf, loss_jax = rnn_programs(reverse, unroll)
    args = rnn_args(rng)
    value, grads = tape_grads(loss_tf, args)
    want_value, want = jax.value_and_grad(loss_jax, argnums=(0, 1, 2, 3))(*args)
    np.testing.assert_allclose(value.numpy(), want_value, rtol=RTOL)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-8, atol=1e-12)


def test_eager_function_and_xla_gradients_agree(rng):
    loss_tf, _ = rnn_programs()
    args = [tf.constant(a) for a in rnn_args(rng)]
    grad = lambda *a: tape_grads(loss_tf, a)[1]  # noqa: E731
    eager = grad(*args)
    graph = tf.function(grad)(*args)
    xla = tf.function(grad, jit_compile=True)(*args)
    for a, b, c in zip(eager, graph, xla):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
        np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-12)


def test_numeric_gradient_check(rng):
    xs = tf.constant(rng.normal(size=(5, 3)))
    W = tf.constant(rng.normal(size=(3, 3)) * 0.5)

    def f(W, xs):
        carry, ys = tfscan.scan(lambda c, x: (tf.sin(tf.linalg.matvec(W, c) + x), c * c), tf.ones(3, tf.float64), xs)
        return tf.reduce_sum(ys) + tf.reduce_sum(carry)

    theoretical, numerical = tf.test.compute_gradient(f, [W, xs])
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-5, atol=1e-6)


def test_closed_over_tensors_and_variables(rng):
    W = tf.constant(rng.normal(size=(3, 3)))
    v = tf.Variable(rng.normal(size=(3,)))
    xs = tf.constant(rng.normal(size=(4, 3)))

    def loss():
        c, _ = tfscan.scan(lambda c, x: (tf.tanh(tf.linalg.matvec(W, c) * v + x), None), tf.zeros(3, tf.float64), xs)
        return tf.reduce_sum(c)

    def loss_jax(W, v, xs):
        c, _ = jax.lax.scan(lambda c, x: (jnp.tanh((W @ c) * v + x), None), jnp.zeros(3), xs)
        return jnp.sum(c)

    for new_v in [None, rng.normal(size=(3,))]:
        if new_v is not None:
            v.assign(new_v)  # the gradient after a reassignment uses the new value
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([W, xs])
            value = loss()
        gW, gv, gx = tape.gradient(value, [W, v, xs])
        want = jax.grad(loss_jax, argnums=(0, 1, 2))(W.numpy(), v.numpy(), xs.numpy())
        for g, w in zip((gW, gv, gx), want):
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-9)


def test_int_and_bool_leaves_get_none_and_do_not_break_float_ones():
    xs = {"f": tf.constant([1.0, 2.0, 3.0]), "i": tf.constant([1, 2, 3]), "b": tf.constant([True, False, True])}
    init = (tf.constant(1.0), tf.constant(0))

    def step(c, x):
        f, n = c
        f = f * tf.where(x["b"], x["f"], 2.0)
        return (f, n + x["i"]), (n, x["b"])

    with tf.GradientTape() as tape:
        tape.watch([init[0], init[1], xs["f"], xs["i"]])
        (f, n), _ = tfscan.scan(step, init, xs)
    g = tape.gradient(f, [init[0], init[1], xs["f"], xs["i"]])
    assert g[1] is None and g[3] is None
    assert float(g[0]) == 6.0
    np.testing.assert_allclose(g[2].numpy(), [6.0, 0.0, 2.0])
    assert int(n) == 6


def test_unconnected_gradients_follow_tf():
    a, b = tf.constant(1.0), tf.constant(2.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([a, b])
        c, _ = tfscan.scan(lambda c, x: (c * a, None), 1.0, length=3)
    assert tape.gradient(c, b) is None
    assert float(tape.gradient(c, b, unconnected_gradients=tf.UnconnectedGradients.ZERO)) == 0.0
    assert float(tape.gradient(c, a)) == 3.0


def test_length_zero_and_xs_none_gradients():
    a = tf.constant(1.5)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(a)
        c0, ys0 = tfscan.scan(lambda c, x: (c * a + x, c), a, tf.zeros([0]))
        c1, ys1 = tfscan.scan(lambda c, _: (c * a, c), a, length=3)
        total = tf.reduce_sum(ys1)
    assert float(tape.gradient(c0, a)) == 1.0
    assert float(tape.gradient(c1, a)) == pytest.approx(4 * 1.5 ** 3)
    assert float(tape.gradient(total, a)) == pytest.approx(1 + 2 * 1.5 + 3 * 1.5 ** 2)


def test_only_some_ys_used():
    xs = tf.constant([1.0, 2.0, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(xs)
        _, (a, b) = tfscan.scan(lambda c, x: (c + x, (x * x, c)), 0.0, xs)
        used = a[1]
    np.testing.assert_allclose(tape.gradient(used, xs).numpy(), [0.0, 4.0, 0.0])


def test_hessian_vector_product_nested_tapes_and_forward_over_reverse(rng):
    loss_tf, loss_jax = rnn_programs()
    args = rnn_args(rng, T=4)
    v = rng.normal(size=args[0].shape)
    want = jax.jvp(jax.grad(loss_jax), args, (v,) + tuple(np.zeros_like(a) for a in args[1:]))[1]
    W = tf.constant(args[0])
    rest = [tf.constant(a) for a in args[1:]]
    with tf.GradientTape() as outer:
        outer.watch(W)
        with tf.GradientTape() as inner:
            inner.watch(W)
            value = loss_tf(W, *rest)
        gv = tf.reduce_sum(inner.gradient(value, W) * v)
    np.testing.assert_allclose(outer.gradient(gv, W).numpy(), want, rtol=1e-8)
    with tf.autodiff.ForwardAccumulator(W, tf.constant(v)) as acc:
        with tf.GradientTape() as inner:
            inner.watch(W)
            value = loss_tf(W, *rest)
        g = inner.gradient(value, W)
    np.testing.assert_allclose(acc.jvp(g).numpy(), want, rtol=1e-8)


def test_forward_mode_jvp(rng):
    loss_tf, loss_jax = rnn_programs(reverse=True)
    args = rnn_args(rng, T=5)
    tangent = rng.normal(size=args[3].shape)
    want = jax.jvp(lambda xs: loss_jax(*args[:3], xs), (args[3],), (tangent,))[1]
    xs = tf.constant(args[3])
    with tf.autodiff.ForwardAccumulator(xs, tf.constant(tangent)) as acc:
        value = loss_tf(*[tf.constant(a) for a in args[:3]], xs)
    np.testing.assert_allclose(acc.jvp(value).numpy(), want, rtol=1e-9)


@settings(max_examples=10, deadline=None)
@given(T=st.integers(0, 9), reverse=st.booleans(), unroll=st.integers(1, 4), seed=st.integers(0, 999))
def test_random_lengths_match_jax(T, reverse, unroll, seed):
    rng = np.random.default_rng(seed)
    loss_tf, loss_jax = rnn_programs(reverse, unroll)
    args = rnn_args(rng, T=T, B=1, I=2, H=3)
    _, grads = tape_grads(loss_tf, args)
    want = jax.grad(loss_jax, argnums=(0, 1, 2, 3))(*args)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-8, atol=1e-12)


# --- tfscan.grad / value_and_grad -----------------------------------------------------

def test_grad_over_nests_with_argnums_and_aux(rng):
    def make(scan, tanh, total, matvec):
        def loss(params, xs, scale):
            def step(h, x):
                h = tanh(matvec(params["W"], h) + x + params["b"])
                return h, h
            h, hs = scan(step, params["h0"], xs)
            return total(hs * hs) * scale, {"h": h}
        return loss

    loss_tf = make(tfscan.scan, tf.tanh, tf.reduce_sum, lambda W, h: tf.linalg.matvec(W, h, transpose_a=True))
    loss_jax = make(jax.lax.scan, jnp.tanh, jnp.sum, lambda W, h: h @ W)
    params = {"W": rng.normal(size=(3, 3)), "b": rng.normal(size=3), "h0": rng.normal(size=3)}
    xs = rng.normal(size=(5, 3))
    (value, aux), g = tfscan.value_and_grad(loss_tf, argnums=(0, 1), has_aux=True)(params, xs, 2.0)
    (want_value, want_aux), want = jax.value_and_grad(loss_jax, argnums=(0, 1), has_aux=True)(params, xs, 2.0)
    np.testing.assert_allclose(value.numpy(), want_value, rtol=1e-9)
    np.testing.assert_allclose(aux["h"].numpy(), want_aux["h"], rtol=1e-9)
    assert isinstance(g, tuple) and sorted(g[0]) == ["W", "b", "h0"]
    for k in params:
        np.testing.assert_allclose(g[0][k].numpy(), want[0][k], rtol=1e-9)
    np.testing.assert_allclose(g[1].numpy(), want[1], rtol=1e-9)
    g_only, aux2 = tfscan.grad(loss_tf, has_aux=True, jit=False)(params, xs, 2.0)
    np.testing.assert_allclose(g_only["W"].numpy(), want[0]["W"], rtol=1e-9)


def test_grad_errors():
    with pytest.raises(TypeError, match="scalar"):
        tfscan.grad(lambda x: x * 2.0)(tf.ones(3))
    with pytest.raises(TypeError, match=r"args\[0\]\['n'\].*int32"):
        tfscan.grad(lambda p: p["x"] * 2.0)({"x": 1.0, "n": 3})
    with pytest.raises(ValueError, match="argnums"):
        tfscan.grad(lambda x: x, argnums=2)(1.0)


def test_nested_scan_gradient_in_every_context(rng):
    def outer_tf(xs):
        def row_step(c, row):
            return tfscan.scan(lambda a, x: (a * tf.sin(x) + x, a), c, row)
        c, ys = tfscan.scan(row_step, tf.constant(1.0, tf.float64), xs)
        return c + tf.reduce_sum(ys)

    def outer_jax(xs):
        def row_step(c, row):
            return jax.lax.scan(lambda a, x: (a * jnp.sin(x) + x, a), c, row)
        c, ys = jax.lax.scan(row_step, 1.0, xs)
        return c + ys.sum()

    xs = rng.normal(size=(3, 4))
    want = jax.grad(outer_jax)(xs)

    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = outer_tf(x)
        return tape.gradient(value, x)

    x = tf.constant(xs)
    for fn in (grad, tf.function(grad), tf.function(grad, jit_compile=True)):
        np.testing.assert_allclose(fn(x).numpy(), want, rtol=1e-10)


@pytest.mark.parametrize("remat", [True, "full", 1, 3, 4, "sqrt"])
@pytest.mark.parametrize("reverse", [False, True])
def test_every_remat_policy_gives_the_same_values_and_gradients(remat, reverse, rng):
    args = [tf.constant(a) for a in rnn_args(rng, T=10)]

    def loss(remat):
        def fn(W, U, h0, xs):
            def step(h, x):
                h = tf.tanh(h @ W + x @ U)
                return h, tf.reduce_sum(h * h)
            h, ys = tfscan.scan(step, h0, xs, reverse=reverse, remat=remat)
            return tf.reduce_sum(ys * tf.range(1.0, 11.0, dtype=tf.float64)) + tf.reduce_sum(h)
        return fn

    base_value, base = tape_grads(loss(False), args)
    value, grads = tape_grads(loss(remat), args)
    np.testing.assert_allclose(value.numpy(), base_value.numpy(), rtol=1e-12)
    for g, b in zip(grads, base):
        np.testing.assert_allclose(g.numpy(), b.numpy(), rtol=1e-10, atol=1e-13)


def test_bad_remat():
    with pytest.raises(ValueError, match="remat"):
        tfscan.scan(lambda c, x: (c, None), 0.0, length=2, remat="half")
    with pytest.raises(ValueError, match="remat"):
        tfscan.scan(lambda c, x: (c, None), 0.0, length=2, remat=0)


@pytest.mark.parametrize("remat", [False, True])
def test_user_custom_gradient_and_tape_inside_the_step(remat):
    @tf.custom_gradient
    def clipped_square(x):
        return x * x, lambda d: tf.clip_by_value(d * 2 * x, -3.0, 3.0)

    def step(c, x):
        with tf.GradientTape() as tape:  # per-step autodiff, e.g. a Hamiltonian's force
            tape.watch(c)
            energy = c * c * x
        return c - 0.1 * tape.gradient(energy, c) + clipped_square(x), c

    xs = tf.constant([1.0, 2.0, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(xs)
        c, ys = tfscan.scan(step, 0.5, xs, remat=remat)
    g = tape.gradient(c, xs)
    with tfscan.disable_jit():
        c_ref, _ = tfscan.scan(step, 0.5, xs)
    assert float(c) == pytest.approx(float(c_ref))
    # d c_T / d x_t by hand: c' = c (1 - 0.2 x) + x^2, where the custom gradient clips the
    # cotangent of x^2, d * 2x, to [-3, 3] (d = the product of the later (1 - 0.2 x)).
    c_vals, cs = [0.5], 0.5
    for x in [1.0, 2.0, 3.0]:
        cs = cs * (1 - 0.2 * x) + x * x
        c_vals.append(cs)
    want = []
    for t, x in enumerate([1.0, 2.0, 3.0]):
        d = float(np.prod([1 - 0.2 * later for later in [1.0, 2.0, 3.0][t + 1:]]))
        want.append(-0.2 * c_vals[t] * d + min(d * 2 * x, 3.0))
    np.testing.assert_allclose(g.numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("remat", [False, True, 2])
def test_gradient_when_the_batch_is_unknown_until_run_time(remat, rng):
    W = tf.constant(rng.normal(size=(4, 4)))

    @tf.function(input_signature=[tf.TensorSpec([6, None, 4], tf.float64)])
    def grad(xs):
        with tf.GradientTape() as tape:
            tape.watch(W)
            _, hs = tfscan.scan(lambda h, x: (tf.tanh(h @ W + x),) * 2, tf.zeros_like(xs[0]), xs, remat=remat)
            loss = tf.reduce_sum(hs)
        return tape.gradient(loss, W)

    xs = rng.normal(size=(6, 3, 4))
    want = jax.grad(lambda W: jnp.sum(jax.lax.scan(lambda h, x: (jnp.tanh(h @ W + x),) * 2,
                                                   jnp.zeros((3, 4)), xs)[1]))(W.numpy())
    np.testing.assert_allclose(grad(tf.constant(xs)).numpy(), want, rtol=1e-9)


def test_gradient_when_the_length_is_known_only_at_run_time(rng):
    W = tf.constant(rng.normal(size=(3, 3)) * 0.5)

    @tf.function(input_signature=[tf.TensorSpec([None, 2, 3], tf.float64), tf.TensorSpec([], tf.int32)])
    def grads(xs, n):
        with tf.GradientTape() as tape:
            tape.watch([W, xs])
            h, hs = tfscan.scan(lambda h, x: (tf.tanh(h @ W + x),) * 2, tf.zeros([2, 3], tf.float64), xs)
            c, _ = tfscan.scan(lambda c, _: (c @ W, None), tf.eye(3, dtype=tf.float64), length=n)
            loss = tf.reduce_sum(hs) + tf.reduce_sum(c)
        return tape.gradient(loss, [W, xs])

    def loss_jax(W, xs, n):
        _, hs = jax.lax.scan(lambda h, x: (jnp.tanh(h @ W + x),) * 2, jnp.zeros((2, 3)), xs)
        c, _ = jax.lax.scan(lambda c, _: (c @ W, None), jnp.eye(3), length=n)
        return jnp.sum(hs) + jnp.sum(c)

    for T, n in [(4, 2), (7, 3), (0, 0)]:
        xs = rng.normal(size=(T, 2, 3))
        got = grads(tf.constant(xs), tf.constant(n))
        want = jax.grad(loss_jax, argnums=(0, 1))(W.numpy(), xs, n)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-9, atol=1e-12)


def test_random_draws_in_the_step_are_saved_not_redrawn():
    generator = tf.random.Generator.from_seed(1)
    xs = tf.ones([5, 3])
    for draw in (lambda: tf.random.uniform([3]), lambda: generator.normal([3])):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            c, _ = tfscan.scan(lambda c, x: (c + x * draw(), c), tf.zeros(3), xs)
            loss = tf.reduce_sum(c)
        # c = sum_t u_t * x_t with x = 1: the gradient rows are the u_t the forward pass drew.
        np.testing.assert_allclose(tape.gradient(loss, xs).numpy().sum(0), c.numpy(), rtol=1e-5)


def test_forward_mode_through_a_closed_over_variable():
    w = tf.Variable(1.5)
    with tf.autodiff.ForwardAccumulator([w], [tf.constant(0.3)]) as acc:
        y, _ = tfscan.scan(lambda c, _: (c * w, None), 2.0, length=3)
    assert float(acc.jvp(y)) == pytest.approx(2.0 * 3 * 1.5 ** 2 * 0.3)  # d(2 w^3) = 6 w^2 dw


def test_a_step_that_updates_a_variable_sees_its_own_writes():
    counter = tf.Variable(0.0)

    def step(c, x):
        counter.assign_add(1.0)
        return c + counter.read_value() * x, None

    carry, _ = tfscan.scan(step, 0.0, tf.ones(4))
    assert float(carry) == 1 + 2 + 3 + 4 and float(counter) == 4.0


def test_keyword_arguments_and_unhashable_python_arguments_pass_through():
    """As ``jax.grad``: keyword arguments go to ``fun`` undifferentiated (the wrapper took
    positional ones only), and an argument not differentiated that is a dict of numbers is
    passed as tensors (it was made static, and rejected as unhashable)."""
    def loss(w, xs, cfg, scale=1.0):
        return tfscan.scan(lambda c, x: (c * w + x * cfg["a"], None), 0.0, xs)[0] * scale
    def loss_j(w, xs, cfg, scale=1.0):
        return jax.lax.scan(lambda c, x: (c * w + x * cfg["a"], None), 0.0, xs)[0] * scale
    want = jax.grad(loss_j)(0.5, jnp.ones(3), {"a": 1.5}, scale=2.0)
    for jit in (True, False):
        got = tfscan.grad(loss, jit=jit)(0.5, tf.ones(3), {"a": 1.5}, scale=2.0)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
        value, got = tfscan.value_and_grad(loss, jit=jit)(0.5, tf.ones(3), {"a": 1.5}, scale=2.0)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def test_complex_inputs_get_jaxs_gradient_and_a_complex_output_is_an_error():
    def loss(z):
        c, _ = tfscan.scan(lambda c, x: (c * z + x, None), tf.constant(1, tf.complex64), tf.ones(3, tf.complex64))
        return tf.math.real(c) + tf.math.imag(c) * 0.5
    def loss_j(z):
        c, _ = jax.lax.scan(lambda c, x: (c * z + x, None), jnp.complex64(1), jnp.ones(3, jnp.complex64))
        return jnp.real(c) + jnp.imag(c) * 0.5
    z = np.complex64(0.5 + 0.25j)
    np.testing.assert_allclose(tfscan.grad(loss)(tf.constant(z)).numpy(), np.asarray(jax.grad(loss_j)(z)), rtol=1e-5)
    with pytest.raises(TypeError, match="grad requires real-valued outputs, but fun returned complex64"):
        tfscan.grad(lambda w: tf.cast(w, tf.complex64) * (1 + 2j))(2.0)
