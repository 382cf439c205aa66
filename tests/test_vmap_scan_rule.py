"""The scan's batching rule: vmap of a scan is one scan of the batched step, and grad of vmap
of a scan is one batched forward loop plus one batched backward loop (JAX's structure),
with values equal to JAX's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import assert_trees_match

B, T, I, H = 4, 6, 3, 5


def _data(seed=0):
    rng = np.random.default_rng(seed)
    p = {"W": rng.normal(size=(H, H)) * 0.4, "U": rng.normal(size=(I, H)) * 0.4, "V": rng.normal(size=(H, 1)) * 0.4}
    return p, rng.normal(size=(B, T, I)), rng.normal(size=(B, T, 1))


def _loss_tf(p, xs, ys):
    def step(h, xy):
        x, y = xy
        h = tf.tanh(tf.linalg.matvec(p["W"], h, transpose_a=True) + tf.linalg.matvec(p["U"], x, transpose_a=True))
        return h, tf.reduce_sum((tf.linalg.matvec(p["V"], h, transpose_a=True) - y) ** 2)
    return tf.reduce_mean(tfscan.scan(step, tf.zeros(H, tf.float64), (xs, ys))[1])


def _loss_jax(p, xs, ys):
    def step(h, xy):
        x, y = xy
        h = jnp.tanh(h @ p["W"] + x @ p["U"])
        return h, jnp.sum((h @ p["V"] - y) ** 2)
    return jnp.mean(jax.lax.scan(step, jnp.zeros(H, jnp.float64), (xs, ys))[1])


def _train_tf(p, xs, ys):
    return tfscan.value_and_grad(lambda p: tf.reduce_mean(tfscan.vmap(_loss_tf, in_axes=(None, 0, 0))(p, xs, ys)))(p)


def _train_jax(p, xs, ys):
    return jax.value_and_grad(lambda p: jnp.mean(jax.vmap(_loss_jax, in_axes=(None, 0, 0))(p, xs, ys)))(p)


def test_ported_train_step_matches_jax():
    p, xs, ys = _data()
    want = jax.jit(_train_jax)(p, xs, ys)
    got = tfscan.jit(_train_tf)({k: tf.constant(v) for k, v in p.items()}, tf.constant(xs), tf.constant(ys))
    assert_trees_match(got, want, rtol=1e-10, atol=1e-12)


def test_grad_of_vmap_of_scan_is_one_batched_forward_and_one_backward_loop():
    """Before the rule: three loops (the batched forward, each example's forward recomputed
    under pfor for a per-example VJP, and the backward loop)."""
    p, xs, ys = _data()
    text = tfscan.jit(_train_tf).lower({k: tf.constant(v) for k, v in p.items()}, tf.constant(xs),
                                       tf.constant(ys)).as_text(stage="hlo")
    assert text.count(" while(") == 2


def test_eager_tape_and_tf_function_gradients_of_vmap_match_jax():
    p, xs, ys = _data(1)
    pt = {k: tf.constant(v) for k, v in p.items()}
    want = jax.grad(lambda p: jnp.sum(jax.vmap(_loss_jax, in_axes=(None, 0, 0))(p, xs, ys) ** 2))(p)

    def loss(pt):
        return tf.reduce_sum(tfscan.vmap(_loss_tf, in_axes=(None, 0, 0))(pt, tf.constant(xs), tf.constant(ys)) ** 2)

    with tf.GradientTape() as tape:
        tape.watch(pt)
        value = loss(pt)
    assert_trees_match(tape.gradient(value, pt), want, rtol=1e-10, atol=1e-12)

    @tf.function
    def graph_grad(pt):
        with tf.GradientTape() as tape:
            tape.watch(pt)
            value = loss(pt)
        return tape.gradient(value, pt)
    assert_trees_match(graph_grad(pt), want, rtol=1e-10, atol=1e-12)


def test_carry_batched_by_a_mapped_x_and_unbatched_carry_leaves():
    """``init`` is shared but the carry depends on mapped xs (the fixpoint batches it); a
    counter in the carry stays unbatched (out_axes=None accepts it, as in JAX)."""
    rng = np.random.default_rng(2)
    xs, a = rng.normal(size=(B, T)), rng.normal(size=(B,))

    def f_tf(x, a):
        (c, n), ys = tfscan.scan(lambda c, x: ((tf.sin(c[0] * a) + x, c[1] + 1), c[0] * x), (0.5, 0), x)
        return c, n, ys

    def f_jax(x, a):
        (c, n), ys = jax.lax.scan(lambda c, x: ((jnp.sin(c[0] * a) + x, c[1] + 1), c[0] * x), (0.5, 0), x)
        return c, n, ys

    want = jax.vmap(f_jax, out_axes=(0, None, 0))(xs, a)
    want_g = jax.grad(lambda xs: jnp.sum(jax.vmap(f_jax, out_axes=(0, None, 0))(xs, a)[2]))(xs)
    c, n, ys = tfscan.vmap(f_tf, out_axes=(0, None, 0))(tf.constant(xs), tf.constant(a))
    assert n.shape == () and int(n) == int(want[1]) == T
    assert_trees_match((c, ys), (want[0], want[2]), rtol=1e-10, atol=1e-12)
    xt = tf.constant(xs)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = tf.reduce_sum(tfscan.vmap(f_tf, out_axes=(0, None, 0))(xt, tf.constant(a))[2])
    np.testing.assert_allclose(tape.gradient(out, xt).numpy(), want_g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_mapped_weights_and_reverse_match_jax(reverse):
    rng = np.random.default_rng(3)
    w, xs = rng.normal(size=(B, H)) * 0.5, rng.normal(size=(B, T, H))

    def f_tf(w, xs):
        def step(c, x):
            c = tf.tanh(c * w + x)
            return c, tf.reduce_sum(c)
        return tfscan.scan(step, tf.zeros(H, tf.float64), xs, reverse=reverse)

    def f_jax(w, xs):
        def step(c, x):
            c = jnp.tanh(c * w + x)
            return c, jnp.sum(c)
        return jax.lax.scan(step, jnp.zeros(H, jnp.float64), xs, reverse=reverse)

    want = jax.vmap(f_jax)(w, xs)
    want_g = jax.grad(lambda w, xs: jnp.sum(jax.vmap(f_jax)(w, xs)[1] ** 2), argnums=(0, 1))(w, xs)
    got = tfscan.jit(tfscan.vmap(f_tf))(tf.constant(w), tf.constant(xs))
    assert_trees_match(got, want, rtol=1e-10, atol=1e-12)
    got_g = tfscan.grad(lambda w, xs: tf.reduce_sum(tfscan.vmap(f_tf)(w, xs)[1] ** 2), argnums=(0, 1))(
        tf.constant(w), tf.constant(xs))
    assert_trees_match(got_g, want_g, rtol=1e-9, atol=1e-11)


def _count_plans(monkeypatch):
    from tfscan._scan import scan as scan_module

    made = []

    class Counted(scan_module.Plan):
        def __init__(self, *a, **k):
            made.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(scan_module, "Plan", Counted)
    return made


def _shared_init_program(x, a):
    """``h`` starts shared and is batched by the mapped xs; ``n`` (a counter fed by a shape)
    and ``m`` (a constant) stay unbatched, as in JAX."""
    def step(c, x):
        h, n, m = c
        return (tf.sin(h * a) + x, n + tf.shape(tf.reshape(x, [-1]))[0], tf.ones([], tf.float64)), h * x
    (h, n, m), ys = tfscan.scan(step, (tf.constant(0.5, tf.float64), tf.constant(0), tf.constant(0.0, tf.float64)), x)
    return h, n, m, ys


def _shared_init_program_jax(x, a):
    def step(c, x):
        h, n, m = c
        return (jnp.sin(h * a) + x, n + 1, jnp.ones([])), h * x
    (h, n, m), ys = jax.lax.scan(step, (0.5, 0, 0.0), x)
    return h, n, m, ys


def _check_shared_init(seed):
    rng = np.random.default_rng(seed)
    xs, a = rng.normal(size=(B, T)), rng.normal(size=(B,))
    axes = (0, None, None, 0)
    from tfscan._core import cache
    for name in ("scan", "vmap"):  # traced afresh: cached programs would hide the tracing
        cache.eager_cache(name).clear()
    h, n, m, ys = tfscan.vmap(_shared_init_program, out_axes=axes)(tf.constant(xs), tf.constant(a))
    want = jax.vmap(_shared_init_program_jax, out_axes=axes)(xs, a)
    assert n.shape == () and int(n) == T and m.shape == () and float(m) == 1.0
    assert_trees_match((h, ys), (want[0], want[3]), rtol=1e-10, atol=1e-12)


def test_a_carry_batched_by_mapped_xs_traces_the_batched_step_once(monkeypatch):
    """The carry fixpoint is read from the step's dependencies: the batched step is traced
    once (it was traced a second time once ``h`` came out batched)."""
    made = _count_plans(monkeypatch)
    _check_shared_init(3)
    assert len(made) == 2  # the per-example scan, then the batched one


def test_a_wrong_guess_of_a_batched_carry_is_corrected(monkeypatch):
    """Were the dependencies to over-approximate (the constant ``m`` reading x), the leaf
    pfor leaves unbatched is unbatched again: out_axes=None still accepts it."""
    from tfscan._scan import step as step_module

    real = step_module.Traced.depends_on

    def over(self):
        deps = real(self)
        if len(deps) == 4:  # (h, n, m) and ys: m "reads" x
            deps[2] = (deps[2][0] | {3}, deps[2][1])
        return deps

    monkeypatch.setattr(step_module.Traced, "depends_on", over)
    made = _count_plans(monkeypatch)
    _check_shared_init(4)
    assert len(made) == 3  # the guess for m is refuted by one more trace


def test_tf_function_tape_gradient_of_vmap_on_a_fresh_trace():
    """A tape inside a plain ``tf.function``, the vmap traced there first: TensorFlow builds the
    gradient of the batched (XLA-compiled) program outside XLA's context; the scan's backward
    loop must still go inline (it was an ``XlaLaunch`` inside the compiled backward: error)."""
    from tfscan._core import cache
    for name in ("scan", "vmap"):
        cache.eager_cache(name).clear()
    p, xs, ys = _data(5)
    pt = {k: tf.constant(v) for k, v in p.items()}
    want = jax.grad(lambda p: jnp.sum(jax.vmap(_loss_jax, in_axes=(None, 0, 0))(p, xs, ys) ** 2))(p)

    @tf.function
    def graph_grad(pt):
        with tf.GradientTape() as tape:
            tape.watch(pt)
            value = tf.reduce_sum(tfscan.vmap(_loss_tf, in_axes=(None, 0, 0))(pt, tf.constant(xs), tf.constant(ys)) ** 2)
        return tape.gradient(value, pt)
    assert_trees_match(graph_grad(pt), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T, kw", [(1, {}), (3, {"unroll": True}), (5, {"remat": 2}), (7, {"remat": 3}),
                                   (5, {"remat": "sqrt"})])
def test_gradient_of_a_vmapped_scan_of_one_iteration_matches_jax(T, kw):
    """A loop of one iteration (length 1, a full unroll, remat's last segment of one step) ran
    inline, with no While for vmap's rule to batch whole: the gradient of the vmap read
    tensors of the per-example trace ("out of its scope")."""
    X = np.random.RandomState(0).randn(3, T).astype(np.float32)
    want = jax.grad(lambda X: jnp.sum(jax.vmap(lambda xs: jax.lax.scan(
        lambda c, x: (jnp.sin(c) + x, c), 0.0, xs)[1])(X)))(X)
    got = tfscan.grad(lambda X: tf.reduce_sum(tfscan.vmap(lambda xs: tfscan.scan(
        lambda c, x: (tf.sin(c) + x, c), 0.0, xs, **kw)[1])(X)))(tf.constant(X))
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-5, atol=1e-6)
