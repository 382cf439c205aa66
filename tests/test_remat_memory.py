"""What a scan's gradient keeps alive (issue 14, item 4), and that its values do not change.

* A carry leaf the step also returns as a y (an RNN's new state) is read back from the ys
  by the backward loop, not saved a second time.
* A ys cotangent that is the same at every step — zeros (a loss on the final carry only)
  or, in a graph, the broadcast of ``reduce_sum``/``reduce_mean``'s gradient — reaches the
  backward loop as one row, never as a ``[T, ...]`` tensor.
* ``remat=k`` with a tail segment joins the ys without the tape keeping a second copy.

Peaks are read from TensorFlow's allocator (``tf.config.experimental.get_memory_info``,
deterministic for one call); gradients are compared with ``remat=False`` and with JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan

T, B, I, H = 410, 16, 4, 128
BUFFER = T * B * H * 4  # bytes of one [T, B, H] float32 tensor: the ys


def _data(rng):
    return {"W": (rng.normal(size=(H, H)) * 0.5 / np.sqrt(H)).astype(np.float32),
            "U": (rng.normal(size=(I, H)) / np.sqrt(I)).astype(np.float32),
            "h0": (rng.normal(size=(B, H)) * 0.1).astype(np.float32),
            "xs": rng.normal(size=(T, B, I)).astype(np.float32)}


LOSSES = {
    "sum": (lambda c, ys: tf.reduce_sum(ys), lambda c, ys: jnp.sum(ys)),
    "mean": (lambda c, ys: tf.reduce_mean(ys), lambda c, ys: jnp.mean(ys)),
    "final": (lambda c, ys: tf.reduce_sum(c), lambda c, ys: jnp.sum(c)),
    "weighted": (lambda c, ys: tf.reduce_sum(ys * tf.range(T, dtype=tf.float32)[:, None, None]),
                 lambda c, ys: jnp.sum(ys * jnp.arange(T, dtype=jnp.float32)[:, None, None])),
    "sliced": (lambda c, ys: tf.reduce_sum(ys[T // 2:]), lambda c, ys: jnp.sum(ys[T // 2:])),
}


def _tf_grad(d, remat, loss, reverse=False, where="eager"):
    def run(W, U, h0, xs):
        with tf.GradientTape() as tape:
            tape.watch((W, U, h0))

            def step(h, x):
                h = tf.tanh(h @ W + x @ U)
                return h, h
            c, ys = tfscan.scan(step, h0, xs, remat=remat, reverse=reverse)
            value = LOSSES[loss][0](c, ys)
        return tape.gradient(value, (W, U, h0))
    if where != "eager":
        run = tf.function(run, jit_compile=where == "xla", autograph=False)
    return [g.numpy() for g in run(*(tf.constant(d[k]) for k in ("W", "U", "h0", "xs")))]


def _jax_grad(d, loss, reverse=False):
    def f(W, U, h0, xs):
        def step(h, x):
            h = jnp.tanh(h @ W + x @ U)
            return h, h
        c, ys = jax.lax.scan(step, h0, xs, reverse=reverse)
        return LOSSES[loss][1](c, ys)
    return [np.asarray(g) for g in jax.grad(f, argnums=(0, 1, 2))(d["W"], d["U"], d["h0"], d["xs"])]


@pytest.mark.parametrize("remat", [False, True, 7, "sqrt"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_gradients_equal_jax_for_every_kind_of_ys_cotangent(remat, loss, rng):
    d = _data(rng)
    want = _jax_grad(d, loss)
    for where in ("eager", "graph", "xla") if remat in (True, 7) else ("eager", "xla"):
        got = _tf_grad(d, remat, loss, where=where)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4 * max(1.0, np.abs(w).max()),
                                       err_msg=f"remat={remat} loss={loss} {where}")


@pytest.mark.parametrize("remat", [False, True, 7])
def test_reverse_scan_reads_its_carries_from_the_ys(remat, rng):
    d = _data(rng)
    want = _jax_grad(d, "sum", reverse=True)
    for where in ("eager", "xla"):
        for g, w in zip(_tf_grad(d, remat, "sum", reverse=True, where=where), want):
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4 * max(1.0, np.abs(w).max()))


def test_carry_partly_returned_as_y_and_run_time_length(rng):
    """An LSTM-shaped carry ``(h, c)`` whose y is ``h`` only; a length known at run time."""
    d = _data(rng)
    W, U, h0, xs = (tf.constant(d[k]) for k in ("W", "U", "h0", "xs"))

    def tf_step(carry, x):
        h, c = carry
        c = 0.5 * c + tf.tanh(h @ W + x @ U)
        h = tf.tanh(c)
        return (h, c), h

    @tf.function(input_signature=[tf.TensorSpec([None, B, I])], autograph=False)
    def grad(xs):
        with tf.GradientTape() as tape:
            tape.watch((W, h0))
            (h, c), ys = tfscan.scan(tf_step, (h0, h0 * 0), xs, remat=True)
            loss = tf.reduce_sum(ys) + tf.reduce_sum(c)
        return tape.gradient(loss, (W, h0))

    def jax_loss(W, h0):
        def step(carry, x):
            h, c = carry
            c = 0.5 * c + jnp.tanh(h @ W + x @ d["U"])
            h = jnp.tanh(c)
            return (h, c), h
        (h, c), ys = jax.lax.scan(step, (h0, h0 * 0), d["xs"])
        return jnp.sum(ys) + jnp.sum(c)
    want = jax.grad(jax_loss, argnums=(0, 1))(d["W"], d["h0"])
    for g, w in zip(grad(xs), want):
        np.testing.assert_allclose(g.numpy(), np.asarray(w), rtol=2e-4, atol=1e-4)


def _peak(fn) -> int:
    """Bytes TensorFlow's allocator held at most during ``fn()`` above what it held before."""
    fn()  # compile
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tf.config.experimental.reset_memory_stats("CPU:0")
    out = fn()
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
    del out
    return peak


def _stats_available() -> bool:
    try:
        x = tf.zeros([256, 256]) + 1.0  # a buffer of its own (scalars are not counted)
        return tf.config.experimental.get_memory_info("CPU:0").get("peak", 0) > 0 and x is not None
    except (ValueError, RuntimeError):
        return False


@pytest.mark.skipif(not _stats_available(), reason="TensorFlow's CPU allocator keeps no statistics here")
@pytest.mark.parametrize("remat", [False, True, "sqrt"])
def test_peak_memory_of_the_gradient_holds_the_ys_once(remat, rng):
    """Eager: the ys (held by the caller) and the ``[T, ...]`` cotangent TensorFlow's tape
    makes (``reduce_sum``'s gradient, or zeros for the ys of a loss on the final carry) are
    the only ys-sized tensors: no saved copy of the carries (they are the ys). Compiled
    whole (XLA), the ys and the broadcast vanish: one buffer (the carries) at most."""
    d = _data(rng)
    args = [tf.constant(d[k]) for k in ("W", "U", "h0", "xs")]

    def grad(loss, where):
        def run(W, U, h0, xs):
            with tf.GradientTape() as tape:
                tape.watch((W, U, h0))
                c, ys = tfscan.scan(lambda h, x: (tf.tanh(h @ W + x @ U),) * 2, h0, xs, remat=remat)
                value = LOSSES[loss][0](c, ys)
            return tape.gradient(value, (W, U, h0))
        fn = run if where == "eager" else tf.function(run, jit_compile=True, autograph=False)
        return lambda: fn(*args)

    # Before: 3 buffers eagerly (ys, saved carries, cotangent), 2 under XLA (the carries and
    # the broadcast); "sqrt" joined its tail segment with a copy of the ys.
    peaks = {(loss, where): _peak(grad(loss, where)) / BUFFER
             for loss, where in [("sum", "eager"), ("final", "eager"), ("sum", "xla")]}
    assert peaks["sum", "eager"] < 2.8, peaks  # buffers are rounded up to 1.28 (allocator bins)
    assert peaks["final", "eager"] < 2.8, peaks
    assert peaks["sum", "xla"] < 1.4, peaks  # before: 2 (saved carries, broadcast)
