"""``while_loop(..., max_steps=N)``: reverse-mode gradients of a while loop, against JAX.

JAX has no reverse mode for ``lax.while_loop``; its standard workaround is a
``lax.scan`` of length ``N`` whose step does nothing once a ``done`` flag is set. That
program is the oracle here: values and gradients must equal ``jax.grad`` of it, for a
Newton iteration, a fixed-point solve and an ODE integrator with adaptive stopping.
"""

from __future__ import annotations

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import assert_trees_match


def masked_scan_while(cond, body, init, n):
    """JAX's workaround: a scan of ``n`` steps that stops changing the carry once ``cond`` fails."""
    def step(state, _):
        c, done = state
        go = jnp.logical_and(jnp.logical_not(done), cond(c))
        new = body(c)
        c = jax.tree_util.tree_map(lambda a, b: jnp.where(go, a, b), new, c)
        return (c, jnp.logical_not(go)), None
    return jax.lax.scan(step, (init, jnp.asarray(False)), None, length=n)[0][0]


# Three programs, each as (cond, body) for a numpy-like module, with parameters.

def newton(np_, a):  # x <- (x + a / x) / 2 until |x^2 - a| < 1e-10 (the square root of a)
    return (lambda c: np_.abs(c[1] * c[1] - a) > 1e-10,
            lambda c: (c[0] + 1, 0.5 * (c[1] + a / c[1])))


def fixed_point(np_, W, b):  # x <- tanh(W x + b) until the update is below 1e-9
    mv = (lambda W, x: W @ x) if np_ is jnp else tf.linalg.matvec
    norm = (lambda v: jnp.sum(v * v)) if np_ is jnp else (lambda v: tf.reduce_sum(v * v))
    return (lambda c: norm(c["x"] - c["prev"]) > 1e-18,
            lambda c: {"x": np_.tanh(mv(W, c["x"]) + b), "prev": c["x"]})


def ode(np_, k):  # y' = -k y + sin(t), explicit Euler with a step adapted to |y'|, until t >= 2
    def body(c):
        t, y = c
        dy = -k * y + np_.sin(t)
        h = 0.05 / (1.0 + np_.abs(dy))
        return t + h, y + h * dy
    return (lambda c: c[0] < 2.0), body


def _tf_grads(fn, args):
    args = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(args)
        value = fn(*args)
    return value, tape.gradient(value, args)


CASES = {
    "newton": (lambda a, x0: newton(tf, a), lambda a, x0: newton(jnp, a), lambda a, x0: (0, x0),
               lambda c: c[1] * 3.0, (np.float64(2.0), np.float64(5.0)), 60),
    "fixed_point": (lambda W, b: fixed_point(tf, W, b), lambda W, b: fixed_point(jnp, W, b),
                    lambda W, b: {"x": b, "prev": b + 1.0},
                    lambda c: c["x"][0] + 2.0 * c["x"][1],
                    (np.array([[0.3, -0.4], [0.2, 0.1]]), np.array([0.5, -0.2])), 200),
    "ode": (lambda k, y0: ode(tf, k), lambda k, y0: ode(jnp, k), lambda k, y0: (y0 * 0.0, y0),
            lambda c: c[1], (np.float64(1.5), np.float64(0.7)), 500),
}


def _losses(case: str, remat):
    """``(tfscan loss, JAX masked-scan loss, args)`` of one of :data:`CASES`."""
    prog_tf, prog_jax, init, out, args, n = CASES[case]

    def f_tf(*a):
        cond, body = prog_tf(*a)
        return out(tfscan.while_loop(cond, body, init(*a), max_steps=n, remat=remat))

    def f_jax(*a):
        cond, body = prog_jax(*a)
        return out(masked_scan_while(cond, body, init(*a), n))
    return f_tf, f_jax, args


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("remat", [False, 7])
def test_gradient_equals_jax_masked_scan(case, remat):
    f_tf, f_jax, args = _losses(case, remat)
    value, grads = _tf_grads(f_tf, args)
    want_value, want = jax.value_and_grad(f_jax, argnums=tuple(range(len(args))))(*args)
    np.testing.assert_allclose(value.numpy(), want_value, rtol=1e-12)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-9, atol=1e-12)
    # Compiled: tfscan.grad (a tape in an XLA function) and tf.gradients (a registered gradient).
    got = tfscan.grad(f_tf, argnums=tuple(range(len(args))))(*args)
    sym = tf.function(lambda *a: tf.gradients(f_tf(*a), list(a)), autograph=False)(*map(tf.constant, args))
    for g, s, w in zip(got, sym, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(s.numpy(), w, rtol=1e-9, atol=1e-12)


def _launch_outputs(graph) -> list[int]:
    return [len(op.outputs) for op in graph.get_operations() if op.type == "XlaLaunch"]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("remat", [False, 7])
def test_inference_saves_no_checkpoints_and_a_gradient_asked_later_matches_jax(case, remat):
    """In a ``tf.function`` where nothing records (inference), the loop runs without its
    ``[N / k, ...]`` checkpoint buffers: one launched op returning the final carry. A
    gradient asked of that graph later (a tape around the call, twice; ``tf.gradients`` of a
    held function's call) makes the same op save them, and the inference function made
    before stays lean. Before, every such graph wrote every carry (``k = 1``) to a buffer
    of ``max_steps`` rows that nothing read."""
    f_tf, f_jax, args = _losses(case, remat)
    f = tf.function(f_tf, autograph=False)
    a = [tf.constant(v) for v in args]
    concrete = f.get_concrete_function(*a)
    n_carry = len(tf.nest.flatten(CASES[case][2](*args)))
    assert _launch_outputs(concrete.graph) == [n_carry]
    want_value, want = jax.value_and_grad(f_jax, argnums=tuple(range(len(args))))(*args)
    np.testing.assert_allclose(f(*a).numpy(), want_value, rtol=1e-12)
    for _ in range(2):  # the op is made to save its checkpoints once
        with tf.GradientTape() as tape:
            tape.watch(a)
            value = f(*a)
        for g, w in zip(tape.gradient(value, a), want):
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-9, atol=1e-12)
        (grown,) = _launch_outputs(concrete.graph)
        assert grown > n_carry  # + the step count and the checkpoints: no second loop
    assert [len(n.attr["Tresults"].list.type) for n in concrete.function_def.node_def
            if n.op == "XlaLaunch"] == [n_carry]  # the inference function: unchanged
    sym = tf.function(lambda *a: tf.gradients(f(*a), list(a)), autograph=False)(*a)
    for s, w in zip(sym, want):
        np.testing.assert_allclose(s.numpy(), w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case,remat", [("newton", False), ("fixed_point", 7), ("ode", "sqrt")])
def test_a_loaded_saved_model_is_differentiated_through_the_loop(case, remat, tmp_path):
    """``tf.saved_model`` saves the loop's gradient (traced once per op, reading that op's
    inputs): a tape around the loaded function's call gets JAX's gradient. Before, the
    saved gradient was ``None`` for every input, silently (no error: the weights of a
    loaded model would not train)."""
    f_tf, f_jax, args = _losses(case, remat)
    module = tf.Module()
    module.f = tf.function(f_tf, autograph=False, input_signature=[tf.TensorSpec(np.shape(v), tf.float64)
                                                                     for v in args])
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    a = [tf.constant(v) for v in args]
    with tf.GradientTape() as tape:
        tape.watch(a)
        value = loaded.f(*a)
    want_value, want = jax.value_and_grad(f_jax, argnums=tuple(range(len(args))))(*args)
    np.testing.assert_allclose(value.numpy(), want_value, rtol=1e-12)
    for g, w in zip(tape.gradient(value, a), want):
        assert g is not None
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-9, atol=1e-12)


def test_a_graph_relaunched_to_save_checkpoints_is_freed_and_relaunched_once():
    """The launched op made to save its checkpoints is remembered weakly (by tensor names:
    tensors would keep its graph alive, 6 graphs of 6 before this), and a second gradient
    of the same graph reads what the first made the op save."""
    w = tf.Variable(0.9)
    jloss = lambda x, w: masked_scan_while(lambda c: c[1] < 20, lambda c: (jnp.sin(w * c[0]) + 0.5, c[1] + 1),
                                           (x, 0), 30)[0]  # noqa: E731
    want = jax.grad(jloss, (0, 1))(0.3, 0.9)
    refs = []
    for _ in range(3):
        @tf.function
        def f(x0):
            return tfscan.while_loop(lambda c: c[1] < 20, lambda c: (tf.sin(w * c[0]) + 0.5, c[1] + 1), (x0, 0),
                                     max_steps=30)[0]
        x0 = tf.constant(0.3)
        f(x0)  # traced with nothing recording: no checkpoints until a gradient asks
        with tf.GradientTape() as tape:
            tape.watch(x0)
            y = f(x0)
        np.testing.assert_allclose([g.numpy() for g in tape.gradient(y, [x0, w])], want, rtol=1e-5, atol=1e-30)
        refs.append(weakref.ref(f.get_concrete_function(x0).graph))
        del f, tape, y
    gc.collect()
    assert [r() for r in refs] == [None] * 3

    @tf.function
    def twice(x0):
        y = tfscan.while_loop(lambda c: c[1] < 20, lambda c: (tf.sin(w * c[0]) + 0.5, c[1] + 1), (x0, 0),
                              max_steps=30)[0]
        first = tf.gradients(y, [x0, w])
        n = [len(op.outputs) for op in y.graph.get_operations() if op.type == "XlaLaunch"]
        second = tf.gradients(y * 2.0, [x0, w])
        assert [len(op.outputs) for op in y.graph.get_operations() if op.type == "XlaLaunch"][: len(n)] == n
        return first, second
    first, second = twice(tf.constant(0.3))
    np.testing.assert_allclose([g.numpy() for g in first], want, rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose([g.numpy() for g in second], 2 * np.asarray(want), rtol=1e-5, atol=1e-30)


def test_stops_at_max_steps_without_error_like_the_masked_scan():
    W = tf.Variable([[0.9, 0.1], [0.05, 0.8]], dtype=tf.float64)

    def f_tf(x0, n):
        body = lambda c: (c[0] + 1, tf.tanh(tf.linalg.matvec(W, c[1])) * 1.3 + 0.1)  # noqa: E731
        i, x = tfscan.while_loop(lambda c: tf.reduce_sum(c[1]) < 5.0, body, (0, x0), max_steps=n, remat="sqrt")
        return tf.reduce_sum(x * x), i

    def f_jax(x0, Wj, n):
        body = lambda c: (c[0] + 1, jnp.tanh(Wj @ c[1]) * 1.3 + 0.1)  # noqa: E731
        _, x = masked_scan_while(lambda c: jnp.sum(c[1]) < 5.0, body, (0, x0), n)
        return jnp.sum(x * x)

    x0 = tf.constant([0.1, 0.2], tf.float64)
    for n in (0, 1, 30):  # this loop never stops by itself: it runs into the bound
        with tf.GradientTape() as tape:
            tape.watch(x0)
            value, steps = f_tf(x0, n)
        assert int(steps) == n
        want = jax.value_and_grad(f_jax, argnums=(0, 1))(x0.numpy(), W.numpy(), n)
        np.testing.assert_allclose(value.numpy(), want[0], rtol=1e-12)
        for g, w in zip(tape.gradient(value, [x0, W]), want[1]):
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-10, atol=1e-14)


def test_a_million_step_bound_costs_the_steps_taken():
    # remat="sqrt": checkpoints every 1000 steps, 2000 carries kept whatever the loop runs.
    def f(x0, a):
        return tfscan.while_loop(lambda c: c[1] < 1e6, lambda c: (c[0] + 1, c[1] * a), (0, x0),
                                 max_steps=10**6, remat="sqrt")

    x0, a = tf.constant(1.0, tf.float64), tf.constant(1.01, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([x0, a])
        steps, y = f(x0, a)
    n = int(steps)
    assert n == int(np.ceil(np.log(1e6) / np.log(1.01)))  # 1389: stopped by cond_fun
    d_x0, d_a = tape.gradient(y, [x0, a])
    np.testing.assert_allclose(d_x0.numpy(), 1.01 ** n, rtol=1e-10)
    np.testing.assert_allclose(d_a.numpy(), n * 1.01 ** (n - 1), rtol=1e-10)


def test_forward_mode_and_vmap_with_per_example_stopping():
    cond = lambda c: c[1] < 10.0  # noqa: E731

    def f_tf(x):
        return tfscan.while_loop(cond, lambda c: (c[0] + 1, c[1] * 1.5 + 0.1), (0, x), max_steps=20, remat=3)

    def f_jax(x):
        return masked_scan_while(cond, lambda c: (c[0] + 1, c[1] * 1.5 + 0.1), (np.int32(0), x), 20)

    xs = np.array([0.5, 2.0, 9.0, 11.0, 1e-3])  # 7, 4, 1, 0 and 20 (the bound) steps
    assert_trees_match(tfscan.vmap(f_tf)(tf.constant(xs)), jax.vmap(f_jax)(xs))
    want = jax.grad(lambda x: jnp.sum(jax.vmap(f_jax)(x)[1]))(xs)
    got = tfscan.grad(lambda x: tf.reduce_sum(tfscan.vmap(f_tf)(x)[1]))(tf.constant(xs))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    x = tf.constant(0.5, tf.float64)
    with tf.autodiff.ForwardAccumulator(x, tf.constant(1.0, tf.float64)) as acc:
        y = f_tf(x)[1]
    np.testing.assert_allclose(acc.jvp(y).numpy(), jax.jvp(lambda x: f_jax(x)[1], (0.5,), (1.0,))[1], rtol=1e-12)


def test_int_leaves_and_disable_jit_stop_at_the_bound():
    x = tf.constant(1.0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        i, y = tfscan.while_loop(lambda c: c[1] < 50.0, lambda c: (c[0] + 1, c[1] * 2.0), (0, x), max_steps=4)
    assert int(i) == 4 and float(y) == 16.0
    assert float(tape.gradient(y, x)) == 16.0  # the int counter in the carry does not get in the way
    with tfscan.disable_jit():
        assert float(tfscan.while_loop(lambda c: c < 50.0, lambda c: c * 2.0, 1.0, max_steps=4)) == 16.0


def test_bounded_while_loop_errors():
    body, cond = (lambda c: c * 2.0), (lambda c: c < 10.0)
    for bad in ("3", -1, True, 2.0, tf.constant(3)):
        with pytest.raises(TypeError, match="while_loop: max_steps must be None or a non-negative Python int"):
            tfscan.while_loop(cond, body, 1.0, max_steps=bad)
    with pytest.raises(ValueError, match=r"while_loop: remat='sqrt' needs max_steps"):
        tfscan.while_loop(cond, body, 1.0, remat="sqrt")
    with pytest.raises(ValueError, match="while_loop: remat=.*binomial.* is not supported with max_steps"):
        tfscan.while_loop(cond, body, 1.0, max_steps=5, remat="binomial")
    with pytest.raises(ValueError, match="while_loop: remat must be"):
        tfscan.while_loop(cond, body, 1.0, max_steps=5, remat="half")
    x = tf.constant(1.0)
    with pytest.raises(ValueError, match="or pass max_steps=N"):  # the unbounded loop still refuses
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tfscan.while_loop(cond, body, x)
        tape.gradient(y, x)

