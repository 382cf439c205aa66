"""``python -m tfscan``: the three seed examples and one gradient, with compile and run times."""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfscan  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = fn()
    steady = time.perf_counter() - t0
    return out, first, steady


def _show(title: str, first: float, steady: float) -> None:
    print(f"\n== {title}  (first call incl. compile {first * 1e3:.0f} ms, next call {steady * 1e3:.2f} ms)")


def main() -> None:
    print(f"tfscan {tfscan.__version__} on TensorFlow {tf.__version__}")

    # 1. Cumulative sum.
    def cumsum_step(c, x):
        c = c + x
        return c, c

    xs = tf.constant([1.0, 2.0, 3.0, 4.0, 5.0])
    (carry, ys), first, steady = _timed(lambda: tfscan.scan(cumsum_step, 0.0, xs))
    _show("cumulative sum of [1..5]", first, steady)
    print("carry:", carry.numpy(), " ys:", ys.numpy())

    # 2. Elman RNN, weights closed over.
    rng = np.random.default_rng(0)
    W_hh = tf.constant(rng.normal(size=(5, 5)) * 0.5, tf.float32)
    W_xh = tf.constant(rng.normal(size=(3, 5)) * 0.5, tf.float32)
    b_h = tf.zeros([5])

    def rnn_step(h, x):
        h = tf.tanh(tf.linalg.matvec(W_hh, h, transpose_a=True)
                    + tf.linalg.matvec(W_xh, x, transpose_a=True) + b_h)
        return h, h

    xs = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    (h, hs), first, steady = _timed(lambda: tfscan.scan(rnn_step, tf.zeros([5]), xs))
    _show("Elman RNN, xs of shape (4, 3)", first, steady)
    print("final hidden", tuple(h.shape), np.round(h.numpy(), 4))
    print("hidden states", tuple(hs.shape))

    # 3. Powers of two without xs.
    (c, ys), first, steady = _timed(lambda: tfscan.scan(lambda c, _: (2 * c, c), 1, length=10))
    _show("powers of two, xs=None, length=10", first, steady)
    print("carry:", c.numpy(), " ys:", ys.numpy())

    # 4. A gradient: d/dW_hh of the sum of the RNN's hidden states.
    def grad():
        with tf.GradientTape() as tape:
            tape.watch(W_hh)
            _, hs = tfscan.scan(rnn_step, tf.zeros([5]), xs)
            loss = tf.reduce_sum(hs)
        return loss, tape.gradient(loss, W_hh)

    (loss, g), first, steady = _timed(grad)
    _show("gradient of sum(hidden states) w.r.t. W_hh", first, steady)
    print("loss:", round(float(loss), 5), " dloss/dW_hh shape:", tuple(g.shape),
          " |grad|:", round(float(tf.norm(g)), 5))


if __name__ == "__main__":
    main()
