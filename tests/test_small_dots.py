"""Small matrix products of a loop body are a multiply and a sum, not a ``dot`` (issue 14, items 1, 7).

Counts in the optimised HLO, never times (the speed is in ``benchmarks/README.md``): a step
with products of at most ``small_dots.MAX_MACS`` multiply-adds compiles to loops without a
``dot``, forward and backward; a larger product keeps its ``dot``. Values and gradients
match JAX's (to float rounding: the sum runs over K in its own order).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from tfscan._scan import small_dots

T, B, H, I = 12, 4, 8, 3


def _dots(hlo: str) -> int:
    return len(re.findall(r" dot\(", hlo))


def _params(h=H, seed=0):
    rng = np.random.default_rng(seed)
    return {"W": (rng.normal(size=(h, h)) * 0.3).astype(np.float32),
            "U": (rng.normal(size=(I, h)) * 0.3).astype(np.float32)}


def _step(mm, tanh, p):
    def step(h, x):
        h = tanh(mm(h, p["W"]) + mm(x, p["U"]))
        return h, h
    return step


_TF_PRODUCTS = {
    "matmul": lambda a, b: tf.matmul(a, b),
    "matmul_transposed": lambda a, b: tf.matmul(tf.transpose(a), tf.transpose(b), transpose_a=True,
                                                transpose_b=True),
    "batch_matmul_adjoint": lambda a, b: tf.squeeze(tf.linalg.matmul(
        tf.transpose(a[None], [0, 2, 1]), b[None], adjoint_a=True), 0),
}


@pytest.mark.parametrize("kind", sorted(_TF_PRODUCTS))
def test_small_products_leave_no_dot_and_match_jax(kind):
    p = _params()
    xs = np.random.default_rng(1).normal(size=(T, B, I)).astype(np.float32)
    h0 = np.zeros((B, H), np.float32)

    def tf_loss(p, xs):
        return tf.reduce_sum(tfscan.scan(_step(_TF_PRODUCTS[kind], tf.tanh, p), h0, xs)[1] ** 2)

    def jax_loss(p, xs):
        return jnp.sum(jax.lax.scan(_step(jnp.matmul, jnp.tanh, p), h0, xs)[1] ** 2)
    fn = tfscan.jit(tfscan.value_and_grad(tf_loss))
    tp = {k: tf.constant(v) for k, v in p.items()}
    assert _dots(fn.lower(tp, tf.constant(xs)).as_text()) == 0
    value, grads = fn(tp, tf.constant(xs))
    want_value, want_grads = jax.value_and_grad(jax_loss)(p, xs)
    np.testing.assert_allclose(value.numpy(), want_value, rtol=1e-5)
    for k in p:
        np.testing.assert_allclose(grads[k].numpy(), want_grads[k], rtol=1e-4, atol=1e-5)


def test_the_ported_train_step_has_no_dot_and_matches_jax():
    """issue 14's port: ``jit(value_and_grad(mean(vmap(scan loss))))`` with matrix-vector products."""
    p = _params()
    p["V"] = (np.random.default_rng(2).normal(size=(H, 1)) * 0.3).astype(np.float32)
    rng = np.random.default_rng(3)
    xs, ys = rng.normal(size=(B, T, I)).astype(np.float32), rng.normal(size=(B, T, 1)).astype(np.float32)

    def vecmat(v, M):
        return tf.matmul(v, M) if v.shape.rank == 2 else tf.linalg.matvec(M, v, transpose_a=True)

    def tf_one(p, xs, ys):
        def step(h, xy):
            h = tf.tanh(vecmat(h, p["W"]) + vecmat(xy[0], p["U"]))
            return h, tf.reduce_sum((vecmat(h, p["V"]) - xy[1]) ** 2, axis=-1)
        return tf.reduce_mean(tfscan.scan(step, tf.zeros(H), (xs, ys))[1])

    def jax_one(p, xs, ys):
        def step(h, xy):
            h = jnp.tanh(h @ p["W"] + xy[0] @ p["U"])
            return h, jnp.sum((h @ p["V"] - xy[1]) ** 2)
        return jnp.mean(jax.lax.scan(step, jnp.zeros(H), (xs, ys))[1])
    train = tfscan.jit(lambda p, xs, ys: tfscan.value_and_grad(
        lambda p: tf.reduce_mean(tfscan.vmap(tf_one, in_axes=(None, 0, 0))(p, xs, ys)))(p))
    tp = {k: tf.constant(v) for k, v in p.items()}
    assert _dots(train.lower(tp, tf.constant(xs), tf.constant(ys)).as_text()) == 0
    value, grads = train(tp, tf.constant(xs), tf.constant(ys))
    want_value, want_grads = jax.value_and_grad(
        lambda p: jnp.mean(jax.vmap(jax_one, in_axes=(None, 0, 0))(p, xs, ys)))(p)
    np.testing.assert_allclose(value.numpy(), want_value, rtol=1e-5)
    for k in p:
        np.testing.assert_allclose(grads[k].numpy(), want_grads[k], rtol=1e-4, atol=1e-6)


def test_a_large_product_keeps_its_dot():
    h = 64  # [B, 64] @ [64, 64]: 16384 multiply-adds, over the bound
    assert B * h * h > small_dots.MAX_MACS
    p = _params(h)
    xs = tf.constant(np.random.default_rng(1).normal(size=(T, B, I)).astype(np.float32))
    fn = tfscan.jit(lambda xs: tfscan.scan(_step(tf.matmul, tf.tanh, p), tf.zeros([B, h]), xs)[1])
    assert _dots(fn.lower(xs).as_text()) == 1  # h @ W; x @ U ([4, 3] @ [3, 64]: 768) is rewritten


def test_float64_is_rewritten_and_half_precision_is_not():
    for dtype, dots in ((tf.float64, 0), (tf.bfloat16, 2)):
        p = {k: tf.cast(v, dtype) for k, v in _params().items()}
        xs = tf.cast(np.random.default_rng(1).normal(size=(T, B, I)), dtype)
        fn = tfscan.jit(lambda xs: tfscan.scan(_step(tf.matmul, tf.tanh, p), tf.zeros([B, H], dtype), xs)[1])
        assert _dots(fn.lower(xs).as_text()) == dots, dtype


def _dot_shapes(hlo: str) -> list[str]:
    return re.findall(r"= (\S+) dot\(", hlo)


@pytest.mark.parametrize("batch, dots", [(64, 2), (2, 0)])
def test_vmap_of_a_scan_sizes_its_products_for_the_batch(batch, dots):
    """The benchmarks' ``vmap`` row (issue 14, item 7): the per-example step's ``[32] @ [32, 32]``
    (1024 multiply-adds) is batched before it is sized, so at B=64 the loop keeps two
    ``[64, 32] @ [32, 32]`` dots (as JAX's), not a ``[64, 1, 32, 32]`` multiply and sum each;
    at B=2 (2048 multiply-adds) the batched product is small and rewritten. The mapped xs
    are read in place (``xs[:, t]``), not through a time-major copy."""
    h, t = 32, 5
    rng = np.random.default_rng(4)
    p = {"W_hh": (rng.normal(size=(h, h)) * 0.9 / np.sqrt(h)).astype(np.float32),
         "W_xh": (rng.normal(size=(h, h)) / np.sqrt(h)).astype(np.float32),
         "b": (rng.normal(size=h) * 0.1).astype(np.float32)}
    h0 = (rng.normal(size=(batch, h)) * 0.1).astype(np.float32)
    xs = rng.normal(size=(batch, t, h)).astype(np.float32)

    def tf_one(p, h0, xs):
        def step(c, x):
            c = tf.tanh(tf.tensordot(c, p["W_hh"], 1) + tf.tensordot(x, p["W_xh"], 1) + p["b"])
            return c, c
        return tfscan.scan(step, h0, xs)

    def jax_one(p, h0, xs):
        def step(c, x):
            c = jnp.tanh(c @ p["W_hh"] + x @ p["W_xh"] + p["b"])
            return c, c
        return jax.lax.scan(step, h0, xs)
    tp = {k: tf.constant(v) for k, v in p.items()}
    args = (tp, tf.constant(h0), tf.constant(xs))
    batched = tfscan.vmap(tf_one, in_axes=(None, 0, 0))
    hlo = tfscan.jit(batched).lower(*args).as_text()
    assert _dot_shapes(hlo) == [f"f32[{batch},32]{{1,0}}"] * dots
    assert not re.search(rf"f32\[{batch},1,32,32\]", hlo)  # no per-example product broadcast
    # The loop reads each step's rows from xs as given ([B, T, I]), not from a transposed copy.
    (state,) = re.findall(r"= \((.*)\) while\(", hlo)
    assert f"f32[{batch},{t},32]" in state and state.count(f"f32[{t},{batch},32]") == 1  # xs; the ys buffer
    want = jax.vmap(jax_one, in_axes=(None, 0, 0))(p, h0, xs)
    for got in (batched(*args), tfscan.jit(batched)(*args)):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-6)
    loss = lambda f, s: lambda p: s(f(p, h0, xs)[1] ** 2)  # noqa: E731
    grads = tfscan.jit(tfscan.grad(loss(batched, tf.reduce_sum)))(tp)
    want_grads = jax.grad(loss(jax.vmap(jax_one, in_axes=(None, 0, 0)), jnp.sum))(p)
    for k in p:
        np.testing.assert_allclose(grads[k].numpy(), want_grads[k], rtol=1e-4, atol=1e-5)
