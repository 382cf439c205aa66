"""fori_loop, while_loop, map, associative_scan, cond, switch against jax.lax's functions.

Each program runs through tfscan and through the JAX function of the same name on the
same NumPy inputs: values, structures and dtypes must match, the same inputs must be
errors, and gradients must agree wherever JAX has them.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import tfscan
from conftest import assert_trees_match

Point = collections.namedtuple("Point", ["x", "v"])
f32 = np.float32


def to_tf(tree):
    return jax.tree_util.tree_map(tf.constant, tree)


def raises_both(fn_tf, fn_jax, exc_tf, exc_jax=None, match=None):
    """The same input is an error for both; tfscan's error has type ``exc_tf`` (and ``match``)."""
    with pytest.raises(exc_jax or exc_tf):
        fn_jax()
    with pytest.raises(exc_tf, match=match):
        fn_tf()


# --- fori_loop ---------------------------------------------------------------------

def _fori_body(np_):
    cast = (lambda i: tf.cast(i, tf.float32)) if np_ is tf else (lambda i: i.astype(jnp.float32))

    def body(i, val):
        x, d = val
        return x * f32(0.9) + cast(i), {"s": d["s"] + x.sum() if np_ is jnp else d["s"] + tf.reduce_sum(x),
                                        "n": d["n"] + 1}
    return body


@pytest.mark.parametrize("lower,upper,unroll", [(0, 5, None), (2, 9, 3), (3, 3, None), (5, 2, None),
                                                (0, 4, True), (1, 6, False)])
def test_fori_loop_static_matches_jax(lower, upper, unroll):
    init = (np.arange(3, dtype=f32), {"s": f32(0), "n": np.int32(0)})
    got = tfscan.fori_loop(lower, upper, _fori_body(tf), to_tf(init), unroll=unroll)
    want = jax.lax.fori_loop(lower, upper, _fori_body(jnp), init, unroll=unroll)
    assert_trees_match(got, want)


def test_fori_loop_index_dtype():
    seen = []
    tfscan.fori_loop(0, 3, lambda i, x: (seen.append(i.dtype), x)[1], 0.0)
    tfscan.fori_loop(tf.constant(0, tf.int64), 3, lambda i, x: (seen.append(i.dtype), x)[1], 0.0)
    assert seen == [tf.int32, tf.int64]


def test_fori_loop_dynamic_bounds_match_jax():
    init = (np.arange(3, dtype=f32), {"s": f32(0), "n": np.int32(0)})
    fn = tf.function(lambda lo, hi: tfscan.fori_loop(lo, hi, _fori_body(tf), to_tf(init)),
                     input_signature=[tf.TensorSpec([], tf.int32)] * 2)
    want_fn = jax.jit(lambda lo, hi: jax.lax.fori_loop(lo, hi, _fori_body(jnp), init))
    for lo, hi in [(0, 5), (2, 2), (4, 1)]:
        assert_trees_match(fn(tf.constant(lo), tf.constant(hi)), want_fn(np.int32(lo), np.int32(hi)))


def test_fori_loop_static_gradient_matches_jax():
    x0 = f32(1.3)
    body = lambda np_: lambda i, x: np_.sin(x) * x + f32(0.1)  # noqa: E731
    want = jax.grad(lambda x: jax.lax.fori_loop(0, 4, body(jnp), x))(x0)
    x = tf.constant(x0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tfscan.fori_loop(0, 4, body(tf), x)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), want, rtol=1e-5)


def test_fori_loop_dynamic_bounds_reverse_mode_raises_like_jax():
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.jit(jax.grad(lambda x, n: jax.lax.fori_loop(0, n, lambda i, c: c * 2, x)))(1.0, 3)
    x = tf.constant(1.0)

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def inside(n):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tfscan.fori_loop(0, n, lambda i, c: c * 2.0, x)
        return tape.gradient(y, x)

    with pytest.raises(ValueError, match="fori_loop with static start/stop"):
        inside(tf.constant(3))

    outer = tf.function(lambda n: tfscan.fori_loop(0, n, lambda i, c: c * 2.0, x),
                        input_signature=[tf.TensorSpec([], tf.int32)])
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = outer(tf.constant(3))
        tape.gradient(y, x)


def test_fori_loop_dynamic_bounds_forward_mode_matches_jax():
    want = jax.jit(lambda x, n: jax.jvp(lambda x: jax.lax.fori_loop(0, n, lambda i, c: c * x, x),
                                        (x,), (f32(1),)))(f32(2), 3)

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)])
    def jvp(x, n):
        with tf.autodiff.ForwardAccumulator(x, tf.constant(1.0)) as acc:
            y = tfscan.fori_loop(0, n, lambda i, c: c * x, x)
        return y, acc.jvp(y)

    assert_trees_match(jvp(tf.constant(2.0), tf.constant(3)), want)


def test_fori_loop_errors_match_jax():
    raises_both(lambda: tfscan.fori_loop(0, 3, "body", 0.0), lambda: jax.lax.fori_loop(0, 3, "body", 0.0),
                TypeError, match="body_fun")
    raises_both(lambda: tfscan.fori_loop(tf.constant(0), tf.constant(3, tf.int64), lambda i, x: x, 0.0),
                lambda: jax.lax.fori_loop(jnp.int32(0), jnp.int16(3), lambda i, x: x, 0.0),
                TypeError, match="must have equal types, got int32 and int64")
    dyn = tf.function(lambda n: tfscan.fori_loop(0, n, lambda i, x: x, 0.0, unroll=2),
                      input_signature=[tf.TensorSpec([], tf.int32)])
    raises_both(lambda: dyn(tf.constant(3)),
                lambda: jax.jit(lambda n: jax.lax.fori_loop(0, n, lambda i, x: x, 0.0, unroll=2))(3),
                ValueError, match="unroll")
    raises_both(lambda: tfscan.fori_loop(0, 3, lambda i, x: (x, x), f32(0)),
                lambda: jax.lax.fori_loop(0, 3, lambda i, x: (x, x), f32(0)),
                TypeError, match="fori_loop: .*structure")
    with pytest.raises(TypeError, match=r"init_val\['a'\].*dtypes"):
        # a tensor leaf (a Python 1.0 would take float64, as a JAX weak type does)
        tfscan.fori_loop(0, 3, lambda i, x: {"a": tf.cast(x["a"], tf.float64)}, {"a": tf.constant(1.0)})
    with pytest.raises(TypeError, match="lower must be an integer scalar"):
        tfscan.fori_loop(tf.zeros([2], tf.int32), 3, lambda i, x: x, 0.0)


# --- while_loop --------------------------------------------------------------------

def _while_prog(np_):
    s = (lambda v: v.sum()) if np_ is jnp else tf.reduce_sum

    def cond(c):
        return c["p"].x < f32(50)

    def body(c):
        p = c["p"]
        return {"p": Point(p.x * f32(1.5) + s(p.v), p.v * f32(0.5)), "k": c["k"] + 1, "none": None}
    return cond, body


def test_while_loop_matches_jax():
    init = {"p": Point(f32(1), np.arange(3, dtype=f32)), "k": np.int32(0), "none": None}
    cond_tf, body_tf = _while_prog(tf)
    cond_j, body_j = _while_prog(jnp)
    got = tfscan.while_loop(cond_tf, body_tf, to_tf(init))
    assert_trees_match(got, jax.lax.while_loop(cond_j, body_j, init))
    # Zero iterations, and inside an XLA-compiled function (emitted inline).
    init2 = dict(init, p=Point(f32(60), init["p"].v))
    assert_trees_match(tfscan.while_loop(cond_tf, body_tf, to_tf(init2)),
                       jax.lax.while_loop(cond_j, body_j, init2))
    jitted = tf.function(lambda c: tfscan.while_loop(cond_tf, body_tf, c), jit_compile=True)
    assert_trees_match(jitted(to_tf(init)), jax.lax.while_loop(cond_j, body_j, init))


def test_while_loop_nests_with_scan_cond_and_itself():
    def inner(np_):
        lp = jax.lax if np_ is jnp else tfscan
        return lambda c: lp.while_loop(lambda v: v < f32(10), lambda v: v * f32(2) + c, c)

    def prog(np_):
        lp = jax.lax if np_ is jnp else tfscan

        def body(c):
            i, v = c
            v = lp.cond(i % 2 == 0, lambda u: u + f32(1), lambda u: inner(np_)(u), v)
            v = lp.scan(lambda a, x: (a * f32(0.5) + x, None), v, np_.ones(3, f32) if np_ is jnp
                        else tf.ones(3))[0]
            return i + 1, v
        return lambda x: lp.while_loop(lambda c: c[0] < 5, body, (np.int32(0), x))

    want = prog(jnp)(f32(0.25))
    assert_trees_match(prog(tf)(tf.constant(f32(0.25))), want)
    scanned = tfscan.scan(lambda c, x: (c, inner(tf)(x)), (), tf.constant([1.0, 2.0, 3.0]))[1]
    np.testing.assert_allclose(scanned.numpy(), jax.lax.map(inner(jnp), jnp.array([1.0, 2.0, 3.0], f32)))


def test_while_loop_errors_match_jax():
    raises_both(lambda: tfscan.while_loop(1, lambda c: c, 0), lambda: jax.lax.while_loop(1, lambda c: c, 0),
                TypeError, match="callable")
    raises_both(lambda: tfscan.while_loop(lambda c: c, lambda c: c - 1, 3),
                lambda: jax.lax.while_loop(lambda c: c, lambda c: c - 1, 3),
                TypeError, match="cond_fun must return a boolean scalar")
    raises_both(lambda: tfscan.while_loop(lambda c: c < tf.ones(2), lambda c: c + 1, tf.zeros(2)),
                lambda: jax.lax.while_loop(lambda c: c < jnp.ones(2), lambda c: c + 1, jnp.zeros(2)),
                TypeError, match=r"boolean scalar.*bool\[2\]")
    raises_both(lambda: tfscan.while_loop(lambda c: c[0] < 3, lambda c: [c[0] + 1, c[1]], (0, f32(1))),
                lambda: jax.lax.while_loop(lambda c: c[0] < 3, lambda c: [c[0] + 1, c[1]], (0, f32(1))),
                TypeError, match="same structure")
    raises_both(lambda: tfscan.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1][:1]), (0, np.ones(2, f32))),
                lambda: jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1][:1]), (0, np.ones(2, f32))),
                TypeError, match=r"init_val\[1\].*shapes")
    raises_both(lambda: tfscan.while_loop(lambda c: c["i"] < 3, lambda c: {"i": c["i"] + 1, "x": tf.cast(c["x"], tf.float64)},
                                          {"i": 0, "x": f32(1)}),
                lambda: jax.lax.while_loop(lambda c: c["i"] < 3, lambda c: {"i": c["i"] + 1, "x": c["x"].astype(jnp.float16)},
                                           {"i": 0, "x": f32(1)}),
                TypeError, match=r"init_val\['x'\].*dtypes")


def test_while_loop_reverse_mode_raises_like_jax():
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.grad(lambda x: jax.lax.while_loop(lambda c: c < 10, lambda c: c * 2, x))(1.0)
    x = tf.constant(1.0)
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work for tfscan.while_loop"):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tfscan.while_loop(lambda c: c < 10.0, lambda c: c * 2.0, x)
        tape.gradient(y, x)
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.grad(lambda x: jax.lax.scan(lambda c, v: (c, jax.lax.while_loop(lambda u: u < 10, lambda u: u * 2, v * x)),
                                        (), jnp.ones(3))[1].sum())(1.5)
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        with tf.GradientTape() as tape:
            tape.watch(x)
            ys = tfscan.scan(lambda c, v: (c, tfscan.while_loop(lambda u: u < 10.0, lambda u: u * 2.0, v * x)),
                             (), tf.ones(3))[1]
        tape.gradient(ys, x)


def test_while_loop_forward_mode_matches_jax():
    w0, x0 = f32(1.5), np.array([0.5, 2.0], f32)
    prog = lambda np_, w: lambda c: (c[0] + 1, c[1] * w + np_.sin(c[1]))  # noqa: E731
    cond = lambda c: c[0] < 4  # noqa: E731

    def f_jax(w, x):
        return jax.lax.while_loop(cond, prog(jnp, w), (0, x))[1]

    want = jax.jvp(f_jax, (w0, x0), (f32(0.3), np.ones(2, f32)))
    w, x = tf.Variable(w0), tf.constant(x0)
    with tf.autodiff.ForwardAccumulator([w, x], [tf.constant(f32(0.3)), tf.ones(2)]) as acc:
        y = tfscan.while_loop(cond, prog(tf, w), (0, x))[1]
    assert_trees_match((y, acc.jvp(y)), want)


def test_while_loop_sees_variable_updates_and_disable_jit():
    v = tf.Variable(2.0)
    run = lambda: tfscan.while_loop(lambda c: c < 20.0, lambda c: c * v, 1.0)  # noqa: E731
    assert float(run()) == 32.0
    v.assign(3.0)
    assert float(run()) == 27.0
    with tfscan.disable_jit():
        calls = []
        out = tfscan.while_loop(lambda c: c < 3, lambda c: (calls.append(1), c + 1)[1], 0)
        assert int(out) == 3 and len(calls) == 3


# --- map ---------------------------------------------------------------------------

def _map_fn(np_):
    s = (lambda v: v.sum()) if np_ is jnp else tf.reduce_sum
    return lambda x: {"a": x["u"] * f32(2) + s(x["v"]), "none": None, "b": (x["v"] > 0, s(x["v"] ** 2))}


@pytest.mark.parametrize("batch_size", [None, 0, 1, 2, 3, 5, 7])
def test_map_matches_jax(batch_size):
    rng = np.random.default_rng(batch_size or 0)
    xs = {"u": rng.normal(size=5).astype(f32), "v": rng.normal(size=(5, 3)).astype(f32)}
    got = tfscan.map(_map_fn(tf), to_tf(xs), batch_size=batch_size)
    assert_trees_match(got, jax.lax.map(_map_fn(jnp), xs, batch_size=batch_size))


@pytest.mark.parametrize("batch_size", [None, 2, 4])
def test_gradient_of_a_batched_map_of_a_scan_matches_jax(batch_size):
    """``map(batch_size=k)`` batches ``f`` with ``tfscan.vmap``, as JAX's ``map`` uses ``vmap``:
    with ``tf.vectorized_map`` the gradient through a scan in ``f`` failed to compile ("XLA
    compilation requires a fixed tensor list size")."""
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(f32)

    def loss(lib, w):
        L, total = (tfscan, tf.reduce_sum) if lib == "tf" else (jax.lax, jnp.sum)
        inner = lambda r: L.scan(lambda c, v: (c * w + v, None), r[0] * 0, r)[0]  # noqa: E731
        return total(L.map(inner, x if lib == "jax" else tf.constant(x), batch_size=batch_size))
    want = jax.value_and_grad(lambda w: loss("jax", w))(f32(0.5))
    got = tfscan.value_and_grad(lambda w: loss("tf", w))(f32(0.5))
    np.testing.assert_allclose([float(g) for g in got], [float(w) for w in want], rtol=1e-5)


def test_map_empty_and_compiled():
    xs = np.zeros((0, 2), f32)
    for bs in (None, 2):
        assert_trees_match(tfscan.map(lambda x: x.shape[0] * x, tf.constant(xs), batch_size=bs),
                           jax.lax.map(lambda x: x.shape[0] * x, xs, batch_size=bs))
    xs = np.arange(10, dtype=f32).reshape(5, 2)
    fn = tf.function(lambda x: tfscan.map(lambda r: r[0] * r[1], x, batch_size=2), jit_compile=True)
    assert_trees_match(fn(tf.constant(xs)), jax.lax.map(lambda r: r[0] * r[1], xs, batch_size=2))
    ragged = tf.function(lambda x: tfscan.map(lambda r: tf.reduce_sum(r, 0), x, batch_size=2),
                         input_signature=[tf.TensorSpec([5, None, 3])])
    xs = np.arange(60, dtype=f32).reshape(5, 4, 3)
    assert_trees_match(ragged(tf.constant(xs)), jax.lax.map(lambda r: r.sum(0), xs, batch_size=2))


@pytest.mark.parametrize("batch_size", [None, 2])
def test_map_gradient_matches_jax(batch_size):
    xs0, w0 = np.linspace(-1, 1, 10, dtype=f32).reshape(5, 2), f32(0.7)
    f = lambda np_, w: lambda r: np_.sin(r * w).sum() if np_ is jnp else tf.reduce_sum(tf.sin(r * w))  # noqa: E731
    want = jax.grad(lambda xs, w: jax.lax.map(f(jnp, w), xs, batch_size=batch_size).sum(), (0, 1))(xs0, w0)
    xs, w = tf.constant(xs0), tf.constant(w0)
    with tf.GradientTape() as tape:
        tape.watch([xs, w])
        y = tf.reduce_sum(tfscan.map(f(tf, w), xs, batch_size=batch_size))
    assert_trees_match(tuple(tape.gradient(y, [xs, w])), want, rtol=1e-5)


def test_map_errors_match_jax():
    xs = np.ones((5, 2), f32)
    raises_both(lambda: tfscan.map(3, tf.constant(xs)), lambda: jax.lax.map(3, xs), TypeError, match="callable")
    raises_both(lambda: tfscan.map(lambda x: x, tf.constant(xs), batch_size=-1),
                lambda: jax.lax.map(lambda x: x, xs, batch_size=-1), ValueError, (ValueError, TypeError),
                match="non-negative")
    raises_both(lambda: tfscan.map(lambda x: x, tf.constant(xs), batch_size=2.0),
                lambda: jax.lax.map(lambda x: x, xs, batch_size=2.0), TypeError, match="batch_size")
    raises_both(lambda: tfscan.map(lambda x: 1.0, None), lambda: jax.lax.map(lambda x: 1.0, None), ValueError)
    raises_both(lambda: tfscan.map(lambda x: x, (tf.ones(2), tf.ones(3))),
                lambda: jax.lax.map(lambda x: x, (jnp.ones(2), jnp.ones(3))), ValueError, match="leading axis")


# --- associative_scan --------------------------------------------------------------

def _affine(np_):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2.
    return lambda p, q: (q[0] * p[0], q[0] * p[1] + q[1])


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("reverse", [False, True])
def test_associative_scan_matches_jax(n, reverse):
    rng = np.random.default_rng(n)
    a, b = rng.uniform(0.5, 1.0, size=(n, 2)).astype(f32), rng.normal(size=(n, 2)).astype(f32)
    got = tfscan.associative_scan(_affine(tf), to_tf((a, b)), reverse=reverse)
    assert_trees_match(got, jax.lax.associative_scan(_affine(jnp), (a, b), reverse=reverse), rtol=1e-5)
    ints = np.arange(n, dtype=np.int32) % 5
    got = tfscan.associative_scan(lambda x, y: x * 10 + y, tf.constant(ints), reverse=reverse)
    assert_trees_match(got, jax.lax.associative_scan(lambda x, y: x * 10 + y, ints, reverse=reverse))


def test_associative_scan_axis_pytrees_and_matmul():
    rng = np.random.default_rng(1)
    elems = {"m": rng.normal(size=(2, 5, 3)).astype(f32), "none": None, "b": rng.normal(size=(2, 5)) > 0}
    fn = lambda np_: lambda x, y: {"m": x["m"] + y["m"], "none": None,  # noqa: E731
                                   "b": np_.logical_or(x["b"], y["b"])}
    for axis in (1, -2):
        el = dict(elems, b=elems["b"] if axis == 1 else elems["b"][:, :, None] & np.ones(3, bool))
        got = tfscan.associative_scan(fn(tf.math), to_tf(el), axis=axis)
        assert_trees_match(got, jax.lax.associative_scan(fn(jnp), el, axis=axis))
    mats = rng.normal(size=(6, 2, 2)).astype(f32)
    assert_trees_match(tfscan.associative_scan(tf.matmul, tf.constant(mats)),
                       jax.lax.associative_scan(jnp.matmul, mats), rtol=1e-4, atol=1e-5)


def test_associative_scan_equals_scan_and_is_differentiable():
    rng = np.random.default_rng(2)
    a0, b0 = rng.uniform(0.5, 1.0, size=9).astype(f32), rng.normal(size=9).astype(f32)

    def loss_jax(a, b):
        return (jax.lax.associative_scan(_affine(jnp), (a, b))[1] ** 2).sum()

    want = jax.grad(loss_jax, (0, 1))(a0, b0)
    a, b = tf.constant(a0), tf.constant(b0)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        h = tfscan.associative_scan(_affine(tf), (a, b))[1]
        loss = tf.reduce_sum(h ** 2)
    assert_trees_match(tuple(tape.gradient(loss, [a, b])), want, rtol=1e-4)
    _, h_seq = tfscan.scan(lambda c, ab: (ab[0] * c + ab[1],) * 2, 0.0, (a, b))
    np.testing.assert_allclose(h.numpy(), h_seq.numpy(), rtol=1e-5, atol=1e-6)


def test_associative_scan_errors_match_jax():
    add = lambda x, y: x + y  # noqa: E731
    raises_both(lambda: tfscan.associative_scan(1, tf.ones(4)), lambda: jax.lax.associative_scan(1, jnp.ones(4)),
                TypeError, match="callable")
    raises_both(lambda: tfscan.associative_scan(add, tf.ones((2, 3)), axis=2),
                lambda: jax.lax.associative_scan(add, jnp.ones((2, 3)), axis=2), ValueError, match="out of bounds")
    raises_both(lambda: tfscan.associative_scan(add, tf.constant(1.0)),
                lambda: jax.lax.associative_scan(add, jnp.float32(1)), ValueError, match="out of bounds")
    raises_both(lambda: tfscan.associative_scan(lambda x, y: x, (tf.ones(2), tf.ones(3))),
                lambda: jax.lax.associative_scan(lambda x, y: x, (jnp.ones(2), jnp.ones(3))),
                ValueError, match=r"elems\[0\] has size 2, elems\[1\] has size 3")
    raises_both(lambda: tfscan.associative_scan(lambda x, y: (x, y), tf.ones(4)),
                lambda: jax.lax.associative_scan(lambda x, y: (x, y), jnp.ones(4)),
                TypeError, ValueError, match="structure of elems")
    raises_both(lambda: tfscan.associative_scan(add, None), lambda: jax.lax.associative_scan(add, None),
                ValueError, IndexError, match="no leaves")
    with pytest.raises(TypeError, match=r"dtype float32 for elems\['b'\]"):
        tfscan.associative_scan(lambda x, y: {"a": x["a"], "b": tf.cast(x["b"], tf.float32)},
                                {"a": tf.ones(3), "b": tf.range(3)})
    with pytest.raises(TypeError, match="reverse must be a Python bool"):
        tfscan.associative_scan(add, tf.ones(3), reverse=None)
    dynamic = tf.function(lambda x: tfscan.associative_scan(add, x), input_signature=[tf.TensorSpec([None])])
    with pytest.raises(NotImplementedError, match="known only at run time"):
        dynamic.get_concrete_function()


_OPS = {
    "add": (lambda x, y: x + y, lambda x, y: x + y),
    "max": (lambda x, y: tf.maximum(x, y), lambda x, y: np.maximum(x, y)),
    "affine": (_affine(tf), lambda p, q: (q[0] * p[0], q[0] * p[1] + q[1])),
}


@settings(max_examples=25, deadline=None)
@given(op=st.sampled_from(sorted(_OPS)), n=st.integers(0, 40), width=st.integers(1, 3),
       reverse=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_associative_scan_property_equals_sequential_scan(op, n, width, reverse, seed):
    """For an associative fn the parallel scan equals the left fold (tfscan.scan) and NumPy."""
    rng = np.random.default_rng(seed)
    fn_tf, fn_np = _OPS[op]
    if op == "affine":
        elems = (rng.uniform(-1.2, 1.2, size=(n, width)).astype(f32), rng.normal(size=(n, width)).astype(f32))
    else:
        elems = rng.normal(size=(n, width)).astype(f32)
    got = tfscan.associative_scan(fn_tf, to_tf(elems), reverse=reverse)
    seq = jax.tree_util.tree_map(lambda x: x[::-1] if reverse else x, elems)
    leaves = jax.tree_util.tree_leaves(seq)
    want_leaves = [[] for _ in leaves]
    acc = None
    for t in range(n):
        e = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(seq), [x[t] for x in leaves])
        acc = e if acc is None else fn_np(acc, e)
        for lst, v in zip(want_leaves, jax.tree_util.tree_leaves(acc)):
            lst.append(v)
    want = [np.stack(v) if v else np.zeros((0, width), f32) for v in want_leaves]
    want = [w[::-1] if reverse else w for w in want]
    want = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(elems), want)
    assert_trees_match(got, want, rtol=1e-4, atol=1e-5)
    if n and not reverse:
        first = jax.tree_util.tree_map(lambda x: x[0], to_tf(elems))
        rest = jax.tree_util.tree_map(lambda x: x[1:], to_tf(elems))
        _, ys = tfscan.scan(lambda c, x: (fn_tf(c, x),) * 2, first, rest)
        tail = jax.tree_util.tree_map(lambda g: g[1:], got)
        assert_trees_match(tail, jax.tree_util.tree_map(lambda y: y.numpy(), ys), rtol=1e-4, atol=1e-5)


# --- cond and switch ---------------------------------------------------------------

def _branches(np_):
    s = (lambda v: v.sum()) if np_ is jnp else tf.reduce_sum
    return [lambda x, d: {"y": x * f32(2), "t": (s(x), d["k"] + 1)},
            lambda x, d: {"y": x - d["w"], "t": (s(x) * f32(0), d["k"] * 2)},
            lambda x, d: {"y": -x, "t": (s(x ** 2), d["k"])}]


@pytest.mark.parametrize("pred", [True, False, 0, 3, np.float32(0.5), np.bool_(False)])
def test_cond_matches_jax(pred):
    x, d = np.arange(3, dtype=f32), {"k": np.int32(4), "w": f32(0.5)}
    t_tf, f_tf = _branches(tf)[:2]
    t_j, f_j = _branches(jnp)[:2]
    got = tfscan.cond(pred, t_tf, f_tf, tf.constant(x), to_tf(d))
    assert_trees_match(got, jax.lax.cond(pred, t_j, f_j, x, d))


@pytest.mark.parametrize("index", [-5, 0, 1, 2, 3, 100])
def test_switch_matches_jax_and_clamps(index):
    x, d = np.arange(3, dtype=f32), {"k": np.int32(4), "w": f32(0.5)}
    got = tfscan.switch(index, _branches(tf), tf.constant(x), to_tf(d))
    assert_trees_match(got, jax.lax.switch(index, _branches(jnp), x, d))
    traced = tf.function(lambda i: tfscan.switch(i, _branches(tf), tf.constant(x), to_tf(d)),
                         input_signature=[tf.TensorSpec([], tf.int64)])
    assert_trees_match(traced(tf.constant(index, tf.int64)), jax.lax.switch(index, _branches(jnp), x, d))


def test_switch_single_branch_and_no_outputs():
    assert float(tfscan.switch(7, [lambda v: v + 1.0], 1.0)) == jax.lax.switch(7, [lambda v: v + 1.0], 1.0)
    assert tfscan.switch(1, [lambda: None, lambda: None]) is None
    assert tfscan.cond(True, lambda: (), lambda: ()) == ()


def test_cond_and_switch_gradients_match_jax():
    x0, w0 = np.array([0.3, -1.2], f32), f32(1.7)
    br = lambda np_, w: [lambda x: np_.sin(x) * w, lambda x: x ** 2 * w, lambda x: x * f32(0)]  # noqa: E731
    for i in (0, 1, 2):
        want = jax.grad(lambda x, w: jax.lax.switch(i, br(jnp, w), x).sum(), (0, 1))(x0, w0)
        x, w = tf.constant(x0), tf.constant(w0)
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = tf.reduce_sum(tfscan.switch(i, br(tf, w), x))
        assert_trees_match(tuple(tape.gradient(y, [x, w])), want, rtol=1e-5)
    want = jax.jvp(lambda x: jax.lax.cond(x[0] > 0, lambda v: jnp.sin(v), lambda v: v, x), (x0,), (np.ones(2, f32),))
    x = tf.constant(x0)
    with tf.autodiff.ForwardAccumulator(x, tf.ones(2)) as acc:
        y = tfscan.cond(x[0] > 0, tf.sin, lambda v: v, x)
    assert_trees_match((y, acc.jvp(y)), want)


def test_cond_switch_errors_match_jax():
    x = np.ones(3, f32)
    raises_both(lambda: tfscan.cond(True, lambda v: (v, {"h": v}), lambda v: (v, {"h": v[0]}), tf.constant(x)),
                lambda: jax.lax.cond(True, lambda v: (v, {"h": v}), lambda v: (v, {"h": v[0]}), x),
                TypeError, match=r"output\[1\]\['h'\] has type float32\[3\].*float32\[\], so the shapes")
    raises_both(lambda: tfscan.cond(True, lambda v: (v, v), lambda v: [v, v], tf.constant(x)),
                lambda: jax.lax.cond(True, lambda v: (v, v), lambda v: [v, v], x),
                TypeError, match="same pytree structure")
    raises_both(lambda: tfscan.cond(True, lambda v: {"a": v}, lambda v: {"b": v}, tf.constant(x)),
                lambda: jax.lax.cond(True, lambda v: {"a": v}, lambda v: {"b": v}, x),
                TypeError, match="same pytree structure")
    raises_both(lambda: tfscan.switch(0, [lambda v: v, lambda v: tf.cast(v, tf.int32)], tf.constant(x)),
                lambda: jax.lax.switch(0, [lambda v: v, lambda v: v.astype(jnp.int32)], x),
                TypeError, match=r"branches\[0\]'s output has type float32\[3\].*branches\[1\]'s output.*int32\[3\]")
    raises_both(lambda: tfscan.cond(np.array([True]), lambda: 1, lambda: 2),
                lambda: jax.lax.cond(np.array([True]), lambda: 1, lambda: 2), TypeError, match="scalar")
    raises_both(lambda: tfscan.cond(None, lambda: 1, lambda: 2), lambda: jax.lax.cond(None, lambda: 1, lambda: 2),
                TypeError, match="pred is None")
    raises_both(lambda: tfscan.cond("a", lambda: 1, lambda: 2), lambda: jax.lax.cond("a", lambda: 1, lambda: 2),
                TypeError, match="scalar")
    raises_both(lambda: tfscan.cond(True, 1, 2), lambda: jax.lax.cond(True, 1, 2), TypeError, match="callable")
    raises_both(lambda: tfscan.switch(1, [], 1.0), lambda: jax.lax.switch(1, [], 1.0), ValueError, match="empty")
    raises_both(lambda: tfscan.switch(1.0, [lambda v: v] * 2, 1.0), lambda: jax.lax.switch(1.0, [lambda v: v] * 2, 1.0),
                TypeError, match="integer")
    raises_both(lambda: tfscan.switch(True, [lambda v: v] * 2, 1.0), lambda: jax.lax.switch(True, [lambda v: v] * 2, 1.0),
                TypeError, match="integer")
    raises_both(lambda: tfscan.switch(np.array([1]), [lambda v: v] * 2, 1.0),
                lambda: jax.lax.switch(np.array([1]), [lambda v: v] * 2, 1.0), TypeError, match="scalar")
    raises_both(lambda: tfscan.switch(1, [lambda v: v, 3], 1.0), lambda: jax.lax.switch(1, [lambda v: v, 3], 1.0),
                TypeError, match="sequence of callables")


def test_cond_disable_jit_runs_only_the_selected_branch():
    calls = []
    with tfscan.disable_jit():
        out = tfscan.cond(tf.constant(False), lambda: calls.append("t") or 1, lambda: calls.append("f") or 2)
    assert out == 2 and calls == ["f"]


def test_disable_jit_returns_what_the_compiled_call_returns():
    """A Python number from a branch comes back as a tensor, and a Python int init takes the
    step's float dtype (weak type), under ``disable_jit`` as compiled (JAX's ``disable_jit``
    too): a Python float and TensorFlow's dtype error before."""
    def run():
        return (tfscan.cond(True, lambda: 1.0, lambda: 2.0), tfscan.switch(1, [lambda: 1.0, lambda: 2.0]),
                tfscan.scan(lambda c, x: (c + x, None), 0, tf.ones(3))[0])
    compiled = run()
    with tfscan.disable_jit():
        eager = run()
    for a, b in zip(compiled, eager):
        assert isinstance(b, tf.Tensor) and b.dtype == a.dtype == tf.float32
        assert float(a) == float(b)
