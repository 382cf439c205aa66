"""``tfscan/_tf/`` is the one door to TensorFlow internals: nothing else reaches past the
public API, and every entry of the door still works on the TensorFlow installed.

Run against the oldest and the newest TensorFlow the package claims by
``.ci/tf-versions`` (a TensorFlow upgrade that moves an internal fails here first).
"""

import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from tfscan import _tf

PACKAGE = pathlib.Path(tfscan.__file__).parent
# Private TensorFlow/Keras names tfscan uses (all of them, in tfscan/_tf/ only).
PRIVATE = ["_call_flat", "_omit_frequent_tracing_warning", "_get_function", "_gradient_function",
           "_pfor_converter_registry", "_convert_function_call", "_convert_helper", "_stack",
           "_dropout_mask", "_recurrent_dropout_mask", "_call_has_training_arg",
           "_maybe_config_dropout_masks", "_maybe_reset_dropout_masks", "capture", "_watched_variables",
           "_captured_inputs", "_add_outputs", "_set_func_attr", "_set_type_list_attr"]
# An attribute access (``x._name``) or a name given as a string (``getattr(x, "_name")``).
PRIVATE_USE = re.compile(r"""(?:\.|["'])(%s)\b""" % "|".join(PRIVATE))


def _sources():
    return [p for p in PACKAGE.rglob("*.py") if (PACKAGE / "_tf") not in p.parents]


def test_no_module_but_the_adapter_imports_tensorflow_internals():
    internal = re.compile(r"^\s*(from|import)\s+(tensorflow\.(python|compiler|core)|keras\.src)", re.M)
    offenders = [f"{p.relative_to(PACKAGE)}: {m.group(0).strip()}"
                 for p in _sources() for m in internal.finditer(p.read_text())]
    assert not offenders, "TensorFlow internals outside tfscan/_tf/:\n" + "\n".join(offenders)


def test_no_module_but_the_adapter_touches_private_tensorflow_attributes():
    offenders = [f"{p.relative_to(PACKAGE)}: {m.group(0)}" for p in _sources()
                 for m in PRIVATE_USE.finditer(p.read_text())]
    assert not offenders, "private TensorFlow/Keras attributes outside tfscan/_tf/:\n" + "\n".join(offenders)


def test_call_concrete_feeds_new_captures():
    a = tf.constant(2.0)
    fn = tf.function(lambda x: x * a).get_concrete_function(tf.TensorSpec([], tf.float32))
    assert _tf.call_concrete(fn, [tf.constant(3.0)])[0].numpy() == 6.0
    assert _tf.call_concrete(fn, [tf.constant(3.0)], [tf.constant(5.0)])[0].numpy() == 15.0
    assert _tf.quiet_retracing(tf.function(lambda: 1)) is not None
    assert [c is a for c in _tf.fixed_captures(fn)] == [True]


def test_launch_compiled_emits_one_xla_launch_op_or_nothing():
    v = tf.Variable([1.0, 2.0])
    held = tf.function(lambda x, n: (x * v + tf.cast(n, tf.float32), n), jit_compile=True)
    concrete = held.get_concrete_function(tf.TensorSpec([2]), tf.TensorSpec([], tf.int32))
    assert concrete.captured_inputs[-1].dtype == tf.resource  # the variable goes last, as XlaLaunch reads it

    @tf.function
    def outer(x, n):
        launched = _tf.launch_compiled(concrete, [x, n], not_constant=[1])
        assert [op.type for op in tf.compat.v1.get_default_graph().get_operations()].count("XlaLaunch") == 1
        assert launched[0].shape == [2] and launched[1].dtype == tf.int32
        assert _tf.launch_compiled(concrete, [x, n]) is None  # n might be a compile-time constant
        with tf.GradientTape() as tape:
            tape.watch(x)
            assert _tf.launch_compiled(concrete, [x, n], not_constant=[1]) is None  # the tape could record it
        return launched

    out = outer(tf.constant([3.0, 4.0]), tf.constant(5))
    np.testing.assert_allclose(out[0].numpy(), [8.0, 13.0])
    assert out[1].numpy() == 5
    assert _tf.launch_compiled(concrete, [tf.constant([3.0, 4.0]), tf.constant(5)], not_constant=[1]) is None


def test_relaunch_adds_the_outputs_of_a_program_with_the_same_inputs():
    quiet = tf.function(lambda x: x * 2.0, jit_compile=True).get_concrete_function(tf.TensorSpec([2]))
    saving = tf.function(lambda x: (x * 2.0, x * 3.0), jit_compile=True).get_concrete_function(tf.TensorSpec([2]))
    other = tf.function(lambda x: (x * 2.0, x), jit_compile=True).get_concrete_function(tf.TensorSpec([3]))

    @tf.function
    def outer(x):
        (y,) = _tf.launch_compiled(quiet, [x])
        assert _tf.relaunch(y.op, other, quiet) is None  # other inputs: the op is left as it was
        assert len(y.op.outputs) == 1
        (extra,) = _tf.relaunch(y.op, saving, quiet)
        assert extra.op is y.op and extra.shape == [2]
        return y, extra

    y, extra = outer(tf.constant([1.0, 2.0]))
    np.testing.assert_allclose(y.numpy(), [2.0, 4.0])
    np.testing.assert_allclose(extra.numpy(), [3.0, 6.0])


def test_record_sees_tapes_and_accumulators():
    x = tf.constant(2.0)
    assert not _tf.record.could_possibly_record()
    with tf.GradientTape() as tape:
        tape.watch(x)
        assert _tf.record.could_possibly_record() and _tf.record.should_record_backprop([x])
        with _tf.record.stop_recording():
            assert not _tf.record.could_possibly_record()
        y = tf.identity(x)
        _tf.record.record_operation("Scale", [y], [x], lambda d: [3.0 * d])
    assert tape.gradient(y, x).numpy() == 3.0
    with tf.autodiff.ForwardAccumulator([x], [tf.constant(1.0)]) as acc:
        assert _tf.record.tangent_indices([tf.constant(0.0), x]) == {1}
        assert _tf.record.tangent_indices([1.0, "a", x]) == {2}  # only tensors have tangents
        packed = _tf.record.pack_tangents([tf.constant(0.0), x])
        assert [list(e) for e in packed.indices] == [[(1, 2)]] and packed.tangents[0].numpy() == 1.0
        with _tf.record.stop_recording():
            z = tf.identity(x)
        _tf.record.record_operation_forwardprop_only("Scale", [z], [x], lambda d: [5.0 * d])
        assert acc.jvp(z).numpy() == 5.0
        with _tf.record.forwardprop_state():  # an accumulator made inside still records
            with tf.autodiff.ForwardAccumulator([x], [tf.constant(2.0)]) as inner:
                assert inner.jvp(x * 3.0).numpy() == 6.0
    assert _tf.record.tangent_indices([x]) == set() and not _tf.record.pack_tangents([x]).indices

    seen = {}

    @tf.function
    def trace():
        seen["graph"] = _tf.default_graph()
        seen["captured"] = _tf.record.silent_capture(seen["graph"], x)
        return seen["captured"] + 1.0

    assert trace().numpy() == 3.0 and seen["captured"].graph is seen["graph"]


def test_graph_entries():
    seen = {}

    @tf.function(jit_compile=True)
    def compiled(x):
        seen["xla"] = _tf.in_xla_context()
        seen["func_graph"] = _tf.is_func_graph(_tf.default_graph())
        return x + 1.0

    @tf.function
    def plain(x):
        seen["plain_xla"] = _tf.in_xla_context()
        return x + 1.0

    compiled(tf.constant(1.0))
    plain(tf.constant(1.0))
    assert seen == {"xla": True, "func_graph": True, "plain_xla": False}
    assert not _tf.is_func_graph(tf.Graph())

    outer = tf.constant(1.0)

    @tf.function
    def loop(n):
        graph = _tf.default_graph()
        assert _tf.in_graph(graph, outer) is not outer  # captured
        out = tf.while_loop(lambda i: i < n, lambda i: i + 1, [tf.constant(0)])
        op = [o for o in graph.get_operations() if o.type in ("While", "StatelessWhile")][0]
        body = _tf.graph_function(graph, op.get_attr("body").name)
        assert body is not None and body.graph is not None
        assert _tf.function_graph(graph, op.get_attr("body").name) is body.graph
        rebuilt = _tf.function_graph(tf.Graph(), "no_such_function")
        assert rebuilt is None
        return out

    assert int(loop(tf.constant(3))[0]) == 3


def test_op_gradient_functions_round_trip():
    inner = tf.function(lambda x: tf.sin(x))

    @tf.function
    def outer(x):
        y = inner(x)
        graph = _tf.default_graph()
        fns = _tf.op_gradient_functions(graph)
        assert fns, "a call to a tf.function carries its gradient function on the op"
        op = graph.get_operation_by_name(next(iter(fns)))
        _tf.set_op_gradient_function(op, fns[op.name])
        return y

    outer(tf.constant(0.5))


def test_autograph_scope_and_variable_access():
    seen = {}

    @tf.function  # AutoGraph on: the lambda closes over a FunctionScope
    def f(x):
        g = lambda v: v + x  # noqa: E731
        seen["scopes"] = [c.cell_contents for c in (g.__closure__ or ()) if _tf.is_autograph_scope(c.cell_contents)]
        return g(x)

    f(tf.constant(1.0))
    assert not _tf.is_autograph_scope(object())
    v = tf.Variable(1.0)
    with tf.GradientTape() as tape:
        _tf.mark_variable_accessed(v)
    assert [w.ref() for w in tape.watched_variables()] == [v.ref()]


def test_pfor_entries():
    calls = []
    original = _tf.pfor.converter("Sin")
    assert original is not None and _tf.pfor.converter("NoSuchOp") is None

    def sin_rule(pfor_input):
        calls.append(1)
        return original(pfor_input)

    _tf.pfor.set_converter("Sin", sin_rule)
    try:
        out = tf.vectorized_map(tf.sin, tf.constant([0.0, 1.0]))
    finally:
        _tf.pfor.set_converter("Sin", original)
    np.testing.assert_allclose(out.numpy(), np.sin([0.0, 1.0]), rtol=1e-6)
    assert calls
    w = _tf.pfor.wrap(tf.constant([1.0, 2.0]), True)
    assert w.is_stacked
    assert _tf.pfor.stack(tf.constant(1.0), tf.constant([3])).shape == [3]
    assert issubclass(_tf.pfor.ConversionNotImplementedError, Exception) and callable(_tf.pfor.PFor)
    assert callable(_tf.pfor.convert) and callable(_tf.pfor.convert_graph_call)
    # The three are used together by tfscan.vmap of a scan (one batched While):
    out = tfscan.vmap(lambda x: tfscan.scan(lambda c, y: (c + y, None), 0.0, x)[0])(tf.ones([2, 3]))
    assert out.numpy().tolist() == [3.0, 3.0]


def test_xla_slices():
    buf = tf.zeros([4])
    upd = _tf.xla.dynamic_update_slice(buf, tf.ones([2]), tf.constant([1]))
    assert upd.numpy().tolist() == [0, 1, 1, 0]
    assert _tf.xla.dynamic_slice(upd, tf.constant([2]), [2]).numpy().tolist() == [1, 0]


def test_keras_rnn_entries():
    cell = keras.layers.SimpleRNNCell(3, dropout=0.5, recurrent_dropout=0.5)
    layer = keras.layers.RNN(cell)
    x = tf.ones([2, 4, 5])
    layer(x)  # built
    assert _tf.keras_rnn.cell_takes_training(cell, default=False)
    _tf.keras_rnn.config_dropout_masks(layer, cell, x[:, 0], [tf.zeros([2, 3])])
    masks = _tf.keras_rnn.dropout_masks(cell)
    _tf.keras_rnn.set_dropout_masks(cell, masks)
    assert _tf.keras_rnn.dropout_masks(cell) == masks
    _tf.keras_rnn.reset_dropout_masks(layer, cell)
    assert _tf.keras_rnn.dropout_masks(cell) == (None, None)


@pytest.mark.parametrize("name", [n for n, v in vars(_tf).items() if not n.startswith("_")
                                  and str(getattr(v, "__module__", "")).startswith(_tf.__name__ + ".")])
def test_every_entry_is_documented(name):
    entry = getattr(_tf, name)
    assert entry.__doc__ and ("Why private" in entry.__doc__ or "see" in entry.__doc__.lower()
                              or name in ("default_graph", "set_op_gradient_function")), name


def test_smoke_scan_grad_vmap_jit():
    """What a TensorFlow upgrade must not break, end to end (values against NumPy)."""
    xs = tf.constant([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])

    def loss(w, x):
        carry, ys = tfscan.scan(lambda c, v: (tf.tanh(w * c + v), c), 0.0, x)
        return carry + tf.reduce_sum(ys)

    def np_loss(w, x):
        c, total = 0.0, 0.0
        for v in x:
            total, c = total + c, np.tanh(w * c + v)
        return c + total

    w = tf.constant(0.7)
    values = tfscan.jit(tfscan.vmap(loss, in_axes=(None, 0)))(w, xs)
    np.testing.assert_allclose(values.numpy(), [np_loss(0.7, x) for x in xs.numpy()], rtol=1e-5)
    eps = 1e-3
    g = tfscan.grad(lambda w: tf.reduce_sum(tfscan.vmap(loss, in_axes=(None, 0))(w, xs)))(w)
    fd = sum((np_loss(0.7 + eps, x) - np_loss(0.7 - eps, x)) / (2 * eps) for x in xs.numpy().astype(np.float64))
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-3)


def test_every_entry_of_the_groups_is_at_the_door():
    """Callers use ``_tf.<entry>``: each group module's entries are re-exported by the package."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(_tf.__path__):
        module = importlib.import_module(f"{_tf.__name__}.{info.name}")
        entries = [n for n, v in vars(module).items() if not n.startswith("_")
                   and getattr(v, "__module__", None) == module.__name__]
        assert entries, module.__name__
        for name in entries:
            assert getattr(_tf, name, None) is getattr(module, name), f"{module.__name__}.{name}"


def test_distributed_container_and_variable_handles():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        v = tf.Variable([1.0, 2.0])
    component = strategy.experimental_local_results(v)[0]
    assert component is not v and _tf.distributed_container(component) is v
    plain = tf.Variable(1.0)
    assert _tf.distributed_container(plain) is None and _tf.distributed_container(v) is None
    assert [h is component.handle for h in _tf.variable_handles(v)] == [True]
    assert [h is plain.handle for h in _tf.variable_handles(plain)] == [True]


def test_register_launch_gradient_registers_once_and_keeps_the_first():
    """The gradient of ``XlaLaunch`` is registered once (tfscan's, when it first launches a
    program); a later registration does nothing, and an op that is not tfscan's raises
    TensorFlow's LookupError from it."""
    tfscan.cond(True, tf.sin, tf.cos, 1.0)
    tf.function(lambda x: tfscan.cond(x > 0, tf.sin, tf.cos, x))(tf.constant(1.0))  # registers it
    _tf.register_launch_gradient(lambda op, *d: [tf.constant(123.0)])  # ignored
    held = tf.function(lambda x: x * 2.0, jit_compile=True).get_concrete_function(tf.TensorSpec([]))

    @tf.function(autograph=False)
    def run(x):
        return tf.gradients(_tf.launch_compiled(held, [x])[0], x)

    with pytest.raises(LookupError, match="not a tfscan program"):
        run(tf.constant(1.0))


def test_counted_loop_emits_one_lean_while_or_falls_back():
    xs = tf.constant([1.0, 2.0, 3.0, 4.0])
    a = tf.constant(0.5)

    def body(i, state):
        c, total = state
        c = a * c + tf.gather(xs, i)
        return [c, total + c]

    @tf.function(autograph=False)
    def run(limit):
        graph = tf.compat.v1.get_default_graph()
        out = _tf.counted_loop(body, 0, 4, [tf.constant(0.0), tf.constant(0.0)])
        whiles = [op for op in graph.get_operations() if op.type.endswith("While")]
        assert [op.type for op in whiles] == ["StatelessWhile"]
        # the state: the counter, the two loop variables, the two captures (xs and a)
        assert len(whiles[0].inputs) == 5, [t.name for t in whiles[0].inputs]
        with pytest.raises(LookupError, match="tfscan's own VJP"):
            tf.gradients(out[0], a)
        from_one = _tf.counted_loop(body, 1, limit, [tf.constant(0.0), tf.constant(0.0)])  # a tensor limit
        stateful = _tf.counted_loop(lambda i, s: [s[0] + tf.random.uniform([]) * 0.0 + tf.gather(xs, i)], 0, 4,
                                    [tf.constant(0.0)])
        types = [op.type for op in graph.get_operations() if op.type.endswith("While")]
        assert types == ["StatelessWhile", "StatelessWhile", "While"], types  # the last: tf.while_loop's
        return out, from_one, stateful

    (c, _), (c1, _), (s,) = run(tf.constant(4))
    want_c = 0.0
    for x in [1.0, 2.0, 3.0, 4.0]:
        want_c = 0.5 * want_c + x
    np.testing.assert_allclose(c.numpy(), want_c)
    np.testing.assert_allclose(c1.numpy(), (0.5 * 2.0 + 3.0) * 0.5 + 4.0)
    np.testing.assert_allclose(s.numpy(), 10.0)
    with tf.GradientTape() as tape:  # a watched input: tf.while_loop's op, which TensorFlow differentiates
        tape.watch(a)
        out = tf.function(lambda: _tf.counted_loop(body, 0, 4, [tf.constant(0.0), tf.constant(0.0)]),
                          autograph=False)()
    np.testing.assert_allclose(tape.gradient(out[0], a).numpy(), 3 * 0.25 * 1 + 2 * 0.5 * 2.0 + 3.0, rtol=1e-6)
