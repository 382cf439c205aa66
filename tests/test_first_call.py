"""What a first call traces and compiles (issue 14, items 1 and 5): no work the result does not need.

Counts, never times: how often the user's step is traced, and what the compiled program returns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import assert_trees_match, clear_programs
from tfscan._core import cache

B, T, I, H = 4, 6, 3, 5


def _fresh():
    clear_programs()  # traced afresh: cached programs would hide the tracing


def _latest_jit_program():
    entries = cache.eager_cache("jit")._data  # most recently used last
    return next(reversed(entries.values())).concrete


def test_grad_compiles_only_the_gradients():
    """``jax.grad`` never computes the loss's value; nor does ``tfscan.grad``'s program (it
    returned the value too, and XLA compiled the reduction nothing read)."""
    _fresh()
    rng = np.random.default_rng(0)
    a, xs = 0.7, rng.normal(size=T)

    def loss_tf(a, xs):
        return tf.reduce_sum(tfscan.scan(lambda c, x: (tf.tanh(a * c + x),) * 2, tf.constant(0.0, tf.float64), xs)[1])

    def loss_jax(a, xs):
        return jnp.sum(jax.lax.scan(lambda c, x: (jnp.tanh(a * c + x),) * 2, 0.0, xs)[1])

    got = tfscan.grad(loss_tf, argnums=(0, 1))(tf.constant(a, tf.float64), tf.constant(xs))
    assert len(_latest_jit_program().outputs) == 2  # d(a), d(xs): no value
    assert_trees_match(got, jax.grad(loss_jax, argnums=(0, 1))(a, xs), rtol=1e-10, atol=1e-12)
    value, got = tfscan.value_and_grad(loss_tf)(tf.constant(a, tf.float64), tf.constant(xs))
    assert len(_latest_jit_program().outputs) == 2  # the value, d(a)
    np.testing.assert_allclose(float(value), float(loss_jax(a, xs)), rtol=1e-10)
    (g, aux) = tfscan.grad(lambda a, xs: (loss_tf(a, xs), {"half": loss_tf(a, xs) / 2}), has_aux=True)(
        tf.constant(a, tf.float64), tf.constant(xs))
    np.testing.assert_allclose(float(aux["half"]), float(loss_jax(a, xs)) / 2, rtol=1e-10)
    np.testing.assert_allclose(float(g), float(jax.grad(loss_jax)(a, xs)), rtol=1e-10)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    p = {"W": rng.normal(size=(H, H)) * 0.4, "U": rng.normal(size=(I, H)) * 0.4, "V": rng.normal(size=(H, 1)) * 0.4}
    return p, rng.normal(size=(B, T, I)), rng.normal(size=(B, T, 1))


def _programs(calls):
    def loss_tf(p, xs, ys):
        def step(h, xy):
            calls.append(1)
            x, y = xy
            h = tf.tanh(tf.linalg.matvec(p["W"], h, transpose_a=True) + tf.linalg.matvec(p["U"], x, transpose_a=True))
            return h, tf.reduce_sum((tf.linalg.matvec(p["V"], h, transpose_a=True) - y) ** 2)
        return tf.reduce_mean(tfscan.scan(step, tf.zeros(H, tf.float64), (xs, ys))[1])

    def loss_jax(p, xs, ys):
        def step(h, xy):
            x, y = xy
            h = jnp.tanh(h @ p["W"] + x @ p["U"])
            return h, jnp.sum((h @ p["V"] - y) ** 2)
        return jnp.mean(jax.lax.scan(step, jnp.zeros(H, jnp.float64), (xs, ys))[1])

    return loss_tf, loss_jax


def test_ported_train_step_traces_the_step_once():
    """``jit(value_and_grad(mean(vmap(scan loss))))``: the per-example scan is replaced whole by
    the batched one (its batching rule), so it saves no residuals and its step's VJP is not
    traced (it was: the step traced twice, once for a VJP nothing used)."""
    _fresh()
    calls: list = []
    loss_tf, loss_jax = _programs(calls)
    p, xs, ys = _data()

    def train_tf(p, xs, ys):
        return tfscan.value_and_grad(lambda p: tf.reduce_mean(tfscan.vmap(loss_tf, in_axes=(None, 0, 0))(p, xs, ys)))(p)

    got = tfscan.jit(train_tf)({k: tf.constant(v) for k, v in p.items()}, tf.constant(xs), tf.constant(ys))
    assert len(calls) == 1
    want = jax.value_and_grad(lambda p: jnp.mean(jax.vmap(loss_jax, in_axes=(None, 0, 0))(p, xs, ys)))(p)
    assert_trees_match(got, want, rtol=1e-10, atol=1e-12)


def test_per_example_vjp_of_vmap_reads_residuals():
    """An eager tape around ``vmap`` takes the vmapped per-example VJP: the function is traced
    again for it, with residuals saved (the batched trace keeps none), and matches JAX."""
    _fresh()
    calls: list = []
    loss_tf, loss_jax = _programs(calls)
    p, xs, ys = _data(1)
    pt = {k: tf.constant(v) for k, v in p.items()}
    with tf.GradientTape() as tape:
        tape.watch(pt)
        value = tf.reduce_sum(tfscan.vmap(loss_tf, in_axes=(None, 0, 0))(pt, tf.constant(xs), tf.constant(ys)) ** 2)
    got = tape.gradient(value, pt)
    want = jax.grad(lambda p: jnp.sum(jax.vmap(loss_jax, in_axes=(None, 0, 0))(p, xs, ys) ** 2))(p)
    assert_trees_match(got, want, rtol=1e-10, atol=1e-12)


def test_ported_train_step_takes_its_data_as_parameters():
    """The batched program's inputs are parameters of the compiled program, not constants: a
    new batch reuses it. (TensorFlow's gradient of the function calls pfor and vmap emitted
    made the forward calls return constants; XLA's constant analysis then made every input,
    the data included, a compile-time constant, and each new batch compiled it all again.)"""
    _fresh()
    loss_tf, loss_jax = _programs([])

    def train_tf(p, xs, ys):
        return tfscan.value_and_grad(lambda p: tf.reduce_mean(tfscan.vmap(loss_tf, in_axes=(None, 0, 0))(p, xs, ys)))(p)

    train = tfscan.jit(train_tf)
    p, xs, ys = _data(2)
    pt = {k: tf.constant(v) for k, v in p.items()}
    text = train.lower(pt, tf.constant(xs), tf.constant(ys)).as_text(stage="optimized_hlo")
    entry = next(line for line in text.splitlines() if line.startswith("ENTRY"))
    assert entry.count(": f64[") == 5, entry  # W, U, V, xs, ys
    for seed in (3, 4):  # new batches through the same program
        _, xs, ys = _data(seed)
        want = jax.value_and_grad(lambda p: jnp.mean(jax.vmap(loss_jax, in_axes=(None, 0, 0))(p, xs, ys)))(p)
        assert_trees_match(train(pt, tf.constant(xs), tf.constant(ys)), want, rtol=1e-10, atol=1e-12)


def _compiled(programs) -> list:
    """``(plan, program)`` names of what a scan's programs, and its JVP loops', compiled eagerly."""
    from tfscan._scan import forward  # noqa: PLC0415 - the JVP loops' cache

    out = [(programs.plan.name, name) for name in programs._concrete]
    for jvp in forward._cache.get(programs, {}).values():
        out += _compiled(jvp.programs)
    return out


def _op_jvps(monkeypatch) -> list:
    """The op types TensorFlow's accumulators trace a JVP function for (not cached yet)."""
    from tensorflow.python.eager import forwardprop  # noqa: PLC0415 - counted, not used

    seen, helper = [], forwardprop._jvp_helper

    def counted(op_name, *args):
        seen.append(op_name)
        return helper(op_name, *args)

    monkeypatch.setattr(forwardprop, "_jvp_helper", counted)
    return seen


def _step_jax(carry, x):
    """JAX's twin of the second-order tests' step ``c = tanh(a c + x)``, ``y = sin(c) c``."""
    c, a = carry
    c = jnp.tanh(a * c + x)
    return (c, a), jnp.sin(c) * c


def test_jvp_of_jvp_compiles_one_program(monkeypatch):
    """A JVP of a JVP of an eager scan (nested accumulators, issue 9's ``compile-jvp2`` row):
    JAX compiles one module for ``jvp(jvp(f))``; tfscan runs one loop, the JVP loop of the JVP
    loop, which gives the values, both accumulators' tangents and the second-order tangents. It
    compiled and ran the first-order JVP loop twice as well (3 programs). The step's own JVP is
    its gradient transposed, built inline: TensorFlow traces no JVP function per op (it traced,
    and then differentiated, one per op type and shape), and the user's step is traced once, as
    JAX traces it once (it was traced for the step, its JVP and the JVP of that)."""
    _fresh()
    traces: list = []
    op_jvps = _op_jvps(monkeypatch)

    def step_tf(carry, x):
        traces.append(1)
        c, a = carry
        c = tf.tanh(a * c + x)  # shapes [2, 3] in float64: no accumulator has a JVP of these cached
        return (c, a), tf.sin(c) * c

    rng = np.random.default_rng(3)
    a, init, xs = rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(T, 2, 3))
    t_outer, t_inner, t_xs = rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(T, 2, 3))
    at, it, xst = tf.constant(a), tf.constant(init), tf.constant(xs)
    with tf.autodiff.ForwardAccumulator((at, it), (tf.constant(t_outer), tf.zeros_like(it))) as outer:
        with tf.autodiff.ForwardAccumulator((at, xst), (tf.constant(t_inner), tf.constant(t_xs))) as inner:
            (c, _), ys = tfscan.scan(step_tf, (it, at), xst)
        t = inner.jvp((c, ys))
    got = (c, ys, t, outer.jvp((c, ys)), outer.jvp(t))

    def f(a, x):
        (c, _), ys = jax.lax.scan(_step_jax, (init, a), x)
        return c, ys

    def first(a, x):
        return jax.jvp(f, (a, x), (t_inner, t_xs))

    (p, tp), (op, otp) = jax.jvp(first, (a, xs), (t_outer, np.zeros_like(xs)))
    assert_trees_match(got, (p[0], p[1], tp, op, otp), rtol=1e-10, atol=1e-12)
    programs = next(reversed(cache.eager_cache("scan")._data.values()))
    assert _compiled(programs) == [("scan_jvp_jvp", "forward_False_None")]
    assert len(traces) == 1  # traced once; its JVP and the JVP of that emit the trace again
    assert not {"Tanh", "Sin", "Mul", "AddV2"} & set(op_jvps)


def test_first_gradient_traces_the_step_once():
    """JAX traces a step once and linearizes the trace; tfscan's step VJP emits the plan's trace
    again instead of calling the step a second time (it did: 2 traces) when the step is pure ops.
    ``tfscan.grad`` compiles one program; an eager tape two (forward with residuals, backward)."""
    _fresh()
    traces: list = []

    def loss_tf(a, xs):
        def step(c, x):
            traces.append(1)
            c = tf.tanh(a * c + x)
            return c, c * c
        return tf.reduce_sum(tfscan.scan(step, tf.zeros_like(a), xs)[1])

    def loss_jax(a, xs):
        return jnp.sum(jax.lax.scan(lambda c, x: (jnp.tanh(a * c + x), jnp.tanh(a * c + x) ** 2),
                                    jnp.zeros_like(a), xs)[1])

    rng = np.random.default_rng(4)
    a, xs = rng.normal(size=(3,)), rng.normal(size=(T, 3))
    want = jax.grad(loss_jax, argnums=(0, 1))(a, xs)
    got = tfscan.grad(loss_tf, argnums=(0, 1))(tf.constant(a), tf.constant(xs))
    assert_trees_match(got, want, rtol=1e-10, atol=1e-12)
    assert len(traces) == 1
    assert len(_latest_jit_program().outputs) == 2  # one program: d(a), d(xs)

    traces.clear()
    at, xst = tf.constant(a[None]), tf.constant(xs[:, None])  # new shapes: traced afresh
    with tf.GradientTape() as tape:
        tape.watch((at, xst))
        value = loss_tf(at, xst)
    got = tape.gradient(value, (at, xst))
    assert len(traces) == 1
    assert_trees_match(got, jax.grad(loss_jax, argnums=(0, 1))(a[None], xs[:, None]), rtol=1e-10, atol=1e-12)
    programs = next(reversed(cache.eager_cache("scan")._data.values()))
    assert sorted(name.split("_")[0] for name in programs._concrete) == ["backward", "forward"]


def _jvp_plans(programs):
    """A scan's programs, then its JVP loops' (and theirs), as the first call made them."""
    from tfscan._scan import forward  # noqa: PLC0415 - the JVP loops' cache

    yield programs
    for jvp in forward._cache.get(programs, {}).values():
        yield from _jvp_plans(jvp.programs)


def test_jvp_of_jvp_step_is_built_by_forward_rules():
    """A JVP of a JVP differentiates the light step op by op with forward rules, as JAX's JVP
    rules do: the second-order step's trace holds no more compute ops than JAX's jaxpr of
    ``jvp(jvp(step))``. It built each level as the gradient transposed (``tf.gradients``
    twice: 52 ops, half of them dead, against JAX's 28 equations)."""
    _fresh()

    def step_tf(carry, x):
        c, a = carry
        return (tf.tanh(a * c + x), a), c

    def step_jax(carry, x):
        c, a = carry
        return (jnp.tanh(a * c + x), a), c

    a, init, xs = 0.3, 0.1, np.linspace(0.0, 1.0, T, dtype=np.float32)
    at = tf.constant(a)
    with tf.autodiff.ForwardAccumulator(at, tf.constant(1.0)) as outer:
        with tf.autodiff.ForwardAccumulator(at, tf.constant(1.0)) as inner:
            c = tfscan.scan(step_tf, (tf.constant(init), at), tf.constant(xs))[0][0]
        t = inner.jvp(c)
    got = (c, t, outer.jvp(t))

    def final(a):
        return jax.lax.scan(step_jax, (jnp.float32(init), a), xs)[0][0]

    def first(a):
        return jax.jvp(final, (a,), (jnp.float32(1.0),))

    (c, t), (_, tt) = jax.jvp(first, (jnp.float32(a),), (jnp.float32(1.0),))
    assert_trees_match(got, (c, t, tt), rtol=1e-5, atol=1e-6)

    def first_step(c, a, x):
        return jax.jvp(lambda c, a: step_jax((c, a), x), (c, a), (0.0, 1.0))

    def second_step(c, a, x):
        return jax.jvp(lambda c, a: first_step(c, a, x), (c, a), (0.0, 1.0))

    jax_eqns = len(jax.make_jaxpr(second_step)(0.1, 0.3, 0.2).eqns)
    programs = next(reversed(cache.eager_cache("scan")._data.values()))
    plans = {p.plan.name: p.plan for p in _jvp_plans(programs)}
    ops = plans["scan_jvp_jvp"].step._cf.graph.get_operations()
    compute = [op for op in ops if op.type not in ("Placeholder", "Identity", "NoOp", "Const")]
    assert len(compute) <= jax_eqns, sorted(op.type for op in compute)
    assert not [op.name for op in ops if "gradients" in op.name]


def _eager_ops(monkeypatch) -> list:
    """The ops run eagerly from now on (TensorFlow's fast path and its general path)."""
    from tensorflow.python import pywrap_tfe  # noqa: PLC0415 - counted, not used
    from tensorflow.python.eager import execute  # noqa: PLC0415

    seen, fast, slow = [], pywrap_tfe.TFE_Py_FastPathExecute, execute.quick_execute

    def counted_fast(ctx, name, *args):
        seen.append(name)
        return fast(ctx, name, *args)

    def counted_slow(name, *args, **kwargs):
        seen.append(name.decode() if isinstance(name, bytes) else name)
        return slow(name, *args, **kwargs)

    monkeypatch.setattr(pywrap_tfe, "TFE_Py_FastPathExecute", counted_fast)
    monkeypatch.setattr(execute, "quick_execute", counted_slow)
    monkeypatch.setattr(execute, "execute", counted_slow)
    return seen


@pytest.mark.parametrize("seeds", ["one tensor", "two tensors"])
def test_jvp_of_jvp_runs_one_program_alone(monkeypatch, seeds):
    """A JVP of a JVP runs one program, the JVP loop of the JVP loop, and no other op eagerly,
    also when one tensor seeds both accumulators (``s = tf.ones_like(a)`` used twice, as user
    code does; JAX's ``jvp(jvp(f))`` with one tangent). With one seed it compiled and ran the
    first-order JVP loop twice as well (3 programs); with either, accumulators made zeros
    eagerly for every scan input they had no tangent of, and the JVP loop's zero tangents were
    ``ZerosLike`` ops (a process's first ``Fill``/``Cast``/``ZerosLike`` kernels: tens of
    milliseconds of the ``compile-jvp2`` row; JAX's module has them as constants)."""
    _fresh()

    def step_tf(carry, x):
        c, a = carry
        c = tf.tanh(a * c + x)
        return (c, a), tf.sin(c) * c

    rng = np.random.default_rng(5)
    a, init, xs = rng.normal(size=(3, 2)), rng.normal(size=(3, 2)), rng.normal(size=(T, 3, 2))
    at, it, xst = tf.constant(a), tf.constant(init), tf.constant(xs)
    seed_outer = tf.ones_like(at)
    seed_inner = seed_outer if seeds == "one tensor" else tf.ones_like(at)
    ran = _eager_ops(monkeypatch)
    with tf.autodiff.ForwardAccumulator(at, seed_outer) as outer:
        with tf.autodiff.ForwardAccumulator(at, seed_inner) as inner:
            (c, a_out), ys = tfscan.scan(step_tf, (it, at), xst)
        t = inner.jvp((c, a_out, ys))
    got = (c, a_out, ys, t, outer.jvp((c, a_out, ys)), outer.jvp(t))
    monkeypatch.undo()

    def f(a):
        (c, a_out), ys = jax.lax.scan(_step_jax, (init, a), xs)
        return c, a_out, ys

    one = np.ones_like(a)

    def first(a):
        return jax.jvp(f, (a,), (one,))

    (p, tp), (op, otp) = jax.jvp(first, (a,), (one,))
    assert_trees_match(got, (*p, tp, op, otp), rtol=1e-10, atol=1e-12)
    programs = next(reversed(cache.eager_cache("scan")._data.values()))
    assert _compiled(programs) == [("scan_jvp_jvp", "forward_False_None")]
    assert len(ran) == 1 and ran[0].startswith("__inference_build"), ran  # the program, nothing else
