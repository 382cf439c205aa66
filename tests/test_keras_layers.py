"""tfscan.keras layers give keras.layers.RNN's outputs and gradients, train, and save."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfscan  # noqa: E402
import tfscan.keras as tk  # noqa: E402

CELLS = [keras.layers.SimpleRNNCell, keras.layers.GRUCell, keras.layers.LSTMCell]
N_STATES = {keras.layers.SimpleRNNCell: 1, keras.layers.GRUCell: 1, keras.layers.LSTMCell: 2}


def _x(b=3, t=6, f=4, seed=0):
    return np.random.default_rng(seed).normal(size=(b, t, f)).astype("float32")


def _pair(make_cell, x, **kw):
    """keras.layers.RNN and tfscan.keras.Scan around equal cells with the same weights."""
    ref, ours = keras.layers.RNN(make_cell(), **kw), tk.Scan(make_cell(), **kw)
    ref(x), ours(x)
    ours.set_weights(ref.get_weights())
    return ref, ours


def _outputs_and_grads(layer, x, **call_kw):
    """The layer's outputs and the gradient of a scalar of them wrt x, weights, initial states."""
    x = tf.constant(x)
    init = [tf.constant(s) for s in call_kw.pop("initial_state", [])]
    with tf.GradientTape() as tape:
        tape.watch([x] + init)
        out = layer(x, initial_state=init or None, **call_kw)
        loss = sum(tf.reduce_sum(tf.sin(o) * (i + 1.0)) for i, o in enumerate(tf.nest.flatten(out)))
    grads = tape.gradient(loss, [x] + layer.trainable_weights + init)
    return tf.nest.flatten(out), grads


def _assert_close(a, b, rtol=1e-5, atol=1e-5):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


CONFIGS = [
    dict(),
    dict(return_sequences=True),
    dict(return_state=True, go_backwards=True),
    dict(return_sequences=True, return_state=True, go_backwards=True),
]


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_outputs_and_gradients_match_keras_rnn(cell):
    x = _x()
    for kw in CONFIGS:
        ref, ours = _pair(lambda: cell(5), x, **kw)
        out_r, g_r = _outputs_and_grads(ref, x)
        out_o, g_o = _outputs_and_grads(ours, x)
        _assert_close(out_o, out_r)
        _assert_close(g_o, g_r, rtol=1e-4)
        assert [o.shape for o in out_o] == [o.shape for o in out_r]


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_initial_state_and_mask_match_keras_rnn(cell):
    x = _x()
    rng = np.random.default_rng(1)
    init = [rng.normal(size=(3, 5)).astype("float32") for _ in range(N_STATES[cell])]
    mask = np.ones((3, 6), bool)
    mask[0, 4:] = False
    mask[1, :2] = False
    mask[2, 3] = False
    for kw in [dict(return_state=True), dict(return_sequences=True, go_backwards=True),
               dict(return_sequences=True, zero_output_for_mask=True)]:
        ref, ours = _pair(lambda: cell(5), x, **kw)
        for call_kw in [dict(initial_state=init), dict(mask=mask), dict(initial_state=init, mask=mask)]:
            out_r, g_r = _outputs_and_grads(ref, x, **dict(call_kw))
            out_o, g_o = _outputs_and_grads(ours, x, **dict(call_kw))
            _assert_close(out_o, out_r)
            _assert_close(g_o, g_r, rtol=1e-4)


@pytest.mark.parametrize("name", ["SimpleRNN", "GRU", "LSTM"])
def test_conveniences_match_keras_layers(name):
    x = _x()
    kw = dict(return_sequences=True, return_state=True)
    ref = getattr(keras.layers, name)(5, **kw)
    ours = getattr(tk, name)(5, **kw)
    ref(x), ours(x)
    assert [w.shape for w in ours.weights] == [w.shape for w in ref.weights]
    ours.set_weights(ref.get_weights())
    out_r, g_r = _outputs_and_grads(ref, x)
    out_o, g_o = _outputs_and_grads(ours, x)
    _assert_close(out_o, out_r)
    _assert_close(g_o, g_r, rtol=1e-4)
    clone = type(ours).from_config(ours.get_config())
    assert clone.units == 5 and clone.return_state and isinstance(clone.cell, type(ours.cell))


def test_dropout_masks_match_keras_and_are_fresh_each_call():
    x = _x(t=4)
    make = lambda: keras.layers.LSTMCell(5, dropout=0.4, recurrent_dropout=0.3, seed=7)  # noqa: E731
    ref, ours = _pair(make, x)
    out_r, g_r = _outputs_and_grads(ref, x, training=True)
    out_o, g_o = _outputs_and_grads(ours, x, training=True)
    _assert_close(out_o, out_r)
    _assert_close(g_o, g_r, rtol=1e-4)
    a, b = ours(x, training=True), ours(x, training=True)
    assert not np.allclose(a, b)  # a new mask per call, not one baked into the compiled step
    np.testing.assert_allclose(ours(x), ours(x))  # no dropout at inference


def test_stacked_cells_and_bidirectional():
    x = _x()
    make = lambda: [keras.layers.GRUCell(3), keras.layers.LSTMCell(2)]  # noqa: E731
    ref, ours = _pair(make, x, return_state=True)
    _assert_close(tf.nest.flatten(ours(x)), tf.nest.flatten(ref(x)))
    bi_ref = keras.layers.Bidirectional(keras.layers.GRU(3, return_sequences=True))
    bi = keras.layers.Bidirectional(tk.GRU(3, return_sequences=True))
    bi_ref(x), bi(x)
    bi.set_weights(bi_ref.get_weights())
    np.testing.assert_allclose(bi(x), bi_ref(x), rtol=1e-5, atol=1e-6)


def test_options_do_not_change_values():
    x = _x(t=8)
    ref, ours = _pair(lambda: keras.layers.GRUCell(4), x, return_sequences=True)
    want_out, want_g = _outputs_and_grads(ref, x)
    for kw in [dict(unroll=3), dict(unroll=True), dict(remat=True), dict(remat=2), dict(remat="sqrt")]:
        layer = tk.Scan(ours.cell, return_sequences=True, **kw)
        out, g = _outputs_and_grads(layer, x)
        _assert_close(out, want_out)
        _assert_close(g, want_g, rtol=1e-4)
    tm = tk.Scan(ours.cell, return_sequences=True, time_major=True)
    np.testing.assert_allclose(tm(np.transpose(x, [1, 0, 2])), np.transpose(want_out[0], [1, 0, 2]),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("remat", [False, 2])
def test_unknown_batch_and_time_in_a_tf_function(remat):
    x = _x(b=3, t=6, f=4)
    ref, ours = _pair(lambda: keras.layers.GRUCell(4), x, return_sequences=True)
    ours.remat = remat

    def value_and_grads(layer):
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.sin(layer(x)))
            return loss, tape.gradient(loss, [x] + layer.trainable_weights)
        return run

    shape = [None, None, 4] if remat is False else [None, 6, 4]  # remat=k needs a static length
    got = tf.function(value_and_grads(ours), input_signature=[tf.TensorSpec(shape)])(x)
    want = value_and_grads(ref)(tf.constant(x))
    _assert_close(tf.nest.flatten(got), tf.nest.flatten(want), rtol=1e-4)


def test_time_axis_none():
    layer = tk.LSTM(3, return_sequences=True)
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None, 2])])
    ref = keras.layers.LSTM(3, return_sequences=True)
    for t in (5, 2):
        x = _x(b=2, t=t, f=2)
        if not ref.built:
            ref(x), layer(x)
            layer.set_weights(ref.get_weights())
        np.testing.assert_allclose(fn(x), ref(x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer(x), ref(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["SimpleRNN", "GRU", "LSTM"])
def test_stateful_matches_keras_across_batches_and_resets(name, tmp_path):
    kw = dict(stateful=True, return_sequences=True, return_state=True)
    ref, ours = getattr(keras.layers, name)(4, **kw), getattr(tk, name)(4, **kw)
    x1, x2 = _x(b=3, t=5, f=2, seed=1), _x(b=3, t=5, f=2, seed=2)
    ref(x1), ours(x1)
    ours.set_weights(ref.get_weights())
    ref.reset_states(), ours.reset_states()
    first = tf.nest.flatten(ours(x1))
    _assert_close(first, tf.nest.flatten(ref(x1)))
    out_r, g_r = _outputs_and_grads(ref, x2)  # starts from the states x1 left
    out_o, g_o = _outputs_and_grads(ours, x2)
    _assert_close(out_o, out_r)
    _assert_close(g_o, g_r, rtol=1e-4)
    _assert_close([v.numpy() for v in ours.states], [v.numpy() for v in ref.states])
    ours.reset_states()
    assert all(not np.any(v.numpy()) for v in ours.states)
    _assert_close(tf.nest.flatten(ours(x1)), first)
    # In a compiled model: predict over consecutive batches carries the states too.
    inp = keras.Input((5, 2), batch_size=3)
    models = [keras.Model(inp, layer_cls(4, stateful=True)(inp)) for layer_cls in (getattr(tk, name),
                                                                                 getattr(keras.layers, name))]
    models[0].set_weights(models[1].get_weights())
    x = np.concatenate([x1, x2])
    _assert_close([models[0].predict(x, batch_size=3, verbose=0)], [models[1].predict(x, batch_size=3, verbose=0)])
    path = str(tmp_path / "s.keras")
    models[0].save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[1].stateful
    for m in (loaded, models[0]):
        m.layers[1].reset_states()
    _assert_close([loaded.predict(x, batch_size=3, verbose=0)], [models[0].predict(x, batch_size=3, verbose=0)])


@keras.saving.register_keras_serializable(package="tfscan_tests")
class ConstantsCell(keras.layers.Layer):
    """An Elman cell that adds a per-sequence bias given as ``constants``."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units, self.state_size, self.output_size = units, units, units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.recurrent = self.add_weight(shape=(self.units, self.units), name="recurrent")

    def call(self, inputs, states, constants=None):
        h = tf.tanh(inputs @ self.kernel + states[0] @ self.recurrent + constants[0] @ constants[1])
        return h, [h]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_constants_reach_the_cell_with_their_gradient(tmp_path):
    x = _x(b=3, t=5, f=2)
    c = [np.random.default_rng(3).normal(size=(3, 2)).astype("float32"),
         np.random.default_rng(4).normal(size=(2, 4)).astype("float32")]
    layer = tk.Scan(ConstantsCell(4), return_sequences=True, return_state=True, go_backwards=True)
    layer(x, constants=c)

    def run(run_layer):
        xt, ct = tf.constant(x), [tf.constant(v) for v in c]
        with tf.GradientTape() as tape:
            tape.watch([xt] + ct)
            out = run_layer(xt, ct)
            loss = sum(tf.reduce_sum(tf.sin(o) * (i + 1.0)) for i, o in enumerate(tf.nest.flatten(out)))
        return tf.nest.flatten(out), tape.gradient(loss, [xt] + ct + layer.trainable_weights)

    def python_loop(xt, ct):  # the oracle: the cell called once per step, last step first
        h, ys = tf.zeros((3, 4)), []
        for t in reversed(range(x.shape[1])):
            y, (h,) = layer.cell(xt[:, t], [h], constants=ct)
            ys.append(y)
        return tf.stack(ys, 1), h

    got, want = run(lambda xt, ct: layer(xt, constants=ct)), run(python_loop)
    _assert_close(got[0], want[0])
    _assert_close(got[1], want[1], rtol=1e-4)
    # As a Keras functional input, saved and loaded.
    inp, k0, k1 = keras.Input((None, 2)), keras.Input((2,)), keras.Input((4,), batch_size=2)
    model = keras.Model([inp, k0, k1], tk.Scan(ConstantsCell(4))(inp, constants=[k0, k1]))
    path = str(tmp_path / "c.keras")
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)([x, c[0], c[1]]), model([x, c[0], c[1]]),
                               rtol=1e-6)


def _models(layer_cls, ref_cls, masked=False):
    keras.utils.set_random_seed(0)

    def build(cls):
        if masked:
            inp = keras.Input((None,), dtype="int32")
            h = keras.layers.Embedding(7, 3, mask_zero=True)(inp)
        else:
            inp = h = keras.Input((None, 3))
        h = cls(4, return_sequences=True)(h)
        h = cls(4)(h)
        return keras.Model(inp, keras.layers.Dense(1)(h))

    model, ref = build(layer_cls), build(ref_cls)
    ref.set_weights(model.get_weights())
    return model, ref


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_matches_keras(jit_compile):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 7, size=(20, 5)).astype("int32")
    tokens[:4, 3:] = 0  # padded: exercises the mask
    X = [rng.normal(size=(20, 5, 3)).astype("float32"), tokens]  # 20 = 8 + 8 + 4: a partial batch
    Y = rng.normal(size=(20, 1)).astype("float32")
    for masked, (cls, ref_cls) in [(False, (tk.LSTM, keras.layers.LSTM)), (True, (tk.GRU, keras.layers.GRU))]:
        model, ref = _models(cls, ref_cls, masked)
        for m in (model, ref):
            m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit_compile)
        x = X[masked]
        hist = model.fit(x, Y, epochs=2, batch_size=8, verbose=0, shuffle=False)
        ref.fit(x, Y, epochs=2, batch_size=8, verbose=0, shuffle=False)
        assert hist.history["loss"][1] < hist.history["loss"][0]
        _assert_close(model.get_weights(), ref.get_weights(), rtol=1e-4)


def test_save_and_load_round_trip(tmp_path):
    x = _x(f=3)
    inp = keras.Input((None, 3))
    h = tk.Scan(keras.layers.GRUCell(4), return_sequences=True, go_backwards=True, remat=True)(inp)
    h = tk.LSTM(4, unroll=2)(h)
    model = keras.Model(inp, tk.SimpleRNN(2)(h[:, None, :]))
    path = str(tmp_path / "x.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    assert {tk.Scan, tk.LSTM, tk.SimpleRNN} <= {type(layer) for layer in loaded.layers}
    scan = next(layer for layer in loaded.layers if type(layer) is tk.Scan)
    assert scan.go_backwards and scan.remat is True and isinstance(scan.cell, keras.layers.GRUCell)
    assert next(layer for layer in loaded.layers if type(layer) is tk.LSTM).unroll == 2


def test_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="Keras RNN cell"):
        tk.Scan(lambda x, s: (x, s))
    with pytest.raises(ValueError, match="state_size"):
        tk.Scan(keras.layers.Dense(2))
    with pytest.raises(TypeError, match="GRUCell.call takes no `constants`"):
        tk.Scan(keras.layers.GRUCell(2))(_x(), constants=[tf.ones(2)])
    layer = tk.GRU(2, stateful=True)
    layer(_x(b=3))
    with pytest.raises(ValueError, match="batch size"):
        layer(_x(b=2))
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="TensorFlow backend"):
        tk.GRU(2)(_x())


def _fresh(code: str, **env) -> str:
    """Run ``code`` in a new Python process (this worktree's tfscan); returns its stdout."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(tfscan.__file__))), **env}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_import_tfscan_registers_the_layers_for_load_model(tmp_path):
    inp = keras.Input((None, 3))
    h = tk.Scan([keras.layers.GRUCell(4), keras.layers.SimpleRNNCell(3)], return_sequences=True)(inp)
    model = keras.Model(inp, tk.LSTM(2)(tk.GRU(3, return_sequences=True, go_backwards=True)(h)))
    path = str(tmp_path / "m.keras")
    model.save(path)
    np.save(tmp_path / "x.npy", _x(f=3))
    np.save(tmp_path / "want.npy", model(_x(f=3)).numpy())
    check = (f"x, want = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'want.npy')!r}); "
             f"np.testing.assert_array_equal(keras.models.load_model({path!r})(x), want); "
             "assert tfscan.keras.LSTM is sys.modules['tfscan.keras'].LSTM")
    _fresh("import sys, numpy as np, keras, tfscan; " + check)
    # Keras not loaded by TensorFlow (legacy tf.keras): registered on the first `import keras`.
    _fresh("import sys, numpy as np, tfscan; assert 'keras' not in sys.modules; "
           "import keras; " + check, TF_USE_LEGACY_KERAS="1")
    assert tfscan.keras is tk


def _rounding_excess(got, want, half: str) -> float:
    """The largest distance of ``got`` (16-bit) from float32 ``want``, in units of one
    rounding of ``want`` to ``half`` (to nearest: 2**-8 relative for bfloat16, 2**-11 for float16)."""
    eps = 2.0 ** (-8 if half == "bfloat16" else -11)
    got, want = np.asarray(tf.cast(got, "float32")), np.asarray(want)
    return float(np.max(np.abs(got - want) / (eps * np.abs(want) + 1e-6)))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_loops_in_float32_on_cpu(policy):
    """Under a mixed 16-bit policy on CPU the loop computes in float32 (XLA:CPU has no
    16-bit arithmetic; see ``loop_dtype``): outputs are the float32 layer's rounded once to
    the policy's dtype, gradients reach the float32 weights; ``loop_dtype`` opts back into
    per-op 16-bit arithmetic, which rounds at every step."""
    half = policy.split("_")[1]
    x = _x(b=4, t=40, f=5)
    ref = tk.LSTM(6, return_sequences=True, return_state=True)
    ours = tk.LSTM(6, return_sequences=True, return_state=True, dtype=policy)
    ref(x), ours(x)
    ours.set_weights(ref.get_weights())
    x16 = tf.cast(tf.cast(x, half), "float32")  # Keras casts a mixed layer's inputs to 16 bits
    want, got = ref(x16), ours(x)
    assert [o.dtype.name for o in got] == [half] * 3
    for g, w in zip(got, want):
        assert _rounding_excess(g, w, half) <= 1.01  # one rounding (plus float32 noise)
    per_op = tk.LSTM(6, return_sequences=True, dtype=policy, loop_dtype=half)
    per_op(x)
    per_op.set_weights(ref.get_weights())
    assert _rounding_excess(per_op(x), want[0], half) > 1.5  # rounded at every op of every step
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(ours(x)[0], "float32") ** 2)
    grads = tape.gradient(loss, ours.trainable_weights)
    with tf.GradientTape() as tape:
        ref_loss = tf.reduce_sum(ref(x16)[0] ** 2)
    ref_grads = tape.gradient(ref_loss, ref.trainable_weights)
    assert all(g.dtype == tf.float32 for g in grads)
    _assert_close(grads, ref_grads, rtol=2e-2, atol=2e-2)
    assert tk.LSTM.from_config(per_op.get_config()).loop_dtype == half
    with pytest.raises(ValueError, match="loop_dtype must be None"):
        tk.GRU(3, loop_dtype="int32")


def test_mixed_precision_stacked_dropout_cells_train():
    """Stacked cells with dropout under mixed_bfloat16: Keras calls each stacked cell once
    outside the loop to draw their dropout masks; that call computes in the loop's dtype too."""
    x = _x(b=4, t=5, f=3)
    layer = tk.Scan([keras.layers.LSTMCell(3, dropout=0.3, recurrent_dropout=0.2, dtype="mixed_bfloat16"),
                     keras.layers.GRUCell(2, dropout=0.1, dtype="mixed_bfloat16")],
                    return_sequences=True, dtype="mixed_bfloat16")
    with tf.GradientTape() as tape:
        out = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(out, "float32") ** 2)
    grads = tape.gradient(loss, layer.trainable_weights)
    assert out.dtype == tf.bfloat16 and tuple(out.shape) == (4, 5, 2)
    assert all(g is not None and g.dtype == tf.float32 for g in grads)
    assert [c.compute_dtype for c in layer.cell.cells] == ["bfloat16", "bfloat16"]  # policies restored


# -- porting from Keras' own layers: attributes, arguments, weights files, errors ---------------

@pytest.mark.parametrize("name", ["SimpleRNN", "GRU", "LSTM"])
def test_the_layers_expose_keras_hyper_parameters(name):
    """``layer.dropout``, ``layer.activation``, ... read as on Keras' layer (were AttributeErrors)."""
    kw = dict(dropout=0.25, recurrent_dropout=0.125, use_bias=False)
    ref, ours = getattr(keras.layers, name)(3, **kw), getattr(tk, name)(3, **kw)
    attrs = ["units", "activation", "use_bias", "dropout", "recurrent_dropout", "kernel_initializer",
             "recurrent_initializer", "bias_initializer", "kernel_regularizer", "kernel_constraint",
             "recurrent_activation", "reset_after", "unit_forget_bias", "use_cudnn"]
    for a in [a for a in attrs if hasattr(ref, a)]:
        want, got = getattr(ref, a), getattr(ours, a)
        if isinstance(want, (int, float, bool, str)) or want is None:
            assert got == want, a
        else:
            assert type(got) is type(want), a


@pytest.mark.parametrize("unroll", [None, np.True_, np.False_])
def test_unroll_takes_keras_values(unroll):
    x = _x()
    ref, ours = keras.layers.GRU(3, unroll=bool(unroll)), tk.GRU(3, unroll=unroll)
    ref(x), ours(x)
    ours.set_weights(ref.get_weights())
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-6)
    assert ours.unroll == (True if unroll else 1)


def test_a_time_major_layer_reads_a_time_major_mask_and_names_a_wrong_one():
    x = _x(b=3, t=5)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)  # [batch, time]
    ref = keras.layers.GRU(4, return_sequences=True)
    ref(x)
    ours = tk.GRU(4, return_sequences=True, time_major=True)
    ours(np.transpose(x, [1, 0, 2]))
    ours.set_weights(ref.get_weights())
    got = ours(np.transpose(x, [1, 0, 2]), mask=mask.T)
    np.testing.assert_allclose(np.transpose(got, [1, 0, 2]), ref(x, mask=mask).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"mask must be \[time, batch\] .*\(5, 3\).*got shape \(3, 5\)"):
        ours(np.transpose(x, [1, 0, 2]), mask=mask)


def test_a_weights_file_moves_between_keras_rnn_and_tfscan_rnn(tmp_path):
    """Keras names a layer's entry in a .weights.h5 file after its class: ``tfscan.keras.RNN``
    is ``Scan`` under Keras' name, so the file of a ``keras.layers.RNN(cell)`` model loads."""
    x = _x()
    inp = keras.Input((None, 4))
    ref = keras.Model(inp, keras.layers.RNN(keras.layers.LSTMCell(3))(inp))
    ours = keras.Model(inp, tk.RNN(keras.layers.LSTMCell(3))(inp))
    for a, b in [(ref, ours), (ours, ref)]:
        path = str(tmp_path / f"{a.layers[-1].__class__.__module__.split('.')[0]}.weights.h5")
        a.save_weights(path)
        b.load_weights(path)
        np.testing.assert_allclose(b(x).numpy(), a(x).numpy(), rtol=1e-6, atol=1e-7)
    assert isinstance(ours.layers[-1], tk.Scan)


def test_errors_in_a_keras_cell_keep_their_cause_and_initial_states_are_checked():
    x = _x(b=3, f=4)
    layer = tk.LSTM(3)
    layer(x)
    with pytest.raises(ValueError, match=r"Dimensions must be equal, but are 7 and 4.*\[3,7\], \[4,12\]"):
        layer(_x(b=3, f=7))  # before: only Keras' header line ("Exception encountered when calling")
    with pytest.raises(ValueError, match=r"initial_state\[0\] has shape \(2, 4\).*\[batch, 4\] = \(3, 4\)"):
        tk.GRU(4)(x, initial_state=[np.zeros((2, 4), "float32")])
    with pytest.raises(ValueError, match="expected ndim=3, found ndim=4"):
        tk.LSTM(3)(np.zeros((3, 5, 4, 2), "float32"))


class NarrowOutputCell(keras.layers.Layer):
    """A cell whose output (2 wide) is narrower than its state (4), with no output_size."""
    state_size = 4

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 4))

    def call(self, x, states):
        h = tf.tanh(tf.matmul(x, self.kernel) + states[0])
        return h[:, :2], [h]


def test_a_cell_output_unlike_its_state_asks_for_output_size():
    with pytest.raises(ValueError, match=r"output has shape \(3, 2\).*Give the cell an output_size"):
        tk.Scan(NarrowOutputCell())(_x())
    cell = NarrowOutputCell()
    cell.output_size = 2
    assert tuple(tk.Scan(cell)(_x()).shape) == (3, 2)


def test_predict_with_a_ragged_last_batch_does_not_warn_about_gradients():
    """An unknown batch (Keras' relaxed predict function for the last, smaller batch) makes the
    step's VJP recompute; inference computes no gradient, so it says nothing (it warned)."""
    import warnings
    from tfscan._scan.residuals import RecomputeWarning
    inp = keras.Input((5, 4))
    model = keras.Model(inp, tk.LSTM(3)(inp))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecomputeWarning)
        out = model.predict(_x(b=10, t=5), batch_size=4, verbose=0)
    assert out.shape == (10, 3)
