"""Transformations composed with each other, each checked against the same program in JAX.

The first part has one focused test per behaviour of issue #9 (forward mode through
steps that differentiate, compiled functions, conditionals, vmapped nested calls, weak
types); each fails on the code before its fix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import assert_trees_match

FA = tf.autodiff.ForwardAccumulator
f32 = np.float32


def tf_jvp(fn, primal, tangent=1.0):
    """``(fn(primal), d fn . tangent)`` by a ForwardAccumulator around an eager call."""
    x = tf.constant(f32(primal))
    with FA(x, tf.constant(f32(tangent))) as acc:
        out = fn(x)
    return out.numpy(), acc.jvp(out).numpy()


def jax_jvp(fn, primal, tangent=1.0):
    out, t = jax.jvp(fn, (f32(primal),), (f32(tangent),))
    return np.asarray(out), np.asarray(t)


def tf_jvp2(fn, primal):
    """The second derivative by a JVP of a JVP (nested accumulators)."""
    x = tf.constant(f32(primal))
    with FA(x, tf.constant(f32(1.0))) as outer:
        with FA(x, tf.constant(f32(1.0))) as inner:
            out = fn(x)
        t = inner.jvp(out)
    return outer.jvp(t).numpy()


def jax_jvp2(fn, primal):
    first = lambda v: jax.jvp(fn, (v,), (f32(1.0),))[1]  # noqa: E731
    return np.asarray(jax.jvp(first, (f32(primal),), (f32(1.0),))[1])


def close(got, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=atol)


# -- 1. forward mode through a scan whose step calls grad (was silently 0.0) -------------------

def test_jvp_of_scan_whose_step_calls_grad():
    def loop(v):
        return tfscan.scan(lambda x, i: (tfscan.grad(tf.cos)(x), i), v, tf.range(10))[0]

    def jloop(v):
        return jax.lax.scan(lambda x, i: (jax.grad(jnp.cos)(x), i), v, jnp.arange(10))[0]

    got, want = tf_jvp(loop, 0.5), jax_jvp(jloop, 0.5)
    close(got, want)
    assert abs(got[1]) > 0.1  # ~0.3827, the value


def test_jvp_of_scan_whose_step_calls_grad_and_closes_over_the_primal():
    # the tangent of a closed-over tensor reaches the step's own gradient too
    def loop(v):
        return tfscan.scan(lambda c, _: (2 * tf.sin(c * v) + tfscan.grad(tf.cos)(c * v), None),
                           1.3, length=3)[0]

    def jloop(v):
        return jax.lax.scan(lambda c, _: (2 * jnp.sin(c * v) + jax.grad(jnp.cos)(c * v), None),
                            f32(1.3), length=3)[0]

    close(tf_jvp(loop, 0.7), jax_jvp(jloop, 0.7))


def test_jvp_of_scan_whose_step_uses_a_tape_with_zero_unconnected_gradients():
    def gcos(x):
        with tf.GradientTape() as t:
            t.watch(x)
            y = tf.cos(x)
        return t.gradient(y, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    loop = lambda v: tfscan.scan(lambda x, i: (gcos(x), i), v, tf.range(3))[0]  # noqa: E731
    jloop = lambda v: jax.lax.scan(lambda x, i: (jax.grad(jnp.cos)(x), i), v, jnp.arange(3))[0]  # noqa: E731
    close(tf_jvp(loop, 0.5), jax_jvp(jloop, 0.5))


# -- 2. forward mode around a jitted function with a conditional -------------------------------

@pytest.mark.parametrize("kind", ["tf.cond", "cond", "switch"])
def test_jvp_of_jit_with_a_conditional(kind):
    branches = {
        "tf.cond": lambda x: tf.cond(x > 0, lambda: tf.sin(x) * x, lambda: x),
        "cond": lambda x: tfscan.cond(x > 0, lambda y: tf.sin(y) * y, lambda y: y, x),
        "switch": lambda x: tfscan.switch(tf.cast(x > 0, tf.int32), [lambda y: y, lambda y: tf.sin(y) * y], x),
    }
    f = tfscan.jit(branches[kind])
    jf = lambda x: jax.lax.cond(x > 0, lambda y: jnp.sin(y) * y, lambda y: y, x)  # noqa: E731
    close(tf_jvp(f, 0.5), jax_jvp(jf, 0.5))
    close(tf_jvp2(f, 0.5), jax_jvp2(jf, 0.5))
    close(f(tf.constant(f32(-0.5))), jf(f32(-0.5)))
    assert f.trace_count == 1  # the accumulator does not retrace the function


# -- 12. a Python bool returned for a float carry leaf is rejected (JAX: TypeError) -----------

def test_python_bool_for_a_float_carry_is_rejected_as_in_jax():
    with pytest.raises(TypeError, match="equal types"):
        jax.lax.scan(lambda c, _: (True, None), f32(0.0), length=3)
    with pytest.raises(TypeError, match=r"carry leaf carry of init has type float32\[\] but f returned bool\[\]"):
        tfscan.scan(lambda c, _: (True, None), 0.0, length=3)
    with pytest.raises(TypeError, match=r"init_val.*float32\[\] but body_fun returned bool\[\]"):
        tfscan.while_loop(lambda c: c < 1.0, lambda c: True, 0.0)
    with pytest.raises(TypeError, match=r"int32\[\] but f returned float32\[\]"):
        tfscan.scan(lambda c, _: (1.5, None), 0, length=3)  # JAX: a float is no int either
    # a Python number of the leaf's kind still takes its dtype (a weak type in JAX)
    assert tfscan.scan(lambda c, _: (1.5, None), tf.constant(0.0, tf.float16), length=2)[0].dtype == tf.float16


def test_every_mismatched_carry_leaf_is_listed():
    with pytest.raises(TypeError, match=r"2 leaves:[\s\S]*carry\[0\][\s\S]*carry\[1\]"):
        tfscan.scan(lambda c, _: ((True, tf.zeros(2)), None), (0.0, 0.0), length=3)


# -- 13. unroll=0 unrolls fully, as in JAX ------------------------------------------------------

def test_unroll_zero_unrolls_fully():
    xs = np.arange(1.0, 5.0, dtype=f32)
    want = jax.lax.scan(lambda c, x: (c * x + 1, c), f32(1.0), xs, unroll=0)
    got = tfscan.scan(lambda c, x: (c * x + 1, c), 1.0, tf.constant(xs), unroll=0)
    close(got[0], want[0])
    close(got[1], want[1])


# -- 14. a Python scalar in init takes the step's dtype (JAX's weak types) ---------------------

def test_python_scalar_init_takes_the_steps_dtype():
    xs = np.arange(1, 4, dtype=np.int8)
    want = jax.lax.scan(lambda c, x: (c + x, c), 0, xs)
    got = tfscan.scan(lambda c, x: (c + x, c), 0, tf.constant(xs))
    assert got[0].dtype == tf.int8 == want[0].dtype and got[1].dtype == tf.int8
    close(got[0], want[0])
    # a Python-scalar leaf beside tensor leaves; float scalars too
    h = np.ones(3, np.float16)
    want = jax.lax.scan(lambda c, x: ((c[0] + x, c[1] + 1), None), (0.0, np.int32(0)), h)[0]
    got = tfscan.scan(lambda c, x: ((c[0] + x, c[1] + 1), None), (0.0, tf.constant(0)), tf.constant(h))[0]
    assert got[0].dtype == tf.float16 == want[0].dtype and got[1].dtype == tf.int32
    # while_loop: the body's own constant fixes the dtype
    one = np.int8(1)
    want = jax.lax.while_loop(lambda c: c < 3, lambda c: c + one, 0)
    got = tfscan.while_loop(lambda c: c < 3, lambda c: c + tf.constant(1, tf.int8), 0)
    assert got.dtype == tf.int8 == want.dtype and int(got) == int(want) == 3


def test_a_tensor_leaf_never_changes_dtype():
    xs = tf.ones(3, tf.int8)
    with pytest.raises(TypeError):
        jax.lax.scan(lambda c, x: (c + x, None), jnp.int32(0), jnp.ones(3, jnp.int8).astype(jnp.float32))
    with pytest.raises(TypeError):
        tfscan.scan(lambda c, x: (c + x, None), tf.constant(0), xs)
    # a Python int becomes float when the step makes it one (JAX promotes the weak int)
    want = jax.lax.scan(lambda c, x: (c * 0.5, None), 3, jnp.ones(2))[0]
    got = tfscan.scan(lambda c, x: (tf.cast(c, tf.float32) * 0.5, None), 3, xs[:2])[0]
    assert got.dtype == tf.float32
    close(got, want)


# -- 15. fori_loop with float bounds -----------------------------------------------------------

def test_fori_loop_with_whole_float_bounds():
    want = jax.lax.fori_loop(0.0, 3.0, lambda i, c: c + i, 0.0)
    got = tfscan.fori_loop(0.0, 3.0, lambda i, c: c + i, 0.0)
    assert got.dtype == tf.float32  # JAX: float32 (float64 under x64, as the tests run it)
    close(got, want)
    with pytest.raises(TypeError, match="equal types"):
        jax.lax.fori_loop(0, 3.0, lambda i, c: c, 0.0)
    with pytest.raises(TypeError, match="equal types"):
        tfscan.fori_loop(0, 3.0, lambda i, c: c, 0.0)
    with pytest.raises(TypeError, match=r"upper=3\.5 is a float that is not a whole number.*upper=3"):
        tfscan.fori_loop(0.0, 3.5, lambda i, c: c, 0.0)


# -- the pairwise matrix: {scan, fori_loop, while_loop, cond, switch, map} x {jit, grad, jvp, vmap}
#
# Each program maps a float32 vector of 3 to a float32 vector of 3; each transformation is
# applied to it in tfscan and in JAX. Inputs JAX rejects (reverse mode through while_loop)
# must be rejected by tfscan too.

_W = np.array([[0.5, -1.0, 0.25], [1.5, 0.5, -0.5]], f32)


def _programs(lib, inner="none"):
    """``{name: f(x)}`` written once against a small facade over tfscan or jax.lax.

    ``inner`` is how the loop bodies and branches compute ``sin``: directly, through a
    jitted function, or as a gradient (``-grad(sum(cos))``): a transformation nested
    inside the control flow, composed with the one applied outside.
    """
    if lib == "tf":
        scan, fori, while_, cond, switch, map_ = (tfscan.scan, tfscan.fori_loop, tfscan.while_loop,
                                                  tfscan.cond, tfscan.switch, tfscan.map)
        sin, cos, cast_i, W = tf.sin, tf.cos, (lambda b: tf.cast(b, tf.int32)), tf.constant(_W)
        # The switch index reads x through stop_gradient: in a fresh process, TensorFlow's own
        # JVP of a comparison under two nested accumulators in a trace fails (IndexError in
        # concrete_function's _backward_function; a plain tf.function shows it, no tfscan).
        positive = lambda v: tf.stop_gradient(v) > 0  # noqa: E731
        total, jit, grad = tf.reduce_sum, tfscan.jit, tfscan.grad
    else:
        L = jax.lax
        scan, fori, while_, cond, switch, map_ = L.scan, L.fori_loop, L.while_loop, L.cond, L.switch, L.map
        sin, cos, cast_i, W = jnp.sin, jnp.cos, (lambda b: b.astype(jnp.int32)), jnp.asarray(_W)
        positive = lambda v: v > 0  # noqa: E731
        total, jit, grad = jnp.sum, jax.jit, jax.grad
    if inner == "jit":
        sin = jit(sin)
    elif inner == "grad":
        neg_sin = grad(lambda v: total(cos(v)))
        sin = lambda v: -neg_sin(v)  # noqa: E731
    # "closed": the bodies and branches also close over the program's argument ``x`` (the
    # tensor being differentiated or batched), besides taking it through the construct
    sin_of = (lambda v, x: sin(v) * (1.0 + 0.1 * total(x))) if inner == "closed" else (lambda v, x: sin(v))
    return {
        "scan": lambda x: (lambda c, ys: c + total(ys, 0))(*scan(lambda c, w: (sin_of(c, x) * w + c, c * w), x, W)),
        "fori_loop": lambda x: fori(0, 3, lambda i, c: sin_of(c, x) * 1.5 + 0.1, x),
        "while_loop": lambda x: while_(lambda c: c[0] < 3, lambda c: (c[0] + 1, sin_of(c[1], x) * 1.5), (0, x))[1],
        "cond": lambda x: cond(total(x) > 0, lambda y: sin_of(y, x) * y, lambda y: cos(y), x),
        "switch": lambda x: switch(cast_i(positive(x[0])) + cast_i(positive(x[1])), [lambda y: sin_of(y, x), cos, lambda y: y * y], x),
        "map": lambda x: map_(lambda v: sin_of(v, x) * v, x),
    }


_INNER = ("none", "jit", "grad", "closed")
_TF = {inner: _programs("tf", inner) for inner in _INNER}
_JAX = {inner: _programs("jax", inner) for inner in _INNER}
_X = np.array([0.3, -0.7, 1.1], f32)
_XS = np.array([[0.3, -0.7, 1.1], [-0.4, -0.2, 0.9]], f32)  # two examples, different branches
_T = np.array([1.0, -0.5, 2.0], f32)


def _reverse_rejected(name):
    return name == "while_loop"


_PAIRS = ([(name, t, "none") for name in _TF["none"] for t in ("jit", "grad", "jvp", "vmap")]
          + [(name, t, inner) for inner in ("jit", "grad") for name in _TF["none"] for t in ("grad", "jvp", "vmap")]
          + [(name, t, "closed") for name in _TF["none"] for t in ("jit", "grad", "jvp", "vmap")])


# Pairs that do not work yet (README, "Known limitations"); strict, so a fix is noticed.
_KNOWN: dict = {}  # pairs that do not work yet: none today
_PAIRS = [pytest.param(*p, marks=pytest.mark.xfail(strict=True, reason=_KNOWN[p])) if p in _KNOWN else p
          for p in _PAIRS]


@pytest.mark.parametrize("name,transform,inner", _PAIRS)
def test_matrix(name, transform, inner):
    # values, and structure, shapes and dtypes (float32 throughout, as in JAX)
    f, jf = _TF[inner][name], _JAX[inner][name]
    x = tf.constant(_X)
    if transform == "jit":
        assert_trees_match(tfscan.jit(f)(x), jax.jit(jf)(_X))
    elif transform == "grad":
        loss, jloss = (lambda v: tf.reduce_sum(f(v) ** 2)), (lambda v: jnp.sum(jf(v) ** 2))
        if _reverse_rejected(name):
            with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
                jax.grad(jloss)(_X)
            with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
                tfscan.grad(loss)(x)
        else:
            assert_trees_match(tfscan.grad(loss)(x), jax.grad(jloss)(_X), rtol=1e-4, atol=1e-5)
    elif transform == "jvp":
        with FA(x, tf.constant(_T)) as acc:
            out = f(x)
        want = jax.jvp(jf, (_X,), (_T,))
        assert_trees_match(out, want[0])
        assert_trees_match(acc.jvp(out), want[1], rtol=1e-4, atol=1e-5)
    else:
        assert_trees_match(tfscan.vmap(f)(tf.constant(_XS)), jax.vmap(jf)(_XS))


def test_while_loop_body_that_differentiates_under_an_accumulator():
    # the body is traced with the accumulator live: its own tape must still record
    neg_sin = tfscan.grad(tf.cos)
    jneg_sin = jax.grad(jnp.cos)
    f = lambda v: tfscan.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, -neg_sin(c[1]) * 1.5), (0, v))[1]  # noqa: E731
    jf = lambda v: jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, -jneg_sin(c[1]) * 1.5), (0, v))[1]  # noqa: E731
    close(tf_jvp(f, 0.4), jax_jvp(jf, 0.4))


# -- 4. forward mode through cond whose branch closes over the differentiated tensor -----------

def test_jvp_through_cond_closing_over_the_primal():
    jf = lambda v: jax.lax.cond(v > 0, lambda y: y * v, lambda y: y, f32(2.0))  # noqa: E731
    f = tfscan.jit(lambda v: tfscan.cond(v > 0, lambda y: y * v, lambda y: y, tf.constant(2.0)))
    close(tf_jvp(f, 0.5), jax_jvp(jf, 0.5))


def _closing_conditionals(lib):
    """Conditionals whose branches close over the differentiated ``v`` (and a switch over
    three branches), called eagerly: with an operand, without one, and both."""
    cond = tfscan.cond if lib == "tf" else jax.lax.cond
    switch = tfscan.switch if lib == "tf" else jax.lax.switch
    sin = tf.sin if lib == "tf" else jnp.sin
    two = tf.constant(f32(2.0)) if lib == "tf" else f32(2.0)
    return {
        "cond": lambda v: cond(v > 0, lambda o: sin(v) * o, lambda o: o, two),
        "cond_no_operand": lambda v: cond(v > 0, lambda: sin(v) * v, lambda: v),
        "cond_operand_too": lambda v: cond(v > 0, lambda o: sin(v) * o * o, lambda o: o, v),
        "switch": lambda v: switch(1, [lambda o: o, lambda o: sin(v) * o, lambda o: o * v], two),
    }


@pytest.mark.parametrize("name", ["cond", "cond_no_operand", "cond_operand_too", "switch"])
def test_eager_jvp_through_a_conditional_closing_over_the_primal(name):
    # TensorFlow's forward rule of its conditional, traced while an accumulator watched the
    # captured tensor, failed (a tfscan TypeError asked to pass it as an operand); JAX
    # linearizes it. Also a JVP of a JVP (nested accumulators).
    f, jf = _closing_conditionals("tf")[name], _closing_conditionals("jax")[name]
    close(tf_jvp(f, 0.7), jax_jvp(jf, 0.7))
    close(tf_jvp2(f, 0.7), jax_jvp2(jf, f32(0.7)))


@pytest.mark.parametrize("name", ["cond", "switch"])
def test_hessian_vector_product_through_a_conditional_closing_over_the_primal(name):
    # a tape inside an accumulator (forward over reverse), and an accumulator inside a tape
    f, jf = _closing_conditionals("tf")[name], _closing_conditionals("jax")[name]
    x = tf.constant(f32(0.7))
    with FA(x, tf.constant(f32(1.0))) as acc:
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = f(x)
        g = tape.gradient(out, x)
    jgrad = jax.grad(jf)
    close([g, acc.jvp(g)], jax.jvp(jgrad, (f32(0.7),), (f32(1.0),)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        with FA(x, tf.constant(f32(1.0))) as acc:
            out = f(x)
        t = acc.jvp(out)
    close(tape.gradient(t, x), jax.grad(lambda v: jax.jvp(jf, (v,), (f32(1.0),))[1])(f32(0.7)))


def test_jvp_through_a_conditional_closing_over_a_variable_or_a_graph_tensor():
    # a variable the accumulator watches; an accumulator inside a tf.function, the branch
    # closing over the function's argument; a scan step's conditional closing over a tensor
    # the step computes (all raised inside TensorFlow's conditional)
    jf = lambda v: jax.lax.cond(v > 0, lambda o: jnp.sin(v) * o, lambda o: o, f32(2.0))  # noqa: E731
    want = jax_jvp(jf, 0.7)
    v = tf.Variable(f32(0.7))
    with FA(v, tf.constant(f32(1.0))) as acc:
        out = tfscan.cond(v > 0, lambda o: tf.sin(v) * o, lambda o: o, tf.constant(f32(2.0)))
    close((out, acc.jvp(out)), want)

    @tf.function
    def jvp_in_graph(z):
        with FA(z, tf.ones_like(z)) as acc:
            y = tfscan.cond(z > 0, lambda o: tf.sin(z) * o, lambda o: o, tf.constant(f32(2.0)))
        return y, acc.jvp(y)

    close(jvp_in_graph(tf.constant(f32(0.7))), want)

    class Holder:  # a tensor read through an object (the closure walk does not open it)
        pass

    h, x = Holder(), tf.constant(f32(0.7))
    h.z = x
    with FA(x, tf.constant(f32(1.0))) as acc:  # its tangent was silently lost: None
        out = tfscan.cond(x > 0, lambda o: tf.sin(h.z) * o, lambda o: o, tf.constant(f32(2.0)))
    close((out, acc.jvp(out)), want)

    def loop(v, cond, scan, sin):
        def step(c, _):
            w = c * v
            return cond(c > 0, lambda o: sin(w) * o, lambda o: o, c), None
        return scan(step, f32(2.0), length=3)[0]

    close(tf_jvp(lambda v: loop(v, tfscan.cond, tfscan.scan, tf.sin), 0.7),
          jax_jvp(lambda v: loop(v, jax.lax.cond, jax.lax.scan, jnp.sin), 0.7), rtol=1e-5)


# -- 11. a value passed unchanged through control flow stays unbatched under vmap -------------

@pytest.mark.parametrize("kind", ["cond", "scan", "while_loop"])
def test_forwarded_value_stays_unbatched(kind):
    progs = {
        "cond": (lambda x, w: tfscan.cond(x > 0, lambda a, b: (a * 2, b), lambda a, b: (a, b), x, w),
                 lambda x, w: jax.lax.cond(x > 0, lambda a, b: (a * 2, b), lambda a, b: (a, b), x, w)),
        "scan": (lambda x, w: tfscan.scan(lambda c, i: ((c[0] + i, c[1]), None), (x, w), tf.ones(3))[0],
                 lambda x, w: jax.lax.scan(lambda c, i: ((c[0] + i, c[1]), None), (x, w), jnp.ones(3, f32))[0]),
        "while_loop": (lambda x, w: tfscan.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1]), (x, w)),
                       lambda x, w: jax.lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1]), (x, w))),
    }
    f, jf = progs[kind]
    xs, w = np.array([1.0, -1.0], f32), f32(3.0)
    want = jax.vmap(jf, in_axes=(0, None), out_axes=(0, None))(xs, w)
    got = tfscan.vmap(f, in_axes=(0, None), out_axes=(0, None))(tf.constant(xs), tf.constant(w))
    close(got[0], want[0])
    close(got[1], want[1])


@pytest.mark.parametrize("nested", ["jit", "while_loop", "cond"])
def test_vmap_of_a_loop_whose_body_makes_nested_compiled_calls(nested):
    """A scan step calling a jitted function (an inner while_loop, a cond), batched: pfor must
    convert calls of functions the step was re-emitted with (imported, no FuncGraph)."""
    def program(lib):
        if lib == "tf":
            scan, cond, while_, jit, sin = tfscan.scan, tfscan.cond, tfscan.while_loop, tfscan.jit, tf.sin
        else:
            L = jax.lax
            scan, cond, while_, jit, sin = L.scan, L.cond, L.while_loop, jax.jit, jnp.sin
        jsin = jit(sin)

        def step(c, w):
            if nested == "cond":
                c = cond(c[0] > 0, lambda v: sin(v) * w, lambda v: v - w, c)
            elif nested == "jit":
                c = jsin(c) * w + c
            else:
                _, c = while_(lambda a: a[0] < 2, lambda a: (a[0] + 1, a[1] * 0.9 + 0.1), (0, c))
            return c, c * w
        return lambda x: scan(step, x, _W)[0]

    close(tfscan.vmap(program("tf"))(tf.constant(_XS)), jax.vmap(program("jax"))(_XS))


# -- forward mode by JVP loops of their own (not by transposing the VJP) -------------------------

_NS = np.array([2, 3, 1], np.int32)  # run-time loop bounds, one per scan step


def _bounded_inside(lib):
    """``{name: f(x)}``: a scan or while_loop whose body runs a loop with a run-time bound."""
    if lib == "tf":
        scan, fori, while_, sin, ns = tfscan.scan, tfscan.fori_loop, tfscan.while_loop, tf.sin, tf.constant(_NS)
    else:
        L = jax.lax
        scan, fori, while_, sin, ns = L.scan, L.fori_loop, L.while_loop, jnp.sin, jnp.asarray(_NS)
    inner = lambda c, n: fori(0, n, lambda i, u: sin(u) * 1.5 + 0.1, c)  # noqa: E731
    cond = tfscan.cond if lib == "tf" else jax.lax.cond
    switch = tfscan.switch if lib == "tf" else jax.lax.switch
    return {
        "scan": lambda x: scan(lambda c, n: (inner(c, n), c * 2.0), x, ns),
        "while_loop": lambda x: while_(lambda c: c[0] < 3, lambda c: (c[0] + 1, inner(c[1], ns[c[0]])), (0, x))[1],
        "cond": lambda x: cond(x > 0, lambda y: inner(y, ns[1]), lambda y: y * 3.0, x),
        "switch": lambda x: switch(ns[2], [lambda y: y * 3.0, lambda y: inner(y, ns[0]) * y], x),
    }


@pytest.mark.parametrize("name", ["scan", "while_loop", "cond", "switch"])
def test_jvp_through_a_body_that_has_a_run_time_bounded_loop(name):
    # a run-time-bounded fori_loop has no VJP; JAX linearizes it, and so must forward mode
    f, jf = _bounded_inside("tf")[name], _bounded_inside("jax")[name]
    x = tf.constant(f32(0.4))
    with FA(x, tf.constant(f32(1.0))) as acc:
        out = f(x)
    want = jax.jvp(jf, (f32(0.4),), (f32(1.0),))
    jax.tree_util.tree_map(lambda g, w: close(g, w), out, want[0])
    jax.tree_util.tree_map(lambda g, w: close(g, w, rtol=1e-4), acc.jvp(out), want[1])


@pytest.mark.parametrize("name", ["scan", "while_loop", "fori_loop", "map", "cond", "switch"])
def test_second_order_forward_mode(name):
    f, jf = _TF["none"][name], _JAX["none"][name]
    g = lambda v: f(v * tf.constant(_T)) # noqa: E731  (a scalar input direction)
    jg = lambda v: jf(v * _T)  # noqa: E731
    close(tf_jvp2(g, 0.7), jax_jvp2(jg, f32(0.7)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["scan", "cond"])
def test_second_order_forward_mode_through_a_body_with_a_run_time_bounded_loop(name):
    f, jf = _bounded_inside("tf")[name], _bounded_inside("jax")[name]
    first = (lambda v: f(v)[0]) if name == "scan" else f
    jfirst = (lambda v: jf(v)[0]) if name == "scan" else jf
    close(tf_jvp2(first, 0.4), jax_jvp2(jfirst, f32(0.4)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["scan", "cond"])
def test_second_order_forward_mode_with_a_comparison_in_the_body(name):
    # nested accumulators in one trace: the tangent of ``c > -5`` is a call without outputs
    if name == "scan":
        f = lambda v: tfscan.scan(lambda c, _: (tf.sin(c) * tf.cast(c > -5, tf.float32), None), v, length=2)[0]  # noqa: E731
        jf = lambda v: jax.lax.scan(lambda c, _: (jnp.sin(c) * (c > -5).astype(f32), None), v, length=2)[0]  # noqa: E731
    else:
        f = lambda v: tfscan.cond(v > 0, lambda y: tf.sin(y) * tf.cast(y > -5, tf.float32), lambda y: y, v)  # noqa: E731
        jf = lambda v: jax.lax.cond(v > 0, lambda y: jnp.sin(y) * (y > -5).astype(f32), lambda y: y, v)  # noqa: E731
    close(tf_jvp2(f, 0.4), jax_jvp2(jf, f32(0.4)), rtol=1e-5)


def test_jvp_of_scan_reaches_closed_over_tensors_and_variables_and_feeds_new_values():
    v = tf.Variable(0.8)

    def f(x, w):
        return tfscan.scan(lambda c, u: (tf.sin(c * w) * v + u, c * v), x, tf.constant([1.0, -0.5, 2.0]))

    def jf(x, w, v):
        return jax.lax.scan(lambda c, u: (jnp.sin(c * w) * v + u, c * v), x, jnp.array([1.0, -0.5, 2.0], f32))

    for w in (0.3, 1.7):  # a second call closes over a new tensor: its value, not the first one's
        x, wt = tf.constant(f32(0.4)), tf.constant(f32(w))
        with FA([x, wt, v], [tf.constant(f32(1.0)), tf.constant(f32(-2.0)), tf.constant(f32(0.5))]) as acc:
            out = f(x, wt)
        want = jax.jvp(jf, (f32(0.4), f32(w), f32(0.8)), (f32(1.0), f32(-2.0), f32(0.5)))
        for g, ww in zip(jax.tree_util.tree_leaves(acc.jvp(out)), jax.tree_util.tree_leaves(want[1])):
            close(g, ww, rtol=1e-4)


def test_jvp_of_scan_inside_a_tf_function_and_reverse_over_forward():
    xs = tf.constant([1.0, -0.5, 2.0])
    f = lambda x: tfscan.scan(lambda c, u: (tf.sin(c) * u, c), x, xs)[0]  # noqa: E731
    jf = lambda x: jax.lax.scan(lambda c, u: (jnp.sin(c) * u, c), x, jnp.array([1.0, -0.5, 2.0], f32))[0]  # noqa: E731

    @tf.function
    def jvp_in_graph(x):
        with FA(x, tf.ones_like(x)) as acc:
            y = f(x)
        return acc.jvp(y)

    close(jvp_in_graph(tf.constant(f32(0.4))), jax_jvp(jf, 0.4)[1])
    x = tf.constant(f32(0.4))
    with tf.GradientTape() as tape:  # the gradient of the JVP: a VJP of the JVP scan
        tape.watch(x)
        with FA(x, tf.ones_like(x)) as acc:
            y = f(x)
        t = acc.jvp(y)
    jgrad = jax.grad(lambda v: jax.jvp(jf, (v,), (f32(1.0),))[1])(f32(0.4))
    close(tape.gradient(t, x), jgrad, rtol=1e-4)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("name", ["scan", "while_loop", "cond", "switch"])
def test_jvp_of_an_eager_jit_call_holding_a_run_time_bounded_loop(name, order):
    # the jitted call records its own JVP program; TensorFlow's would transpose the call's
    # gradient, which a run-time-bounded loop does not have (it raised the reverse-mode error)
    f, jf = _bounded_inside("tf")[name], _bounded_inside("jax")[name]
    first = (lambda v: f(v)[0]) if name == "scan" else f
    jfirst = (lambda v: jf(v)[0]) if name == "scan" else jf
    if order == 1:
        close(tf_jvp(tfscan.jit(first), 0.4), jax_jvp(jfirst, 0.4), rtol=1e-4)
    else:
        close(tf_jvp2(tfscan.jit(first), 0.4), jax_jvp2(jfirst, f32(0.4)), rtol=1e-4, atol=1e-5)


def test_jvp_of_a_jit_call_holding_a_run_time_bounded_loop_inside_a_tf_function():
    f, jf = _bounded_inside("tf")["cond"], _bounded_inside("jax")["cond"]

    @tf.function
    def jvps(x):
        with FA(x, tf.constant(1.0)) as outer:
            with FA(x, tf.constant(1.0)) as inner:
                out = tfscan.jit(f)(x)
            t = inner.jvp(out)
        return out, t, outer.jvp(t)

    got = jvps(tf.constant(f32(0.4)))
    close(got[:2], jax_jvp(jf, 0.4), rtol=1e-4)
    close(got[2], jax_jvp2(jf, f32(0.4)), rtol=1e-4, atol=1e-5)


def test_jvp_of_an_eager_jit_call_reaches_closed_over_tensors_and_variables():
    # the tangents of what the function closes over (used inside a nested run-time-bounded
    # loop and outside it) reach the jitted call's own JVP program
    v, w = tf.Variable(0.7), tf.constant(1.3)
    f = tfscan.jit(lambda x: tfscan.fori_loop(0, tf.constant(3), lambda i, u: tf.sin(u * w) * v + 0.1, x) * w)

    def jf(x, wv, vv):
        return jax.lax.fori_loop(0, jnp.asarray(3), lambda i, u: jnp.sin(u * wv) * vv + 0.1, x) * wv

    x = tf.constant(f32(0.4))
    for k, src in enumerate([x, w, v]):
        with FA(src, tf.constant(f32(1.0))) as acc:
            out = f(x)
        want = jax.jvp(jf, (f32(0.4), f32(1.3), f32(0.7)), tuple(f32(i == k) for i in range(3)))
        close((out, acc.jvp(out)), want, rtol=1e-4)
    assert f.trace_count == 1


def test_hessian_vector_product_through_an_eager_jit_call():
    # forward over reverse: the tape takes the call's own VJP program, whose JVP the
    # accumulator takes (it failed inside TensorFlow with an InternalError)
    v, w = tf.Variable([0.7, -0.2]), tf.constant([1.3, 0.4])
    f = tfscan.jit(lambda x: tf.reduce_sum(tfscan.scan(lambda c, u: (tf.sin(c * w) * v + u, c), x,
                                                       tf.ones(3))[0] ** 2) * tf.reduce_sum(w))

    def jf(x, wv, vv):
        ys = jax.lax.scan(lambda c, u: (jnp.sin(c * wv) * vv + u, c), x, jnp.ones(3, jnp.float32))[0]
        return jnp.sum(ys ** 2) * jnp.sum(wv)

    x = tf.constant([0.4, 0.9])
    primals, tangents = [x, w, v], [tf.constant([1.0, -0.5]), tf.constant([0.3, 0.2]), tf.constant([-1.0, 0.5])]
    with FA(primals, tangents) as acc:
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            out = f(x)
        grads = tape.gradient(out, primals)
    want = jax.jvp(jax.grad(jf, argnums=(0, 1, 2)), tuple(np.asarray(p) for p in primals),
                   tuple(t.numpy() for t in tangents))
    close(grads, want[0], rtol=1e-4)
    close([acc.jvp(g) for g in grads], want[1], rtol=1e-4, atol=1e-5)


# -- 4 (continued). a tf.cond in a jitted function closing over the differentiated tensor ------

def test_jvp_through_a_tf_cond_closing_over_an_eager_tensor():
    # Traced on a thread of its own (no accumulator sees the trace's captures), the jitted
    # function takes its own compiled JVP: first and second order as in JAX (before: a
    # TypeError naming the fix; TensorFlow's forward rule of tf.cond fails on such captures).
    for v in (0.5, 1.5):
        x = tf.constant(f32(v))
        jt = tfscan.jit(lambda c: tf.cond(c > 0, lambda: c * x * x, lambda: c))
        with FA(x, tf.constant(f32(1.0))) as outer:
            with FA(x, tf.constant(f32(1.0))) as inner:
                out = jt(tf.constant(f32(2.0)))
            t = inner.jvp(out)
        jf = lambda xx: jax.jit(lambda c: jax.lax.cond(c > 0, lambda: c * xx * xx, lambda: c))(f32(2.0))  # noqa: E731
        close(out, jf(f32(v)))
        close(t, jax_jvp(jf, v)[1])
        close(outer.jvp(t), jax_jvp2(jf, v))


# -- 7 (continued). an eager jit call holding a conditional and a run-time-bounded loop --------

def _conditional_then_loop(lib, kind):
    cond = tfscan.cond if lib == "tf" else jax.lax.cond
    fori = tfscan.fori_loop if lib == "tf" else jax.lax.fori_loop
    sin = tf.sin if lib == "tf" else jnp.sin

    def f(a, n):
        if kind == "tf.cond":
            b = tf.cond(a > 0, lambda: sin(a) * 2, lambda: a) if lib == "tf" else \
                jax.lax.cond(a > 0, lambda: sin(a) * 2, lambda: a)
        else:  # a tfscan conditional closing over a tensor of the trace
            w = sin(a) * 2
            b = cond(a > 0, lambda o: o * w, lambda o: o, a)
        return fori(0, n, lambda i, c: c * b, f32(1.0))
    return f


@pytest.mark.parametrize("kind", ["tf.cond", "tfscan.cond"])
def test_jvp_of_an_eager_jit_call_holding_a_conditional_and_a_run_time_bounded_loop(kind):
    # it fell back to TensorFlow's forward mode of the whole call, which raised the loop's
    # reverse-mode error; JAX linearizes it
    f = tfscan.jit(_conditional_then_loop("tf", kind))
    jf = _conditional_then_loop("jax", kind)
    close(tf_jvp(lambda v: f(v, tf.constant(3)), 0.7), jax_jvp(lambda v: jf(v, jnp.int32(3)), 0.7), rtol=1e-5)
    if kind == "tfscan.cond":  # second order too
        close(tf_jvp2(lambda v: f(v, tf.constant(3)), 0.7), jax_jvp2(lambda v: jf(v, jnp.int32(3)), f32(0.7)),
              rtol=1e-5)
    else:  # TensorFlow's forward rule of tf.cond fails under nested accumulators: the error names the fix
        with pytest.raises(ValueError, match=r"jit: forward mode .* holds a tf.cond .* first order only .* "
                                             r"Use tfscan.cond/tfscan.switch instead of tf.cond"):
            tf_jvp2(lambda v: f(v, tf.constant(3)), 0.7)


# -- the matrix audit: a jitted function rebound as a global (a notebook cell run again) ------

_REBOUND = None


def test_a_rebound_global_jitted_function_is_not_served_a_stale_program():
    # a global tfscan.jit object was not part of the cache key of a function calling it: a
    # new lambda of the same code got the first program (silently wrong); JAX traces anew
    global _REBOUND
    x = tf.constant(_X)
    for f, jf in [(tf.sin, jnp.sin), (lambda v: tf.cos(v) * v, lambda v: jnp.cos(v) * v)]:
        _REBOUND = tfscan.jit(f)
        got = tfscan.grad(lambda v: tf.reduce_sum(_REBOUND(v) ** 2))(x)
        assert_trees_match(got, jax.grad(lambda v: jnp.sum(jax.jit(jf)(v) ** 2))(_X), rtol=1e-5)
        assert_trees_match(tfscan.jit(lambda v: _REBOUND(v) * 2.0)(x), jax.jit(lambda v: jf(v) * 2.0)(_X))


def test_eager_tape_around_a_jitted_loop_first_traced_inside_grad():
    # the jitted function's trace made inside tfscan.grad's trace was reused by an eager call
    # under a tape: LookupError (no gradient for XlaDynamicUpdateSlice); JAX: the gradient
    f, jf = _TF["none"]["fori_loop"], _JAX["none"]["fori_loop"]
    jitted, x = tfscan.jit(f), tf.constant(_X)
    want = jax.grad(lambda v: jnp.sum(jax.jit(jf)(v) ** 2))(_X)
    assert_trees_match(tfscan.grad(lambda v: tf.reduce_sum(jitted(v) ** 2))(x), want, rtol=1e-5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(jitted(x) ** 2)
    assert_trees_match(tape.gradient(loss, x), want, rtol=1e-5)
