"""A Keras 3 model whose layer runs tfscan.scan trains with fit, with and without XLA."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfscan  # noqa: E402


class ScanRNN(keras.layers.Layer):
    def __init__(self, units, use_tfscan=True, **kw):
        super().__init__(**kw)
        self.units, self.use_tfscan = units, use_tfscan

    def build(self, input_shape):
        self.W = self.add_weight(shape=(self.units, self.units), initializer="orthogonal")
        self.U = self.add_weight(shape=(input_shape[-1], self.units))
        self.b = self.add_weight(shape=(self.units,), initializer="zeros")

    def step(self, h, x_t):
        h = tf.tanh(h @ self.W + x_t @ self.U + self.b)
        return h, h

    def call(self, x):
        h0 = tf.zeros([tf.shape(x)[0], self.units])
        if self.use_tfscan:
            return tfscan.scan(self.step, h0, tf.transpose(x, [1, 0, 2]))[0]
        h = h0
        for t in range(x.shape[1]):  # reference: the loop written out
            h, _ = self.step(h, x[:, t])
        return h


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_gradients_match_an_unrolled_reference(jit_compile):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(32, 5, 3)).astype("float32")
    Y = rng.normal(size=(32, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 3)), ScanRNN(4), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=jit_compile)
    ref = keras.Sequential([keras.Input((5, 3)), ScanRNN(4, use_tfscan=False), keras.layers.Dense(1)])
    ref.set_weights(model.get_weights())
    ref.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(X, Y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    ref.fit(X, Y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    assert history.history["loss"][1] < history.history["loss"][0]
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
