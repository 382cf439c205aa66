"""Inside a ``tf.function`` every compiled program tfscan calls is one ``XlaLaunch`` op.

TensorFlow's own call of a ``jit_compile=True`` function (a ``PartitionedCall`` marked
``_XlaMustCompile``) keeps an instantiation of the called function for every graph that
runs it, for the life of the process (``tfscan._tf.launch_compiled``). Scan's loops,
``cond``/``switch``, ``while_loop`` and ``fori_loop`` emit ``XlaLaunch`` ops instead, in the
forward pass, a tape's gradient and a Hessian-vector product alike; fresh graphs share
the traced programs. Values and derivatives are checked against JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan

W0 = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32) * 0.4
V0 = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
H0 = np.random.default_rng(2).standard_normal(4).astype(np.float32)


def _program(lax, W, h, which):
    """The same program for ``lax`` = tfscan (with ``W`` a tf.Variable) or jax.lax."""
    if lax is tfscan:
        step, total, cast = lambda v: tf.tanh(tf.linalg.matvec(W, v)), tf.reduce_sum, lambda i: tf.cast(i, tf.float32)
    else:
        step, total, cast = lambda v: jnp.tanh(W @ v), jnp.sum, lambda i: i.astype(jnp.float32)
    out = 0.0
    if "cond" in which:
        out += total(lax.cond(h[0] > -10.0, step, lambda v: -v, h))
    if "switch" in which:
        out += total(lax.switch(1, [lambda v: -v, step, lambda v: 2.0 * v], h))
    if "fori" in which:
        out += total(lax.fori_loop(0, 3, lambda i, v: step(v) + cast(i), h))
    if "while" in which:
        if lax is tfscan:
            out += total(tfscan.while_loop(lambda c: c[0] < 4, lambda c: (c[0] + 1, step(c[1])), (0, h),
                                           max_steps=6)[1])
        else:  # four steps: JAX reverse-differentiates the same loop as a fori_loop
            out += total(jax.lax.fori_loop(0, 4, lambda i, v: step(v), h))
    return out


def _compiled_calls(graph: tf.Graph) -> list[str]:
    """The function-call ops of ``graph`` that XLA compiles: ``XlaLaunch``, or TensorFlow's
    ``PartitionedCall`` marked ``_XlaMustCompile`` (the call that keeps memory per graph)."""
    calls = []
    for op in graph.get_operations():
        if op.type == "XlaLaunch":
            calls.append("XlaLaunch")
        elif op.type in ("PartitionedCall", "StatefulPartitionedCall") and "_XlaMustCompile" in op.node_def.attr \
                and op.get_attr("_XlaMustCompile"):
            calls.append("must-compile call")
    return calls


@pytest.mark.parametrize("which, mode", [
    (("cond", "switch", "fori", "while"), "forward"),
    (("cond", "switch", "fori", "while"), "grad"),
    (("cond", "switch"), "hvp"),
])
def test_graph_calls_are_xla_launch_ops_with_jax_values(which, mode):
    W = tf.Variable(W0)
    V = tf.constant(V0)

    @tf.function
    def run(h):
        if mode == "forward":
            return [_program(tfscan, W, h, which)]
        if mode == "grad":
            with tf.GradientTape() as t:
                loss = _program(tfscan, W, h, which)
            return [loss, t.gradient(loss, W)]
        with tf.autodiff.ForwardAccumulator(h, V[0]) as acc:  # w.r.t. the operand (README, Known limitations)
            with tf.GradientTape() as t:
                t.watch(h)
                loss = _program(tfscan, W, h, which)
            g = t.gradient(loss, h)
        return [loss, g, acc.jvp(g)]

    got = run(tf.constant(H0))
    calls = _compiled_calls(run.get_concrete_function(tf.TensorSpec([4])).graph)
    # cond/switch and the VJP/JVP conditionals of their own derivatives too: the XlaLaunch
    # op's gradient is tfscan's (a tape outside the tf.function differentiates it)
    assert calls and set(calls) == {"XlaLaunch"}, calls

    if mode == "hvp":
        f = lambda h: _program(jax.lax, W0, h, which)  # noqa: E731
        want = [f(H0), jax.grad(f)(H0), jax.jvp(jax.grad(f), (H0,), (V0[0],))[1]]
    else:
        f = lambda w: _program(jax.lax, w, jnp.asarray(H0), which)  # noqa: E731
        want = [f(W0)] + ([jax.grad(f)(W0)] if mode == "grad" else [])
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype.name == str(b.dtype) and tuple(a.shape) == tuple(b.shape)
        np.testing.assert_allclose(a.numpy(), np.asarray(b), rtol=2e-5, atol=2e-5)


def test_a_loop_invariant_integer_that_may_be_a_shape_keeps_tensorflows_call():
    """An integer the body passes through unchanged may be a compile-time constant of the
    program (here a shape): only TensorFlow's analysis can tell, so that call stays its own;
    a counter the body changes is a run-time value."""

    @tf.function
    def run(x):
        body = lambda c: (c[0] + 1, c[1], c[2] + tf.reduce_sum(tf.ones([c[1]])) * x)  # noqa: E731
        return tfscan.while_loop(lambda c: c[0] < 3, body, (0, 5, 0.0))

    i, n, total = run(tf.constant(2.0))
    assert (int(i), int(n), float(total)) == (3, 5, 30.0)
    want = jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1], c[2] + 5.0 * 2.0), (0, 5, 0.0))
    assert float(total) == float(want[2])
    assert _compiled_calls(run.get_concrete_function(tf.TensorSpec([])).graph) == ["must-compile call"]


def test_fresh_graphs_share_one_traced_conditional():
    """Each fresh tf.function traced (and XLA compiled) the conditional again: a graph's
    calls now reuse the program another graph traced (never one traced eagerly)."""

    def fresh():
        @tf.function
        def g(x):
            with tf.GradientTape() as t:
                t.watch(x)
                y = tfscan.cond(x[0] > 0, lambda v: v * 3.0, lambda v: -v, x)
            return y, t.gradient(y, x)

        y, dx = g(tf.constant([1.0, 2.0]))
        np.testing.assert_allclose(y.numpy(), [3.0, 6.0])
        np.testing.assert_allclose(dx.numpy(), [3.0, 3.0])
        graph = g.get_concrete_function(tf.TensorSpec([2])).graph
        return sorted(op.get_attr("function").name for op in graph.get_operations() if op.type == "XlaLaunch")

    tfscan.cond(tf.constant(True), lambda v: v * 3.0, lambda v: -v, tf.constant([1.0, 2.0]))  # eagerly
    first = fresh()
    assert first
    for _ in range(2):
        assert fresh() == first


@pytest.mark.parametrize("kind", ["cond", "switch", "while_loop", "fori_loop"])
def test_tape_outside_the_tf_function_differentiates_the_compiled_call(kind):
    """A tape around a tf.function call takes the function's gradient, built from the ops'
    registered gradients: a conditional traced while that tape was live must stay a call
    TensorFlow can differentiate (an XlaLaunch op has no gradient: LookupError)."""
    progs = {
        "cond": (lambda x: tfscan.cond(x > 0, tf.sin, lambda y: y * 2.0, x),
                 lambda x: jax.lax.cond(x > 0, jnp.sin, lambda y: y * 2.0, x)),
        "switch": (lambda x: tfscan.switch(1, [lambda y: y, tf.sin], x),
                   lambda x: jax.lax.switch(1, [lambda y: y, jnp.sin], x)),
        "while_loop": (lambda x: tfscan.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, tf.sin(c[1])),
                                                   (0, x), max_steps=5)[1],
                       lambda x: jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c), x)),
        "fori_loop": (lambda x: tfscan.fori_loop(0, 3, lambda i, c: tf.sin(c), x),
                      lambda x: jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c), x)),
    }
    f, jf = progs[kind]
    fn = tf.function(f)
    x = tf.constant(0.5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), jax.grad(jf)(np.float32(0.5)), rtol=1e-5)


def _launch_chain(graph) -> list:
    """``(launch, launch it waits for)`` pairs among ``graph``'s ``XlaLaunch`` ops' control inputs."""
    return [(op.name, c.name) for op in graph.get_operations() if op.type == "XlaLaunch"
            for c in op.control_inputs if c.type == "XlaLaunch"]


def test_independent_launches_are_not_chained_by_automatic_control_dependencies():
    """XlaLaunch is a stateful op type: the tf.function's automatic control dependencies
    chained every launch taking no resource after the previous one, so independent
    programs (the replicas of a MirroredStrategy, two scans of one step) ran one after the
    other. A pure program's launch is now ordered by its data only, as TensorFlow's own
    PartitionedCall of it would be. Values and gradients against JAX."""

    def loss(lax, cos, tanh, total, a, b, xs):
        ca = lax.scan(lambda c, x: (tanh(c * 0.9 + x), c), a, xs)[0]
        cb = lax.scan(lambda c, x: (cos(c) + x, c), b, xs)[0]
        return total(ca * cb)

    @tf.function
    def f(a, b, xs):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            y = loss(tfscan, tf.cos, tf.tanh, tf.reduce_sum, a, b, xs)
        return y, tape.gradient(y, [a, b])

    a, b = np.float32([0.3, -0.2]), np.float32([0.1, 0.5])
    xs = np.linspace(-1, 1, 12, dtype=np.float32).reshape(6, 2)
    concrete = f.get_concrete_function(tf.constant(a), tf.constant(b), tf.constant(xs))
    launches = [op for op in concrete.graph.get_operations() if op.type == "XlaLaunch"]
    assert len(launches) == 4, [op.name for op in launches]  # two forward and two backward programs
    assert _launch_chain(concrete.graph) == []
    y, (da, db) = f(a, b, xs)
    jy, (jda, jdb) = jax.value_and_grad(lambda a, b: loss(jax.lax, jnp.cos, jnp.tanh, jnp.sum, a, b, xs), (0, 1))(a, b)
    np.testing.assert_allclose(y.numpy(), jy, rtol=1e-5)
    np.testing.assert_allclose(da.numpy(), jda, rtol=1e-5)
    np.testing.assert_allclose(db.numpy(), jdb, rtol=1e-5)


def test_launches_of_stateful_programs_keep_their_order():
    """A program holding a stateful op (here TensorFlow's stateful RNG) keeps the order
    automatic control dependencies give it: TensorFlow calls such a function with a
    StatefulPartitionedCall, which they order too."""

    @tf.function
    def f(xs):
        noisy = lambda c, x: (c + x * tf.random.uniform([]), c)
        return (tfscan.scan(noisy, tf.constant(0.0), xs)[0],
                tfscan.scan(lambda c, x: noisy(c, 2.0 * x), tf.constant(1.0), xs)[0])

    graph = f.get_concrete_function(tf.TensorSpec([5])).graph
    assert len(_launch_chain(graph)) == 1, _launch_chain(graph)
