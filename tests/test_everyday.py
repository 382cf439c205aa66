"""Everyday TensorFlow patterns: a new *value* never costs a new trace or compile.

An eager ``GradientTape`` loop whose step closes over a tensor recomputed each
iteration, ``tfscan.jit(f)(x)`` / ``tfscan.grad(f)(x)`` re-wrapped on every call, a step
that reads tensors through a helper function or an object: each keeps one cache entry
and computes with this call's values (never a stale one).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfscan
from tfscan._core import cache as _cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hmm_loss(logits, obs):
    log_a = tf.nn.log_softmax(logits)  # recomputed outside the step, every iteration

    def step(alpha, x):
        return tf.reduce_logsumexp(alpha[:, None] + log_a, axis=0) + x, None

    return tf.reduce_logsumexp(tfscan.scan(step, tf.zeros([5]), obs)[0])


def _hmm_loss_reference(logits, obs):
    log_a = tf.nn.log_softmax(logits)
    alpha = tf.zeros([5])
    for t in range(obs.shape[0]):
        alpha = tf.reduce_logsumexp(alpha[:, None] + log_a, axis=0) + obs[t]
    return tf.reduce_logsumexp(alpha)


def test_eager_training_loop_closing_over_a_recomputed_tensor_compiles_once():
    logits = tf.Variable(tf.random.stateless_normal([5, 5], seed=[1, 2]))
    obs = tf.random.stateless_normal([30, 5], seed=[3, 4])
    programs = _cache.eager_cache("scan")
    sizes = []
    for _ in range(6):
        with tf.GradientTape() as tape:
            loss = _hmm_loss(logits, obs)
        g = tape.gradient(loss, logits)
        with tf.GradientTape() as tape:
            want = _hmm_loss_reference(logits, obs)
        g_want = tape.gradient(want, logits)
        np.testing.assert_allclose(loss.numpy(), want.numpy(), rtol=1e-5)
        np.testing.assert_allclose(g.numpy(), g_want.numpy(), rtol=1e-4, atol=1e-6)
        logits.assign_sub(0.5 * g)  # a new value of log_a on the next iteration
        sizes.append(len(programs))
    assert sizes[-1] == sizes[1], sizes


def test_rewrapped_jit_and_grad_trace_once_and_use_the_new_values():
    def f(w, xs):
        return tfscan.scan(lambda c, x: (tf.tanh(w * c + x), c), 0.0, xs)[0]

    xs = tf.constant([0.5, -1.0, 2.0])
    jits = _cache.eager_cache("jit")
    sizes = []
    for w in [0.1, 0.7, -0.3, 1.5]:
        w = tf.constant(w)
        got = tfscan.jit(f)(w, xs)  # a new wrapper per call, as in a loop body
        dw = tfscan.grad(f)(w, xs)
        with tf.GradientTape() as tape:
            tape.watch(w)
            c = tf.constant(0.0)
            for x in xs:
                c = tf.tanh(w * c + x)
        np.testing.assert_allclose(got.numpy(), c.numpy(), rtol=1e-6)
        np.testing.assert_allclose(dw.numpy(), tape.gradient(c, w).numpy(), rtol=1e-5)
        sizes.append(len(jits))
    assert sizes[-1] == sizes[0], sizes


def test_inline_lambda_grad_closing_over_a_new_tensor_uses_it():
    xs = tf.ones(4)
    jits = _cache.eager_cache("jit")
    sizes = []
    for scale in [1.0, 2.0, 3.0]:
        a = tf.constant(scale)
        g = tfscan.grad(lambda w: tfscan.scan(lambda c, x: (c * w + a * x, None), 0.0, xs)[0])(tf.constant(1.0))
        # c_T = sum_k a w^k (k < 4) -> dc/dw at w=1 is a * (0 + 1 + 2 + 3)
        assert float(g) == pytest.approx(6.0 * scale)
        sizes.append(len(jits))
    assert sizes[-1] == sizes[0], sizes


W_GLOBAL = tf.constant(1.0)


def _helper_reading_a_global(c, x):
    return c * W_GLOBAL + x, None


def test_step_calling_a_helper_that_reads_a_rebound_global_is_not_stale():
    global W_GLOBAL
    xs = tf.ones(3)
    try:
        for w in [1.0, 2.0, 3.0]:
            W_GLOBAL = tf.constant(w)
            got = tfscan.scan(lambda c, x: _helper_reading_a_global(c, x), 0.0, xs)[0]
            assert float(got) == pytest.approx(1 + w + w * w)
    finally:
        W_GLOBAL = tf.constant(1.0)


SCALE = 1.0  # module-level Python numbers, as a notebook cell or a sweep assigns them
STEPS = 3


def test_a_step_reading_a_reassigned_global_number_uses_its_new_value():
    """A fresh lambda per value (a sweep; a notebook cell run again) reading a module-level
    float or int: the trace bakes the number in, so it keys the programs, as a closed-over
    number does (before: every value got the program traced for the first one). A *held*
    ``tfscan.jit`` keeps its first trace, as ``jax.jit`` does."""
    global SCALE, STEPS
    xs = tf.ones(3)
    traces = []
    try:
        for scale, steps in [(1.0, 3), (2.0, 5), (3.0, 4), (2.0, 5)]:
            SCALE, STEPS = scale, steps
            got = tfscan.scan(lambda c, x: (c * SCALE, c), 1.0, xs)[0]
            assert float(got) == scale ** 3
            assert float(tfscan.jit(lambda c: c * SCALE)(tf.constant(2.0))) == 2.0 * scale  # re-wrapped
            d = tfscan.grad(lambda w: tfscan.while_loop(lambda c: c < 1e9, lambda c: c * w, 1.0,
                                                        max_steps=STEPS))(2.0)
            assert float(d) == steps * 2.0 ** (steps - 1)  # d(w^N)/dw
            traces.append(len(_cache.eager_cache("scan")))
    finally:
        SCALE, STEPS = 1.0, 3
    assert traces[3] == traces[2], traces  # a value seen before: no new program


CONFIG = {"scale": 1.0}  # a module-level config dict and namespace a sweep changes in place
HPARAMS = __import__("types").SimpleNamespace(scale=1.0)


def test_a_step_reading_a_global_dict_or_object_uses_what_it_holds_now():
    """As a closed-over dict or object is: the walk is not exact, so the step is traced again
    and its programs reused while the trace is the same (before: the first value, silently)."""
    xs = tf.ones(3)
    try:
        for scale in [1.0, 5.0, 2.0]:
            CONFIG["scale"] = HPARAMS.scale = scale
            assert float(tfscan.scan(lambda c, x: (c + x * CONFIG["scale"], None), 0.0, xs)[0]) == 3 * scale
            assert float(tfscan.scan(lambda c, x: (c + x * HPARAMS.scale, None), 0.0, xs)[0]) == 3 * scale
            d = tfscan.grad(lambda w: tfscan.scan(lambda c, x: (c * w + CONFIG["scale"], None), 0.0, xs)[0])(1.0)
            assert float(d) == 3 * scale  # d/dw of s(w^2 + w + 1) at w = 1
    finally:
        CONFIG["scale"] = HPARAMS.scale = 1.0


CELL = None  # a notebook's global Keras cell, built again when its cell is run again


def test_a_step_calling_a_rebound_global_keras_cell_uses_the_new_cell():
    """Before: the first cell's weights, and a ``None`` gradient for every later cell's."""
    import keras
    global CELL
    xs = tf.random.stateless_normal([6, 2, 3], seed=[1, 2])

    def step(h, x):
        out, new = CELL(x, [h])
        return new[0], out
    try:
        for seed in range(3):
            CELL = keras.layers.GRUCell(4, seed=seed)
            CELL.build((None, 3))
            _check_cell_scan(CELL, step, xs)
    finally:
        CELL = None


def _check_cell_scan(cell, step, xs):
    """``scan(step)`` over ``xs`` (steps calling ``cell``) equals the cell run in a Python loop,
    and gives a gradient for every weight of ``cell``."""
    with tf.GradientTape() as tape:
        got = tf.reduce_sum(tfscan.scan(step, tf.zeros([2, 4]), xs)[1])
    grads = tape.gradient(got, cell.trainable_variables)
    h, want = tf.zeros([2, 4]), 0.0
    for t in range(xs.shape[0]):
        out, (h,) = cell(xs[t], [h])
        want += tf.reduce_sum(out)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    assert all(g is not None for g in grads)


def test_a_new_keras_cell_of_the_same_configuration_reuses_the_compiled_programs(monkeypatch):
    """A sweep building a model per setting: each new cell traces the same ops under another
    name scope (``gru_cell_2/...``); its trace now finds the compiled programs (before: a new
    compile per model, 1.5-1.8 s each), with this cell's weights and gradients."""
    import keras
    from tfscan._scan import scan as scan_module
    made = []

    class Counted(scan_module.Programs):
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(scan_module, "Programs", Counted)
    xs = tf.random.stateless_normal([5, 2, 3], seed=[3, 4])
    counts = []
    for seed in range(4):
        cell = keras.layers.GRUCell(4, seed=seed)
        cell.build((None, 3))

        def step(h, x):
            out, new = cell(x, [h])
            return new[0], out
        _check_cell_scan(cell, step, xs)
        counts.append(len(made))
    assert counts[-1] == counts[0], counts


def test_step_reading_tensors_through_an_object_reuses_the_compiled_programs():
    class Model:
        def __init__(self, w):
            self.w = tf.constant(w)

        def step(self, c, x):
            return c * self.w + x, None

    xs = tf.ones(3)
    programs = _cache.eager_cache("scan")
    sizes = []
    for w in [1.0, 2.0, 3.0, 4.0]:
        model = Model(w)
        got = tfscan.scan(model.step, 0.0, xs)[0]
        assert float(got) == pytest.approx(1 + w + w * w)
        sizes.append(len(programs))
    assert sizes[-1] == sizes[0], sizes


def test_step_closing_over_graph_tensors_in_two_functions():
    xs = tf.ones(3)

    def make():
        @tf.function
        def f(a):
            b = a * 2.0  # a tensor of this graph, closed over by the step
            return tfscan.scan(lambda c, x: (c + b * x, None), 0.0, xs)[0]
        return f

    for a in [1.0, 2.0]:
        assert float(make()(tf.constant(a))) == pytest.approx(6.0 * a)


def test_a_graphs_scan_gradient_registration_is_freed_with_the_graph():
    """A scan traced in a graph registers its gradient under a name of its own (for
    tf.saved_model); the name used to stay registered for the life of the process."""
    import gc

    w = tf.Variable(tf.ones([3]))

    def fresh():
        @tf.function
        def g(xs):
            with tf.GradientTape() as t:
                loss = tf.reduce_sum(tfscan.scan(lambda c, x: (tf.tanh(w * c + x), None), tf.zeros([3]), xs)[0])
            return t.gradient(loss, w)

        cf = g.get_concrete_function(tf.TensorSpec([4, 3]))
        assert np.all(np.isfinite(cf(tf.ones([4, 3])).numpy()))
        return [op.get_attr("_gradient_op_type").decode() for op in cf.graph.get_operations()
                if op.type == "IdentityN" and "_gradient_op_type" in op.node_def.attr]

    names = fresh()
    assert names
    gc.collect()
    for name in names:  # tf.RegisterGradient raises KeyError for a name still registered
        tf.RegisterGradient(name)(lambda op, *grads: [None] * len(op.inputs))


@pytest.mark.parametrize("api", ["scan", "jit", "grad", "vmap", "cond", "fori_loop", "map"])
def test_a_fresh_step_and_the_tensor_it_closes_over_are_freed_in_an_eager_loop(api):
    """An eager loop that writes its step inline (a fresh lambda each iteration) closing over
    a tensor recomputed each iteration kept every lambda, and with it every such tensor, for
    the life of the process (the closure memo's value held its own weak key): 40 iterations
    over a 4 MB tensor grew RSS by 154 MiB. Only the most recent call's may stay."""
    import gc
    import weakref

    xs = tf.ones([3, 4])
    run = {
        "scan": lambda f: tfscan.scan(f, tf.zeros([4]), xs),
        "jit": lambda f: tfscan.jit(lambda c: tfscan.scan(f, c, xs))(tf.zeros([4])),
        "grad": lambda f: tfscan.grad(lambda c: tf.reduce_sum(tfscan.scan(f, c, xs)[0]))(tf.zeros([4])),
        "vmap": lambda f: tfscan.vmap(lambda c: tfscan.scan(f, c, xs))(tf.zeros([2, 4])),
        "cond": lambda f: tfscan.cond(tf.constant(True), lambda c: f(c, xs[0])[0], lambda c: c, tf.zeros([4])),
        "fori_loop": lambda f: tfscan.fori_loop(0, 3, lambda i, c: f(c, xs[i])[0], tf.zeros([4])),
        "map": lambda f: tfscan.map(lambda x: f(x, x)[0], xs),
    }[api]
    def make(w):
        return lambda c, x: (c + w * x, c)

    steps, tensors = [], []
    for i in range(6):
        w = tf.fill([4], float(i))  # recomputed each iteration, closed over by a fresh lambda
        step = make(w)
        run(step)
        steps.append(weakref.ref(step))
        tensors.append(weakref.ref(w))
        del step, w
    gc.collect()
    assert sum(s() is not None for s in steps) <= 1, "steps still alive"
    assert sum(t() is not None for t in tensors) <= 1, "closed-over tensors still alive"


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("api", ["scan", "grad", "jit"])
def test_a_fresh_functions_graph_is_freed_when_its_step_closes_over_its_argument(api, order):
    """A step closing over a tensor of the tf.function (its argument ``a``) left the whole
    traced graph alive for the life of the process: the closure memo (a weak-keyed dict)
    held the tensor, the tensor its graph, and the graph the step function (its key), so
    the weak key never died -- ~300 KiB per graph over hundreds of graphs. Each trace's
    graph must be freed with its function, as ``tf.scan``'s is (checked first, so the test
    measures tfscan, not TensorFlow)."""
    import gc
    import weakref

    xs = tf.constant([0.5, -0.25, 1.0])

    def loss(a, scan):
        if scan is tf.scan:
            return tf.reduce_sum(tf.scan(lambda c, x: tf.sin(c * a) + x, xs, initializer=a))
        if api == "jit":
            return tf.reduce_sum(tfscan.jit(lambda v: tfscan.scan(lambda c, x: (tf.sin(c * a) + x, c), v, xs)[1])(a))
        if api == "grad":
            return tfscan.grad(lambda v: tf.reduce_sum(tfscan.scan(lambda c, x: (tf.sin(c * v) + x, c), a, xs)[1]))(a)
        return tf.reduce_sum(tfscan.scan(lambda c, x: (tf.sin(c * a) + x, c), a, xs)[1])

    def fresh(scan):
        @tf.function
        def g(a):
            with tf.GradientTape() as outer, tf.GradientTape() as inner:
                outer.watch(a)
                inner.watch(a)
                value = loss(a, scan)
                d = inner.gradient(value, a) if order else value
            return outer.gradient(d, a) if order == 2 else d

        cf = g.get_concrete_function(tf.TensorSpec([], tf.float32))
        assert np.isfinite(float(cf(tf.constant(0.7))))
        return weakref.ref(cf.graph)

    for scan in (tf.scan, tfscan.scan):
        fresh(scan)  # warm-up: a first trace may fill process-wide caches
        graphs = [fresh(scan) for _ in range(3)]
        gc.collect()
        alive = sum(g() is not None for g in graphs)
        assert alive == 0, f"{getattr(scan, '__module__', scan)}: {alive} of 3 traced graphs still alive"


@pytest.mark.slow
def test_memory_per_fresh_traced_graph_is_within_twice_tf_scans():
    """Each fresh tf.function differentiating a scan kept 4.3 MiB for the life of the process
    (programs compiled anew per graph, its registered gradient), then ~180-280 KiB: TF's call
    of a held compiled function keeps an instantiation of it per calling graph (the calls
    are now ``XlaLaunch`` ops). Measured side by side with ``tf.scan`` in one process; the
    32 KiB (2 MiB over the 50 graphs) absorbs RSS noise around tf.scan's ~0."""
    from benchmarks.everyday import side_by_side

    kib = side_by_side(25, 2)
    assert kib["tfscan"] <= 2 * max(kib["tf.scan"], 0.0) + 32, f"KiB per traced graph: {kib}"


@pytest.mark.slow
@pytest.mark.parametrize("order", ["@a", "@a2"])
def test_memory_per_fresh_graph_whose_step_closes_over_its_argument_is_within_twice_tf_scans(order):
    """A step closing over a tensor of the ``tf.function`` (its argument) tied the scan's
    programs to that graph: each fresh graph traced and compiled them again, and XLA keeps
    every compiled program, so each graph kept ~2.1 MiB (a gradient) or ~6.4 MiB (a second
    derivative, nested tapes), against tf.scan's ~0.05. A trace whose graph tensors are all
    fed from the closure's slots now serves every graph. Side by side with tf.scan; the
    slack absorbs RSS noise (a 4-graph block swings by +-100 KiB)."""
    from benchmarks.everyday import side_by_side

    kib = side_by_side(8, 4, (f"tfscan{order}", f"tf.scan{order}"))
    slack = 96 if order == "@a" else 128  # the leak fixed on 2026-12-01 grew ~300 / ~200 KiB a graph
    assert kib[f"tfscan{order}"] <= 2 * max(kib[f"tf.scan{order}"], 0.0) + slack, f"KiB per traced graph: {kib}"


@pytest.mark.slow
@pytest.mark.parametrize("kind, mode, reference", [
    ("cond", "grad", "tf"), ("while", "grad", "tf"), ("cond", "hvp", "tf-rr")])
def test_memory_per_fresh_graph_through_cond_and_while_loop_is_within_twice_tfs(kind, mode, reference):
    """A fresh tf.function taking a gradient (or a Hessian-vector product) through
    ``tfscan.cond`` / ``tfscan.while_loop(max_steps=...)`` kept 0.7-1.4 MiB: each graph traced
    and compiled the conditional again, and TensorFlow's call of a compiled function keeps an
    instantiation of it per calling graph. Side by side with ``tf.cond`` / ``tf.while_loop``
    (TensorFlow's HVP of ``tf.cond`` in a tf.function fails: reverse over reverse there)."""
    from benchmarks._control_memory import control_side_by_side

    # Medians of 4 interleaved blocks of 8 graphs: a block swings by +-20 KiB when another
    # process (a second pytest worker) allocates beside it; the mean of 2 blocks of 15 once
    # read 63 KiB for a row whose blocks are 24-47 KiB alone. The bug was 700-1400 KiB.
    kib = control_side_by_side(kind, mode, 8, 4, ("tfscan", reference), warm=20)
    per_graph = {k: statistics.median(kib["blocks"][k]) for k in ("tfscan", reference)}
    assert per_graph["tfscan"] <= 2 * max(per_graph[reference], 0.0) + 48, f"KiB per traced graph: {kib}"


@pytest.mark.slow
def test_memory_per_new_sequence_length_in_a_keras_model_stays_small():
    """A Keras model with ``Input((None, d))`` fed a new sequence length per batch used to
    compile the scan's XLA programs again for every length and keep them (2.7 MiB each);
    sequences are now padded to a power-of-two bucket, one program per bucket."""
    from benchmarks.everyday import KERAS_SOAK

    out = subprocess.run([sys.executable, "-c", KERAS_SOAK, "tfscan", "30"], capture_output=True, text=True,
                         timeout=1800, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    per_length = float(out.stdout.split("KIB")[1].split()[0])
    assert per_length < 1024, f"{per_length:.0f} KiB per new sequence length"


def test_unknown_length_in_a_graph_compiles_one_program_per_bucket():
    """Sequences of a length unknown when traced are padded to a power-of-two bucket (at
    least 8): values and gradients are those of the true length, reverse and unrolled too."""
    w = tf.Variable(tf.random.stateless_normal([3, 3], seed=[1, 2]) * 0.5)

    def loss(xs, reverse, unroll):
        with tf.GradientTape() as t:
            t.watch(xs)
            c, ys = tfscan.scan(lambda h, x: (tf.tanh(tf.linalg.matvec(w, h) + x), h * x), tf.zeros([3]), xs,
                                reverse=reverse, unroll=unroll)
            value = tf.reduce_sum(c) + tf.reduce_sum(ys ** 2)
        return [value, tf.shape(ys)[0]] + t.gradient(value, [w, xs])

    for reverse, unroll in [(False, 1), (True, 3)]:
        g = tf.function(lambda xs: loss(xs, reverse, unroll), input_signature=[tf.TensorSpec([None, 3])])
        for n in (0, 1, 8, 9):
            xs = tf.random.stateless_normal([n, 3], seed=[n, 5])
            for a, b in zip(g(xs), loss(xs, reverse, unroll)):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
        ops_ = g.get_concrete_function().graph.get_operations()
        assert any(op.type == "Pad" for op in ops_)  # the bucket, not a program per length


def test_rewrapped_vmap_closing_over_a_new_tensor_uses_it_without_retracing():
    def seq_sum(a, seq):
        return tfscan.scan(lambda c, x: (c + a * x, None), 0.0, seq)[0]

    v, seqs = tf.Variable(2.0), tf.ones([4, 5])
    batched = _cache.eager_cache("vmap")
    sizes = []
    for i in range(4):
        a = v * (1.0 + i)  # a new tensor each iteration, closed over by a fresh lambda
        with tf.GradientTape() as tape:
            tape.watch(a)
            out = tfscan.vmap(lambda s: seq_sum(a, s))(seqs)
            total = tf.reduce_sum(out)
        np.testing.assert_allclose(out.numpy(), np.full(4, 10.0 * (1 + i)), rtol=1e-6)
        assert float(tape.gradient(total, a)) == pytest.approx(20.0)
        sizes.append(len(batched))
    assert sizes[-1] == sizes[0], sizes



@pytest.mark.parametrize("api", ["cond", "switch", "associative_scan", "while_loop"])
def test_control_flow_closing_over_a_new_tensor_uses_it_without_recompiling(api):
    """A fresh closure over a recomputed tensor (an eager training loop) reuses the program,
    with this call's value and gradient; JAX traces these once per shape too."""
    x = tf.constant([1.0, 2.0, 3.0])
    calls = {
        "cond": lambda w: tfscan.cond(tf.constant(True), lambda v: v * w, lambda v: v - w, x),
        "switch": lambda w: tfscan.switch(1, [lambda v: v - w, lambda v: v * w], x),
        "associative_scan": lambda w: tfscan.associative_scan(lambda a, b: a + b * w, x),
        "while_loop": lambda w: tfscan.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * w),
                                                  (0, x))[1],
    }
    expected = {
        "cond": lambda w: x * w, "switch": lambda w: x * w,
        "associative_scan": lambda w: tf.stack([1.0, 1.0 + 2.0 * w, 1.0 + 5.0 * w]),
        "while_loop": lambda w: x * w ** 3,
    }
    cache = _cache.eager_cache("while_loop" if api == "while_loop" else "control")
    sizes = []
    for i in range(4):
        w = tf.Variable(2.0) * (1.0 + i)  # a new tensor each iteration
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(w)
            out = calls[api](w)
            want = expected[api](w)
            total, total_want = tf.reduce_sum(out), tf.reduce_sum(want)
        np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-6)
        if api != "while_loop":  # reverse mode of an unbounded while_loop is an error, as in JAX
            np.testing.assert_allclose(tape.gradient(total, w).numpy(), tape.gradient(total_want, w).numpy(),
                                       rtol=1e-5)
        sizes.append(len(cache))
    assert sizes[-1] == sizes[0], sizes


def test_eight_threads_mixing_scans_closures_jit_and_grad_match_serial_calls():
    """Threads share the one cache: each call must compute with its own closed-over tensors
    (scans, cond/switch and while_loop, eagerly and in fresh graphs sharing programs)."""
    from concurrent.futures import ThreadPoolExecutor

    xs = tf.constant(np.linspace(-1, 1, 12).reshape(6, 2), tf.float32)

    def work(k):
        a = tf.constant(0.1 * (k % 5) + 0.2)  # a new tensor per call, closed over by fresh lambdas
        step = lambda c, x: (tf.tanh(a * c + x), c)  # noqa: E731
        carry, ys = tfscan.scan(step, tf.zeros([2]), xs)
        g = tfscan.grad(lambda w: tf.reduce_sum(tfscan.scan(lambda c, x: (tf.tanh(w * c + a * x), None),
                                                             tf.zeros([2]), xs)[0]))(tf.constant(0.5))
        j = tfscan.jit(lambda v: tfscan.scan(lambda c, x: (c + a * x, None), v, xs)[0])(tf.ones([2]))

        def branches_and_loop(v):  # cond, switch and a bounded while_loop closing over ``a``
            c = tfscan.cond(v[0] > 0, lambda u: tf.tanh(a * u), lambda u: -a * u, v)
            s = tfscan.switch(k % 3, [lambda u: u * a, lambda u: u + a, lambda u: tf.sin(u)], v)
            w = tfscan.while_loop(lambda q: q[0] < 3, lambda q: (q[0] + 1, tf.tanh(a * q[1] + 0.1)), (0, v),
                                  max_steps=5)[1]
            return tf.reduce_sum(c) + tf.reduce_sum(s * s) + tf.reduce_sum(w)

        v = xs[k % 6]
        d_eager = tfscan.grad(branches_and_loop)(v)

        @tf.function  # a fresh graph: it shares the programs other graphs traced
        def in_graph(v):
            with tf.GradientTape() as tape:
                tape.watch(v)
                loss = branches_and_loop(v)
            return loss, tape.gradient(loss, v)

        loss, d_graph = in_graph(v) if k % 4 == 0 else (branches_and_loop(v), d_eager)
        np.testing.assert_allclose(d_graph.numpy(), d_eager.numpy(), rtol=1e-5, atol=1e-6)
        return np.concatenate([carry.numpy(), ys.numpy().ravel(), [float(g)], j.numpy(), [float(loss)],
                               d_eager.numpy(), d_graph.numpy()])

    serial = [work(k) for k in range(16)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(work, k) for k in list(range(16)) * 3]
        results = [f.result(timeout=600) for f in futures]
    for k, got in enumerate(results):
        np.testing.assert_allclose(got, serial[k % 16], rtol=1e-6, atol=1e-6)
    for name, size in _cache.sizes().items():
        assert size <= _cache.eager_cache(name).maxsize, (name, size)


# -- a fresh closure over a recomputed tensor under a tape or an accumulator -------------------

_TRACES = [0]  # traces of the user's function (a module global: the closure walk keys it by identity)
_XS7 = np.linspace(0.1, 1.0, 7).astype(np.float32)


def _traced_body(c, w, x):
    _TRACES[0] += 1
    return c * w + x


def _program(api, lib):
    """``f(w)`` for one construct; ``lib`` is ``tfscan`` or ``jax.lax``; ``tanh`` of each."""
    import jax
    import jax.numpy as jnp
    tanh, xs = (tf.tanh, tf.constant(_XS7)) if lib == "tf" else (jnp.tanh, jnp.asarray(_XS7))
    L = tfscan if lib == "tf" else jax.lax
    body = lambda c, w, x: tanh(_traced_body(c, w, x))  # noqa: E731
    if api == "jit":
        jit = tfscan.jit if lib == "tf" else jax.jit
        return lambda w: jit(lambda c: body(c, w, 0.3))(xs[0])
    return {
        "scan": lambda w: L.scan(lambda c, x: (body(c, w, x), c), xs[0], xs)[0],
        "fori_loop": lambda w: L.fori_loop(0, 5, lambda i, c: body(c, w, 0.3), xs[0]),
        "while_loop": lambda w: L.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, body(c[1], w, 0.3)),
                                             (0, xs[0]))[1],
        "map": lambda w: (tf.reduce_sum if lib == "tf" else jax.numpy.sum)(L.map(lambda x: body(x, w, 0.3), xs)),
    }[api]


@pytest.mark.parametrize("mode", ["tape", "accumulator"])
@pytest.mark.parametrize("api", ["scan", "fori_loop", "while_loop", "map", "jit"])
def test_fresh_closure_under_a_tape_or_accumulator_traces_once(api, mode):
    """An eager loop whose function closes over a tensor recomputed each iteration, under a
    GradientTape or a ForwardAccumulator: traced once (before, each call traced again: a
    scan's step under an accumulator captured the accumulator's tangent, a jitted function
    under a tape fed its trace's own captures), with JAX's values and derivatives."""
    import jax
    if api == "while_loop" and mode == "tape":
        pytest.skip("reverse mode of a while_loop is an error, as in JAX")
    counts = []
    for i in range(4):
        base = tf.constant(np.float32(0.5 + 0.1 * i))
        f = _program(api, "tf")
        if mode == "tape":
            with tf.GradientTape() as tape:
                tape.watch(base)
                out = f(base * 1.0)
            d = tape.gradient(out, base)
            counts.append(_TRACES[0])  # (JAX's trace below counts too)
            want, want_d = jax.value_and_grad(_program(api, "jax"))(np.float32(0.5 + 0.1 * i))
        else:
            with tf.autodiff.ForwardAccumulator(base, tf.constant(np.float32(1.0 + i))) as acc:
                out = f(base * 1.0)
            d = acc.jvp(out)
            counts.append(_TRACES[0])
            want, want_d = jax.jvp(_program(api, "jax"), (np.float32(0.5 + 0.1 * i),), (np.float32(1.0 + i),))
        np.testing.assert_allclose(out.numpy(), np.asarray(want), rtol=1e-5)
        np.testing.assert_allclose(d.numpy(), np.asarray(want_d), rtol=1e-4, atol=1e-6)
        _TRACES[0] = counts[-1]
    assert counts[-1] == counts[0], f"the function was traced again for a new value: {counts}"


@pytest.mark.parametrize("way", ["nested tapes", "forward over reverse", "reverse over forward",
                                 "forward over forward"])
def test_an_eager_second_derivative_at_a_new_value_traces_no_scan_again(way, monkeypatch):
    """A second derivative of an eager scan, taken again at a new point with a step that
    closes over a tensor recomputed each time: no scan is traced (nor compiled) again.
    Nested tapes and forward over reverse traced and compiled the scans of the gradient's
    own backward pass on every call (0.3-3.9 s a call; their steps close over the scan's
    traced step, which counted by its type only)."""
    import jax
    from conftest import forward_over_forward, forward_over_reverse, nested_tapes, reverse_over_forward
    from tfscan._scan import plan as _plan
    make = {"nested tapes": nested_tapes, "forward over reverse": forward_over_reverse,
            "reverse over forward": reverse_over_forward, "forward over forward": forward_over_forward}[way]
    xs = np.linspace(0.1, 1.0, 7).astype(np.float32)
    plans = []
    init = _plan.Plan.__init__
    monkeypatch.setattr(_plan.Plan, "__init__", lambda self, *a, **k: (plans.append(1), init(self, *a, **k))[1])
    counts = []
    for i in range(3):
        w = tf.constant(np.float32(1.0 + 0.25 * i)) * 1.0  # recomputed each call
        f = lambda a: tf.reduce_sum(tfscan.scan(lambda c, x: (tf.sin(c * a * w) + x, c), a, tf.constant(xs))[1])  # noqa: E731
        got = make(f)(tf.constant(np.float32(0.6 + 0.1 * i)))
        counts.append(len(plans))
        fj = lambda a: jax.numpy.sum(jax.lax.scan(  # noqa: E731
            lambda c, x: (jax.numpy.sin(c * a * np.float32(1.0 + 0.25 * i)) + x, c), a, xs)[1])
        np.testing.assert_allclose(float(got), float(jax.grad(jax.grad(fj))(np.float32(0.6 + 0.1 * i))),
                                   rtol=1e-4, atol=1e-5)
    assert counts[2] == counts[0], f"scans traced again at a new value: {counts}"
