"""A plain Keras layer whose ``call`` runs an Elman RNN with :func:`tfscan.scan`.

It is what a user writes without ``tfscan.keras``: weights made in ``build``, a step
function closing over them, and ``tfscan.scan`` over the time-major sequence. It is
registered as Keras-serializable, so ``.keras`` files of models using it load after
``import scan_rnn``.

>>> import numpy as np
>>> tuple(ScanRNN(4)(np.ones((2, 5, 3), "float32")).shape)
(2, 4)
"""

from __future__ import annotations

import keras
import tensorflow as tf

import tfscan


@keras.saving.register_keras_serializable(package="tfscan_examples")
class ScanRNN(keras.layers.Layer):
    """``h_t = tanh(h_{t-1} W + x_t U + b)`` over ``[batch, time, features]``; returns the last ``h``."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.W = self.add_weight(shape=(self.units, self.units), initializer="orthogonal", name="W")
        self.U = self.add_weight(shape=(input_shape[-1], self.units), name="U")
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="b")

    def call(self, x):
        def step(h, x_t):
            h = tf.tanh(h @ self.W + x_t @ self.U + self.b)
            return h, None

        h0 = tf.zeros([tf.shape(x)[0], self.units], x.dtype)
        return tfscan.scan(step, h0, tf.transpose(x, [1, 0, 2]))[0]

    def get_config(self):
        return {**super().get_config(), "units": self.units}
