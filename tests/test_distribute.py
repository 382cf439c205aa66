"""Keras fit under tf.distribute.MirroredStrategy (two logical CPUs): every replica's
gradient reaches its own copy of the weights. Runs in a subprocess, since logical devices
must be configured before TensorFlow starts."""

from __future__ import annotations

import json
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


SHARED_SCRIPT = textwrap.dedent("""
    import os
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import json, keras, numpy as np, tfscan.keras
    from tfscan import _tf
    from tfscan._scan import program

    launches, ops = [], []  # (program's function name, device) of every compiled call emitted; its op
    real = program._tf.launch_compiled
    def spy(concrete, args, *a, **k):
        outs = real(concrete, args, *a, **k)
        if outs:
            launches.append((outs[0].op.get_attr("function").name, outs[0].op.device))
            ops.append(outs[0].op)
        return outs
    program._tf.launch_compiled = spy

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(16, 6, 3)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    def make():
        keras.utils.set_random_seed(1)
        m = keras.Sequential([keras.Input((6, 3)), tfscan.keras.GRU(4), keras.layers.Dense(1)])
        m.compile(keras.optimizers.SGD(0.1), "mse")
        return m
    plain = make()
    plain.fit(X, Y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    launches.clear()
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        mirrored = make()
    mirrored.fit(X, Y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    err = max(float(np.abs(a - b).max()) for a, b in zip(plain.get_weights(), mirrored.get_weights()))
    chained = [(op.name, c.name) for op in ops if op.device for c in op.control_inputs if c.type == "XlaLaunch"]
    print(json.dumps({"launches": launches, "err": err, "chained": chained}))
""")


def test_replicas_share_one_traced_and_compiled_program():
    """Under MirroredStrategy on two logical CPUs the replicas run the same traced forward and
    backward programs, launched on one device (XLA caches compiled programs per device, so
    each is compiled once), and training gives the single-device weights. The replicas'
    launches are not chained one after the other (automatic control dependencies ordered
    the four: forward and backward of replica 0, then of replica 1), so they run side by
    side."""
    out = subprocess.run([sys.executable, "-c", SHARED_SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    in_replicas = [(n, d) for n, d in report["launches"] if d]  # not Keras' symbolic build (no device)
    names = [n for n, _ in in_replicas]
    devices = {tf_device.rsplit("/", 1)[-1] for _, tf_device in in_replicas}
    assert len(names) == 4 and len(set(names)) == 2, in_replicas  # 2 replicas x (forward, backward)
    assert devices == {"device:CPU:0"}, in_replicas
    assert report["err"] < 1e-5, report["err"]
    assert report["chained"] == [], report["chained"]
