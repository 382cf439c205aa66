"""The short-call fast paths (issue 14, item 6) still see every change a call must see:
a rebound closure cell, a rebound global, a list mutated in place, a tape."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfscan

SCALE = tf.constant(2.0)


def _global_step(c, x):
    return c + SCALE * x, c


def test_a_rebound_closure_cell_is_seen():
    k = 1.0

    def step(c, x):
        return c + k * x, c

    xs = tf.ones(3)
    assert float(tfscan.scan(step, 0.0, xs)[0]) == 3.0
    k = 2.0  # noqa: F841 - read by step through its cell
    assert float(tfscan.scan(step, 0.0, xs)[0]) == 6.0
    assert float(tfscan.jit(lambda xs: tfscan.scan(step, 0.0, xs)[0])(xs)) == 6.0
    k = 3.0  # noqa: F841 - a new jit (as a new jax.jit) traces again and sees it
    assert float(tfscan.jit(lambda xs: tfscan.scan(step, 0.0, xs)[0])(xs)) == 9.0


def test_a_rebound_global_tensor_and_a_mutated_list_are_seen():
    global SCALE
    xs = tf.ones(4)
    assert float(tfscan.scan(_global_step, 0.0, xs)[0]) == 8.0
    old, SCALE = SCALE, tf.constant(0.5)
    try:
        assert float(tfscan.scan(_global_step, 0.0, xs)[0]) == 2.0
    finally:
        SCALE = old
    weights = [1.0]

    def step(c, x):
        return c + weights[0] * x, c

    assert float(tfscan.scan(step, 0.0, xs)[0]) == 4.0
    weights[0] = 5.0
    assert float(tfscan.scan(step, 0.0, xs)[0]) == 20.0


def test_a_tape_started_between_calls_still_records():
    a = tf.constant(0.5)

    def step(c, x):
        return tf.tanh(a * c + x), c

    xs = tf.constant(np.linspace(-1, 1, 5).astype(np.float32))
    tfscan.scan(step, 0.0, xs)  # no tape: the direct call
    with tf.GradientTape() as tape:
        tape.watch(a)
        c, _ = tfscan.scan(step, 0.0, xs)
    assert tape.gradient(c, a) is not None
    ref = 0.0
    for x in xs.numpy():
        ref = np.tanh(0.5 * ref + x)
    np.testing.assert_allclose(float(c), ref, rtol=1e-6)


# -- the fast path (tfscan/_core/fast.py): a call with a known signature skips the checks ------

def _count(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_a_repeated_eager_scan_skips_the_checks_until_its_signature_changes(monkeypatch):
    from tfscan._core import checks

    a = tf.constant(0.5)

    def step(c, x):
        return tf.tanh(a * c + x), c

    xs = tf.constant(np.linspace(-1, 1, 6).astype(np.float32))
    want = tfscan.scan(step, tf.constant(0.0), xs)  # checked, then remembered
    checked = _count(monkeypatch, checks, "scan_length")
    for _ in range(3):
        got = tfscan.scan(step, tf.constant(0.0), xs)
        np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
    assert checked == []
    # Every change of signature is checked again: shape, dtype, structure, static arguments.
    tfscan.scan(step, tf.constant(0.0), xs[:4])
    tfscan.scan(step, [tf.constant(0.0)][0], xs, unroll=2)
    tfscan.scan(step, tf.constant(0.0), xs, unroll=True)
    tfscan.scan(step, tf.constant(0.0), xs, reverse=True)
    assert len(checked) == 4
    with tf.GradientTape():  # a live tape: the recorded path
        tfscan.scan(step, tf.constant(0.0), xs)
    with tfscan.disable_jit():
        tfscan.scan(step, tf.constant(0.0), xs)
    assert len(checked) == 6


def test_the_fast_path_converts_python_numbers_and_keeps_weak_types():
    xs8 = tf.constant([1, 2, 3], tf.int8)

    def add(c, x):
        return c + x, c

    for _ in range(3):
        carry, ys = tfscan.scan(add, 0, xs8)  # a weak int: the step's int8
        assert carry.dtype == tf.int8 and ys.dtype == tf.int8 and int(carry) == 6

    def halve(c, x):
        return c * 0.5 + x, c

    for _ in range(3):
        carry, _ = tfscan.scan(halve, 0.0, tf.ones(2))
        assert carry.dtype == tf.float32 and float(carry) == 1.5
    with pytest.raises(TypeError, match=r"init leaf init"):
        tfscan.scan(halve, "zero", tf.ones(2))  # still the slow path's error, naming the leaf


def test_the_fast_path_reads_variables_at_each_call_and_sees_rebound_cells():
    v = tf.Variable(1.0)
    w = tf.constant(1.0)

    def step(c, x):
        return c * v + w * x, None

    xs = tf.ones(3)
    assert float(tfscan.scan(step, tf.constant(0.0), xs)[0]) == 3.0
    assert float(tfscan.scan(step, tf.constant(0.0), xs)[0]) == 3.0
    v.assign(2.0)
    assert float(tfscan.scan(step, tf.constant(0.0), xs)[0]) == 7.0  # 1, 3, 7
    w = tf.constant(10.0)  # noqa: F841 - read by step through its cell
    assert float(tfscan.scan(step, tf.constant(0.0), xs)[0]) == 70.0


def test_a_repeated_jit_call_skips_the_conversions_until_its_signature_changes(monkeypatch):
    from tfscan._transforms import jit as jit_module

    a = tf.constant(2.0)
    f = tfscan.jit(lambda p, xs: tfscan.scan(lambda c, x: (c * p["w"] + a * x, None), 0.0, xs)[0])
    p, xs = {"w": tf.constant(1.0)}, tf.ones(3)
    assert float(f(p, xs)) == 6.0
    converted = _count(monkeypatch, jit_module, "_to_tensor")
    assert float(f({"w": tf.constant(0.5)}, xs)) == 3.5  # new values, same signature
    assert float(f(p, 2 * xs)) == 12.0
    assert converted == [] and f.trace_count == 1
    assert float(f(p, tf.ones(4))) == 8.0  # a new shape: converted, checked and traced
    assert len(converted) == 2 and f.trace_count == 2
    assert float(f({"w": 1.0}, xs)) == 6.0  # a Python number: a float32 tensor, as before
    assert f.trace_count == 2


def test_a_repeated_eager_call_runs_the_function_op_without_call_flat(monkeypatch):
    """A fast-path call executes the compiled function's op itself (``call_flat``'s Python
    around it was a third of the call); a function with a resource output keeps ``call_flat``,
    which sets the output's handle data. Values against JAX."""
    import jax
    import jax.numpy as jnp
    from tensorflow.python.eager.polymorphic_function import atomic_function

    a = tf.constant(0.5)

    def step(c, x):
        return tf.tanh(a * c + x), c

    xs = np.linspace(-1, 1, 6).astype(np.float32)
    tfscan.scan(step, tf.constant(0.0), tf.constant(xs))
    jitted = tfscan.jit(lambda c, x: tfscan.scan(step, c, x))
    jitted(tf.constant(0.0), tf.constant(xs))
    calls = _count(monkeypatch, atomic_function.AtomicFunction, "call_flat")
    want = jax.lax.scan(lambda c, x: (jnp.tanh(0.5 * c + x), c), jnp.float32(0.0), xs)
    for fn in (lambda c, x: tfscan.scan(step, c, x), jitted):
        got = fn(tf.constant(0.0), tf.constant(xs))
        np.testing.assert_allclose(got[0].numpy(), want[0], rtol=1e-6)
        np.testing.assert_allclose(got[1].numpy(), want[1], rtol=1e-6)
    assert calls == []
    v = tf.Variable(1.0)
    handle = tf.function(lambda: v.handle).get_concrete_function()
    from tfscan import _tf
    assert _tf.call_concrete(handle, [])[0].dtype == tf.resource and len(calls) == 1
