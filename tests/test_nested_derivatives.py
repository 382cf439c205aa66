"""A loop inside a loop's step, whose inner step closes over the differentiated tensor,
differentiated in every mode: JVP, forward over reverse (a Hessian-vector product),
reverse over forward and forward over forward, eagerly and inside a ``tf.function``.

Each program is written once in tfscan and once in JAX, and each derivative is checked
against JAX's. Three bugs lived here, all silent wrong numbers:

* inside a ``tf.function``, a JVP step closing over a tensor of the function (not an eager
  one) gave the inner loop no tangent for it: first-order forward mode was wrong
  (``3.578`` came out ``1.240``), and so was every second derivative built on it;
* forward over reverse through a nested scan gave ``0``: the tape inside the inner scan's
  second-order gradient recorded nothing while the accumulator transposed it (so did
  ``vmap``'s per-example VJP, which ``tf.gradients`` took out of the accumulator's sight);
* a conditional's VJP branch watched its capture of a closed-over tensor, not the tensor
  that a scan in the branch takes as input: a second derivative through it missed a term.

One raised an error: reverse over forward through a scan whose inner scan's step holds a
``cond``. The inner scan's gradient differentiates a copy of the step's ops (imported into
the loop); the conditional's gradient, a Python function, fed the program it builds the
original step's tensors (of a graph the copy's cannot read): "placeholder ... is not fed".
Another, reverse over forward through a scan over a slice of a closed-over tensor in a
scan's step: TensorFlow's gradient of the slice's JVP (a function call) reads the slice's
strides from the forward call's outputs, which the backward loop received as saved
residuals, run-time values where XLA needs constants ("StridedSliceGrad ... must be a
compile-time constant"); the backward piece now computes such an integer by the call again.

Every case also asserts that each gradient reads saved residuals (no ``RecomputeWarning``):
reverse over forward through a scan in a scan's step recomputed the inner scan's step,
because the trace of its VJP, with the outer JVP's accumulator live, captured the
accumulator's tangent of a closed-over tensor as well.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf

import tfscan
from tfscan._scan.residuals import RecomputeWarning
from conftest import forward_over_forward, forward_over_reverse, jvp, nested_tapes, reverse_over_forward

jax = pytest.importorskip("jax")
jnp = jax.numpy

XS = np.array([0.5, -0.25, 1.0], np.float32)
A = 0.7


def _outer(inner_tf, inner_jx, **kw):
    """``a -> sum of the outer scan's ys``, whose step is ``inner(a, carry) + x``."""
    xs, jxs = tf.constant(XS), jnp.asarray(XS)
    jscan = (lambda f, c, x: jax.lax.scan(jax.checkpoint(f), c, x)) if kw else jax.lax.scan
    return (lambda a: tf.reduce_sum(tfscan.scan(lambda c, x: (inner_tf(a, c) + x, c), a, xs, **kw)[1]),
            lambda a: jnp.sum(jscan(lambda c, x: (inner_jx(a, c) + x, c), a, jxs)[1]))


def _programs():
    xs, jxs = tf.constant(XS), jnp.asarray(XS)
    inner_scan = (lambda a, c: tfscan.scan(lambda d, y: (tf.sin(d * a) + y, d), c, xs)[0],
                  lambda a, c: jax.lax.scan(lambda d, y: (jnp.sin(d * a) + y, d), c, jxs)[0])
    inner_scan_over = lambda a, c, ys: tfscan.scan(lambda d, y: (tf.sin(d * a) + y, d), c, ys)[0]  # noqa: E731
    return {
        "scan in scan": _outer(*inner_scan),
        "scan in scan, remat": _outer(*inner_scan, remat=True),
        "fori_loop in scan": _outer(lambda a, c: tfscan.fori_loop(0, 2, lambda i, u: tf.sin(u * a), c),
                                    lambda a, c: jax.lax.fori_loop(0, 2, lambda i, u: jnp.sin(u * a), c)),
        "vmap in scan": _outer(lambda a, c: tf.reduce_sum(tfscan.vmap(lambda r: tf.sin(r * a * c))(xs)),
                               lambda a, c: jnp.sum(jax.vmap(lambda r: jnp.sin(r * a * c))(jxs))),
        "while_loop in scan": _outer(
            lambda a, c: tfscan.while_loop(lambda s: s[0] < 2, lambda s: (s[0] + 1, tf.sin(s[1] * a)),
                                           (tf.constant(0), c), max_steps=4)[1],
            lambda a, c: jax.lax.fori_loop(0, 2, lambda i, u: jnp.sin(u * a), c)),
        "scan in map": (
            lambda a: tf.reduce_sum(tfscan.map(
                lambda r: tfscan.scan(lambda d, y: (tf.sin(d * a * r) + y, d), r, xs)[0], xs)),
            lambda a: jnp.sum(jax.lax.map(
                lambda r: jax.lax.scan(lambda d, y: (jnp.sin(d * a * r) + y, d), r, jxs)[0], jxs))),
        "scan in vmap": (
            lambda a: tf.reduce_sum(tfscan.vmap(
                lambda r: tfscan.scan(lambda d, y: (tf.sin(d * a * r) + y, d), r, xs)[0])(xs)),
            lambda a: jnp.sum(jax.vmap(
                lambda r: jax.lax.scan(lambda d, y: (jnp.sin(d * a * r) + y, d), r, jxs)[0])(jxs))),
        "scan in cond": (
            lambda a: tfscan.cond(a > 0, lambda u: inner_scan[0](a, u), lambda u: u * a, a),
            lambda a: jax.lax.cond(a > 0, lambda u: inner_scan[1](a, u), lambda u: u * a, a)),
        "scan in cond in scan": _outer(
            lambda a, c: tfscan.cond(c > 0, lambda u: inner_scan[0](a, u), lambda u: u * a, c),
            lambda a, c: jax.lax.cond(c > 0, lambda u: inner_scan[1](a, u), lambda u: u * a, c)),
        "cond in scan in scan": _outer(
            lambda a, c: tfscan.scan(lambda d, y: (tfscan.cond(d > 0, lambda u: tf.sin(u * a), lambda u: u * a, d) + y,
                                                   d), c, xs)[0],
            lambda a, c: jax.lax.scan(lambda d, y: (jax.lax.cond(d > 0, lambda u: jnp.sin(u * a), lambda u: u * a, d)
                                                    + y, d), c, jxs)[0]),
        "scan over a slice in scan": (
            lambda a: tf.reduce_sum(tfscan.scan(
                lambda c, x: (inner_scan_over(a, c, (xs * a)[1:]) + x, c), a, xs)[1]),
            lambda a: jnp.sum(jax.lax.scan(
                lambda c, x: (jax.lax.scan(lambda d, y: (jnp.sin(d * a) + y, d), c, (jxs * a)[1:])[0] + x, c),
                a, jxs)[1])),
        "scan in fori_loop": (
            lambda a: tfscan.fori_loop(0, 2, lambda i, c: tfscan.scan(
                lambda d, y: (tf.sin(d * a) + y, d), c, xs)[0], a),
            lambda a: jax.lax.fori_loop(0, 2, lambda i, c: jax.lax.scan(
                lambda d, y: (jnp.sin(d * a) + y, d), c, jxs)[0], a)),
    }


PROGRAMS = _programs()


# Each case traces its programs afresh: forward over reverse through a scan in a scan was
# once right or wrong depending on which derivative the process had taken first.
pytestmark = pytest.mark.usefixtures("fresh_programs")


# way -> (tfscan derivative, its order)
WAYS = {
    "jvp": (jvp, 1),
    "forward over reverse": (forward_over_reverse, 2),
    "reverse over forward": (reverse_over_forward, 2),
    "forward over forward": (forward_over_forward, 2),
}

# while_loop(max_steps=N) has a first-order reverse mode only (tfscan's error, tested in
# test_second_order): forward over reverse is not asked of it.
# A scan in vmap differentiates slowly (a vmapped per-example VJP, then its JVP): the cases
# that were wrong (0) only.
CASES = [(p, w, m) for p in PROGRAMS for w in WAYS for m in ("eager", "tf.function")
         if not (p == "while_loop in scan" and w == "forward over reverse")
         and not (p == "scan in vmap" and w != "forward over reverse")]


def _expected(program: str, order: int) -> float:
    f = PROGRAMS[program][1]
    return float((jax.grad(f) if order == 1 else jax.grad(jax.grad(f)))(np.float32(A)))


@pytest.mark.parametrize("program, way, mode", CASES)
def test_a_nested_loop_closing_over_the_differentiated_tensor_matches_jax(program, way, mode):
    make, order = WAYS[way]
    derivative = make(PROGRAMS[program][0])
    if mode == "tf.function":
        derivative = tf.function(derivative)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecomputeWarning)  # each gradient reads saved residuals
        got = float(derivative(tf.constant(A)))
    np.testing.assert_allclose(got, _expected(program, order), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("way", ["jvp", "forward over reverse", "reverse over forward", "forward over forward"])
def test_a_nested_scan_in_a_jit_compiled_function_matches_jax(way):
    make, order = WAYS[way]
    got = float(tf.function(make(PROGRAMS["scan in scan"][0]), jit_compile=True)(tf.constant(A)))
    np.testing.assert_allclose(got, _expected("scan in scan", order), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["eager", "tf.function"])
@pytest.mark.parametrize("program", ["scan in cond", "scan in cond in scan", "cond in scan in scan"])
def test_nested_tapes_after_reverse_over_forward_of_the_same_program_match_jax(program, mode):
    # A conditional's program traced for its own derivatives (under the accumulator) was
    # later differentiated by TensorFlow's own gradient (nested tapes, eagerly): "Could not
    # find external tensor capture". Each kind now has a program of its own.
    want = _expected(program, 2)
    for make in (reverse_over_forward, nested_tapes):
        derivative = make(PROGRAMS[program][0])
        if mode == "tf.function":
            derivative = tf.function(derivative)
        np.testing.assert_allclose(float(derivative(tf.constant(A))), want, rtol=2e-5, atol=1e-5)
