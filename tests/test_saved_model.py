"""A SavedModel of a scan serves any length and carries its gradient.

The gradient is checked where it matters: loaded in a fresh process that cannot import
tfscan, w.r.t. the input and the loaded variables, and by fine-tuning the loaded object.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf

import tfscan

_LR, _STEPS = 0.1, 3


class Encoder(tf.Module):
    def __init__(self):
        super().__init__()
        self.W = tf.Variable(tf.random.stateless_normal([3, 3], seed=[1, 2]) * 0.5)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def __call__(self, xs):
        h0 = tf.zeros([tf.shape(xs)[1], 3])
        h, _ = tfscan.scan(lambda h, x: (tf.tanh(h @ self.W + x), h), h0, xs)
        return h


class Nested(Encoder):
    """Two scans at the top (sharing one step) and one inside another's step."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def __call__(self, xs):
        h0 = tf.zeros([tf.shape(xs)[1], 3])
        step = lambda h, x: (tf.tanh(h @ self.W + x), h)  # noqa: E731
        outer = lambda c, x: (tfscan.scan(step, c, tf.stack([x, -x]))[0],) * 2  # noqa: E731
        h, _ = tfscan.scan(outer, h0, xs)
        return h * tfscan.scan(step, h0, 0.5 * xs)[0] + tfscan.scan(step, h0, xs)[0]


class Branchy(Encoder):
    """A cond and a switch whose branches read the variable (XlaLaunch ops in the graph)."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def __call__(self, xs):
        step = lambda v: tf.tanh(v @ self.W)  # noqa: E731
        y = tfscan.cond(tf.reduce_sum(xs) > -1e6, step, lambda v: -v, xs)
        return y + tfscan.switch(1, [lambda v: v, step, lambda v: v * 2.0], 0.5 * xs)


def _loss(y):
    return tf.reduce_sum(tf.sin(y) * tf.range(1.0, 1.0 + tf.cast(tf.size(y), y.dtype))[: tf.shape(y)[-1]])


def _grads_and_fine_tune(fn, variables, x):
    """Gradients w.r.t. x and the variables, then the losses of a few SGD steps."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = _loss(fn(x))
    grads = tape.gradient(loss, [x] + list(variables))
    losses = []
    for _ in range(_STEPS):
        with tf.GradientTape() as tape:
            loss = _loss(fn(x))
        for v, g in zip(variables, tape.gradient(loss, variables)):
            v.assign_sub(_LR * g)
        losses.append(float(loss))
    return grads, losses


# Run in the fresh process: the same computation on the loaded object (tfscan blocked).
_FRESH = textwrap.dedent('''
    import sys
    sys.modules["tfscan"] = None  # the loaded model must not need tfscan
    import numpy as np, tensorflow as tf
    _LR, _STEPS = {lr}, {steps}
    {loss}
    {fine_tune}
    loaded = tf.saved_model.load({path!r})
    {setup}
    x = np.load({path!r} + "/x.npy")
    grads, losses = _grads_and_fine_tune(fn, variables, x)
    assert all(g is not None for g in grads), grads
    np.savez({path!r} + "/got.npz", *[g.numpy() for g in grads], losses=np.array(losses))
''')


def _in_fresh_process(path: str, x: np.ndarray, setup: str) -> tuple[list, np.ndarray]:
    import inspect
    np.save(path + "/x.npy", x)
    code = _FRESH.format(lr=_LR, steps=_STEPS, path=path, setup=setup,
                         loss=textwrap.indent(inspect.getsource(_loss), "    ").strip(),
                         fine_tune=textwrap.indent(inspect.getsource(_grads_and_fine_tune), "    ").strip())
    code = textwrap.dedent(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    got = np.load(path + "/got.npz")
    return [got[f"arr_{i}"] for i in range(len(got.files) - 1)], got["losses"]


def _assert_close(got, want, rtol=1e-5, atol=1e-6):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


def test_save_load_and_serve_new_lengths(tmp_path):
    module = Encoder()
    xs = tf.random.stateless_normal([5, 2, 3], seed=[3, 4])
    want = module(xs).numpy()
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_allclose(loaded(xs).numpy(), want, rtol=1e-6)
    longer = tf.random.stateless_normal([9, 4, 3], seed=[5, 6])
    np.testing.assert_allclose(loaded(longer).numpy(), module(longer).numpy(), rtol=1e-6)


def test_loaded_module_has_the_gradient_and_fine_tunes(tmp_path):
    _saved_module_fine_tunes(Nested(), str(tmp_path), np.random.default_rng(0).normal(size=(5, 2, 3)).astype("float32"))


def _saved_module_fine_tunes(module, path: str, x) -> None:
    """``module`` (a variable ``W``) saved, loaded in a fresh process without tfscan: the same
    gradients w.r.t. its input and ``W``, and the same fine-tuning losses, as the original."""
    tf.saved_model.save(module, path)
    got, got_losses = _in_fresh_process(path, x, "fn, variables = loaded, [loaded.W]")
    want, want_losses = _grads_and_fine_tune(module, [module.W], x)
    _assert_close(got, want)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    assert got_losses[-1] < got_losses[0]


def test_loaded_keras_lstm_has_the_gradient_and_fine_tunes(tmp_path):
    import keras

    import tfscan.keras as tk

    def model(layer):
        inp = keras.Input((None, 3))
        return keras.Model(inp, keras.layers.Dense(2)(layer(inp)))

    path = str(tmp_path)
    ours, ref = model(tk.LSTM(4, return_sequences=True)), model(keras.layers.LSTM(4, return_sequences=True))
    ref.set_weights(ours.get_weights())
    x = np.random.default_rng(1).normal(size=(2, 5, 3)).astype("float32")
    tf.saved_model.save(ours, path)
    got, got_losses = _in_fresh_process(
        path, x, 'sig = loaded.signatures["serving_default"]; variables = list(sig.trainable_variables); '
                 'fn = lambda x: list(sig(inputs=x).values())[0]')
    want, want_losses = _grads_and_fine_tune(ours, ours.trainable_variables, x)
    ref_grads, ref_losses = _grads_and_fine_tune(ref, ref.trainable_variables, x)
    _assert_close(got, want, rtol=1e-5)
    _assert_close(got, ref_grads, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-4)
    assert got_losses[-1] < got_losses[0]


def test_loaded_module_with_conditionals_has_their_gradient_and_fine_tunes(tmp_path):
    """cond/switch in a graph are XlaLaunch ops whose gradient is tfscan's own: the
    SavedModel saves it (registered per call), so the loaded model, without tfscan, is
    differentiated w.r.t. its input and variables and fine-tunes as the original does."""
    module = Branchy()
    graph = module.__call__.get_concrete_function().graph
    assert [op.type for op in graph.get_operations()].count("XlaLaunch") == 2
    _saved_module_fine_tunes(module, str(tmp_path), np.random.default_rng(1).normal(size=(4, 2, 3)).astype("float32"))
