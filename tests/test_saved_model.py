"""A tf.Module using tfscan.scan saves as a SavedModel and serves any length after loading."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import tfscan


class Encoder(tf.Module):
    def __init__(self):
        super().__init__()
        self.W = tf.Variable(tf.random.stateless_normal([3, 3], seed=[1, 2]) * 0.5)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def __call__(self, xs):
        h0 = tf.zeros([tf.shape(xs)[1], 3])
        h, _ = tfscan.scan(lambda h, x: (tf.tanh(h @ self.W + x), h), h0, xs)
        return h


def test_save_load_and_serve_new_lengths(tmp_path):
    module = Encoder()
    xs = tf.random.stateless_normal([5, 2, 3], seed=[3, 4])
    want = module(xs).numpy()
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_allclose(loaded(xs).numpy(), want, rtol=1e-6)
    longer = tf.random.stateless_normal([9, 4, 3], seed=[5, 6])
    np.testing.assert_allclose(loaded(longer).numpy(), module(longer).numpy(), rtol=1e-6)
