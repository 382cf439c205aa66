"""A scan in a ``tf.function`` where nothing records (inference: Keras' ``predict``, a served
SavedModel) runs its forward loop without residuals; a gradient asked of that graph later
makes the same launched op save them, as TensorFlow's ``while_v2`` adds accumulators to a
``While`` op already built.

Before, every scan in such a graph saved its residuals for a gradient that might never be
asked: an LSTM's forward pass in a plain ``tf.function`` took 1.6x its ``jit_compile`` time
(203 against 121 ms, T=1000 B=32 H=128). Each way TensorFlow can ask for the gradient
afterwards is checked against JAX, and the inference function is checked to stay lean.
"""

from __future__ import annotations

import gc
import warnings
import weakref

import numpy as np
import pytest
import tensorflow as tf

import tfscan
from tfscan._scan import autodiff
from tfscan._scan.residuals import RecomputeWarning

jax = pytest.importorskip("jax")
jnp = jax.numpy

T, B, D, H = 6, 2, 3, 4
_rng = np.random.default_rng(0)
XS = _rng.normal(size=(T, B, D)).astype(np.float32)
W = (_rng.normal(size=(D + H, 4 * H)) * 0.5).astype(np.float32)


def _cell(lib, w, carry, x):
    h, s = carry
    z = lib.concatenate([x, h], -1) @ w if lib is jnp else tf.concat([x, h], -1) @ w
    i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
    sig = jax.nn.sigmoid if lib is jnp else tf.sigmoid
    s = sig(f) * s + sig(i) * lib.tanh(g)
    h = sig(o) * lib.tanh(s)
    return (h, s), h


def loss(w, xs):
    """An LSTM over ``xs``; its residuals (the gates) are not its outputs."""
    (h, s), hs = tfscan.scan(lambda c, x: _cell(tf, w, c, x), (tf.zeros([B, H]), tf.zeros([B, H])), xs)
    return tf.reduce_sum(hs * hs) + tf.reduce_sum(s)


def jloss(w, xs):
    (h, s), hs = jax.lax.scan(lambda c, x: _cell(jnp, w, c, x), (jnp.zeros([B, H]), jnp.zeros([B, H])), xs)
    return jnp.sum(hs * hs) + jnp.sum(s)


N_OUT = 3  # the forward program's outputs without residuals: two carry leaves and one y


def _launches(graph) -> list:
    return [op for op in graph.get_operations() if op.type == "XlaLaunch"]


def _launch_outputs(function_def) -> list[int]:
    """Output counts of the ``XlaLaunch`` nodes of a concrete function's definition."""
    return [len(n.attr["Tresults"].list.type) for n in function_def.node_def if n.op == "XlaLaunch"]


def test_inference_in_a_tf_function_runs_the_loop_without_residuals():
    f = tf.function(loss)
    concrete = f.get_concrete_function(tf.TensorSpec(W.shape), tf.TensorSpec(XS.shape))
    assert [len(op.outputs) for op in _launches(concrete.graph)] == [N_OUT]
    assert _launch_outputs(concrete.function_def) == [N_OUT]
    np.testing.assert_allclose(float(f(tf.constant(W), tf.constant(XS))), float(jloss(W, XS)), rtol=1e-5)


def _tf_gradients_in_the_graph(f, w, xs):
    return tf.function(lambda w, xs: tf.gradients(loss(w, xs), w)[0])(w, xs)


def _tape_around_the_call(f, w, xs):
    with tf.GradientTape() as tape:
        tape.watch(w)
        y = f(w, xs)
    return tape.gradient(y, w)


def _tf_gradients_of_a_held_function(f, w, xs):
    return tf.function(lambda w, xs: tf.gradients(f(w, xs), w)[0])(w, xs)


def _saved_and_loaded(f, w, xs, tmp_path):
    module = tf.Module()
    module.f = tf.function(loss, input_signature=[tf.TensorSpec(W.shape), tf.TensorSpec(XS.shape)])
    tf.saved_model.save(module, str(tmp_path))
    return _tape_around_the_call(tf.saved_model.load(str(tmp_path)).f, w, xs)


WAYS = {"tf.gradients in the graph": _tf_gradients_in_the_graph, "tape around the call": _tape_around_the_call,
        "tf.gradients of a held function's call": _tf_gradients_of_a_held_function}


@pytest.mark.parametrize("way", [*WAYS, "saved and loaded"])
def test_a_gradient_asked_later_matches_jax(way, tmp_path):
    f = tf.function(loss)
    w, xs = tf.constant(W), tf.constant(XS)
    f(w, xs)  # inference first: its function is made before any gradient is asked
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecomputeWarning)  # each gradient reads saved residuals
        got = WAYS[way](f, w, xs) if way in WAYS else _saved_and_loaded(f, w, xs, tmp_path)
    np.testing.assert_allclose(got.numpy(), np.asarray(jax.grad(jloss)(W, XS)), rtol=2e-5, atol=1e-5)


def test_a_tape_around_the_call_makes_the_forward_op_save_and_inference_stays_lean():
    f = tf.function(loss)
    w, xs = tf.constant(W), tf.constant(XS)
    concrete = f.get_concrete_function(w, xs)
    (op,) = _launches(concrete.graph)
    assert len(op.outputs) == N_OUT
    _tape_around_the_call(f, w, xs)
    assert len(op.outputs) > N_OUT  # the gradient read the residuals of this op, not a second loop
    assert _launch_outputs(concrete.function_def) == [N_OUT]  # the inference function: unchanged
    np.testing.assert_allclose(float(f(w, xs)), float(jloss(W, XS)), rtol=1e-5)


def test_higher_order_derivatives_around_the_call_match_jax():
    f = tf.function(loss)
    w, xs, v = tf.constant(W), tf.constant(XS), tf.ones_like(tf.constant(W))
    f(w, xs)
    with tf.GradientTape() as outer:
        outer.watch(w)
        with tf.GradientTape() as inner:
            inner.watch(w)
            y = f(w, xs)
        g = inner.gradient(y, w)
        second = tf.reduce_sum(g * g)
    want = jax.grad(lambda w: jnp.sum(jax.grad(jloss)(w, XS) ** 2))(W)
    np.testing.assert_allclose(outer.gradient(second, w).numpy(), np.asarray(want), rtol=1e-4, atol=1e-4)
    with tf.autodiff.ForwardAccumulator(w, v) as acc:
        y = f(w, xs)
    want = jax.jvp(lambda w: jloss(w, XS), (W,), (np.ones_like(W),))[1]
    np.testing.assert_allclose(float(acc.jvp(y)), float(want), rtol=1e-5)


def test_a_function_first_traced_under_a_tape_outside_it_reads_residuals():
    """Traced under the tape, the scan was seen as asked for no input (the tape watches the
    eager tensors, not the function's placeholders), and TensorFlow's gradient of the call,
    which asks for every input, recomputed the forward loop (2x the time of a tape inside)."""
    f = tf.function(loss)
    w, xs = tf.constant(W), tf.constant(XS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecomputeWarning)
        got = _tape_around_the_call(f, w, xs)
    np.testing.assert_allclose(got.numpy(), np.asarray(jax.grad(jloss)(W, XS)), rtol=2e-5, atol=1e-5)
    concrete = f.get_concrete_function(w, xs)
    assert [len(op.outputs) > N_OUT for op in _launches(concrete.graph)] == [True]
    assert _launch_outputs(concrete.function_def) == [N_OUT]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf.function", "jit_compile"])
@pytest.mark.parametrize("weights", ["variable", "watched tensor"])
def test_a_tape_around_the_call_reads_residuals_whatever_the_function_reads(jit_compile, weights, monkeypatch):
    """A model's function reads its weights from variables. The tape outside it is live while
    the function is traced and watches the variables it reads, so the scan looked recorded,
    asked for the weights' gradients only; TensorFlow's gradient of the call asks for every
    input, and the backward pass recomputed the forward loop: 2.4x the time of a tape inside
    (LSTM T=1000 B=32 H=128, 959 against 396 ms), 1.5x under XLA, where a watched tensor did
    the same. A scan in a graph now saves the residuals of every input's gradient, and a
    gradient TensorFlow builds apart from the forward graph reads them."""
    def recomputed(*args, **kwargs):
        raise AssertionError("the backward pass recomputed the forward loop")

    w = tf.Variable(W) if weights == "variable" else tf.constant(W)
    f = tf.function(lambda xs: loss(w, xs), jit_compile=jit_compile)
    xs = tf.constant(XS)

    def around():
        with tf.GradientTape() as tape:
            if weights != "variable":
                tape.watch(w)
            y = f(xs)
        return tape.gradient(y, w)

    with monkeypatch.context() as patch:
        patch.setattr(autodiff, "_recorded_backward", recomputed)
        got = around()
    np.testing.assert_allclose(got.numpy(), np.asarray(jax.grad(jloss)(W, XS)), rtol=2e-5, atol=1e-5)
    with tf.GradientTape() as outer:  # and its derivative, through the same forward graph
        if weights != "variable":
            outer.watch(w)
        g = around()
        second = tf.reduce_sum(g * g)
    want = jax.grad(lambda w: jnp.sum(jax.grad(jloss)(w, XS) ** 2))(W)
    np.testing.assert_allclose(outer.gradient(second, w).numpy(), np.asarray(want), rtol=1e-4, atol=1e-4)


SXS = np.array([0.5, -0.25, 1.0, 0.3], np.float32)


def _sin_loss(lib, a):
    """A scalar scan (``lib``: ``tf`` or ``jnp``) whose gradient has a nonzero derivative."""
    if lib is tf:
        return tf.reduce_sum(tfscan.scan(lambda c, x: (tf.sin(c * a) + x,) * 2, 0.1, tf.constant(SXS))[1])
    return jnp.sum(jax.lax.scan(lambda c, x: (jnp.sin(c * a) + x,) * 2, 0.1, SXS)[1])


@pytest.mark.parametrize("jit_compile,weights", [
    pytest.param(True, "variable", marks=pytest.mark.slow), (True, "watched tensor"),
    pytest.param(False, "variable", marks=pytest.mark.slow), (False, "watched tensor")])
def test_forward_over_reverse_around_the_call_matches_jax(jit_compile, weights):
    """An accumulator around a tape around the call differentiates the gradient TensorFlow
    builds apart from the forward graph: that gradient must stay recorded (the backward pass
    written as scans), or the accumulator's JVP of it transposes a compiled loop (an
    ``InternalError`` under XLA with the weight in a variable). A tape alone needs no record.
    In a plain function reading a variable the forward program was launched without
    residuals, and the gradient relaunches it saving them while the accumulator is live:
    its programs must be traced where the accumulator cannot see them (TensorFlow's
    ``TypeError`` from ``while_v2`` before)."""
    a = tf.Variable(0.7) if weights == "variable" else tf.constant(0.7)
    f = tf.function(lambda: _sin_loss(tf, a), jit_compile=jit_compile)
    with tf.autodiff.ForwardAccumulator(a, tf.constant(1.0)) as acc:
        with tf.GradientTape() as tape:
            if weights != "variable":
                tape.watch(a)
            y = f()
        g = tape.gradient(y, a)
    want_g, want_hvp = jax.jvp(jax.grad(lambda a: _sin_loss(jnp, a)), (0.7,), (1.0,))
    assert float(g) == pytest.approx(float(want_g), rel=2e-5)
    assert float(acc.jvp(g)) == pytest.approx(float(want_hvp), rel=1e-4)


def test_graphs_differentiated_after_inference_are_freed():
    """A graph whose scan was made to save its residuals by a later gradient (inference
    first, then a tape around the call) is freed with its function: the scan's registered
    gradient remembers those residuals by name (it held the tensors, which kept every
    such graph alive, 3 of 3)."""
    w = tf.Variable(W)
    refs = []
    for _ in range(3):
        f = tf.function(lambda xs: loss(w, xs))
        xs = tf.constant(XS)
        f(xs)  # inference first: no residuals
        with tf.GradientTape() as tape:
            y = f(xs)
        np.testing.assert_allclose(tape.gradient(y, w).numpy(), np.asarray(jax.grad(jloss)(W, XS)),
                                   rtol=2e-5, atol=1e-5)
        refs.append(weakref.ref(f.get_concrete_function(xs).graph))
        del f, tape, y
    gc.collect()
    assert [r() for r in refs] == [None] * 3
