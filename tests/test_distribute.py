"""Keras fit under tf.distribute.MirroredStrategy (two logical CPUs): every replica's
gradient reaches its own copy of the weights. Runs in a subprocess, since logical devices
must be configured before TensorFlow starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np, tfscan

    class ScanRNN(keras.layers.Layer):
        def build(self, shape):
            self.W = self.add_weight(shape=(4, 4))
            self.U = self.add_weight(shape=(shape[-1], 4))

        def call(self, x):
            h0 = tf.zeros([tf.shape(x)[0], 4])
            step = lambda h, xt: (tf.tanh(h @ self.W + xt @ self.U), None)
            return tfscan.scan(step, h0, tf.transpose(x, [1, 0, 2]))[0]

    rng = np.random.default_rng(0)
    X, Y = rng.random((32, 5, 3)).astype("float32"), rng.random((32, 1)).astype("float32")
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        model = keras.Sequential([keras.Input((None, 3)), ScanRNN(), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.1), "mse")
    before = [w.copy() for w in model.get_weights()[:2]]
    loss = model.fit(X, Y, epochs=3, batch_size=8, verbose=0).history["loss"]
    assert loss[-1] < loss[0], loss
    assert all(np.abs(a - b).max() > 0 for a, b in zip(before, model.get_weights()[:2]))
    print("OK", loss)
""")


def test_keras_fit_under_mirrored_strategy():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
