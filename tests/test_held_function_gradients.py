"""A held function, differentiated to first order and then to second order, in fresh graphs.

The everyday pattern: a model's ``tf.function`` (or a ``tfscan.jit``) holding a scan or a
conditional is called by one training step under a tape, and later by another
``tf.function`` that takes a second derivative through it (a Hessian-vector product, a
gradient penalty). TensorFlow's first-order gradient of a function adds the tensors its
backward pass reads to the function graph's outputs, for good; a later higher-order
gradient of the same function differentiates each of them. Every value is checked against
the same program in JAX.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import forward_over_reverse, nested_tapes

jax = pytest.importorskip("jax")
jnp = jax.numpy

XS = np.array([0.5, -0.25, 1.0], np.float32)
A = 0.7


def tf_program(kind):
    xs = tf.constant(XS)
    return {
        "scan": lambda a: tf.reduce_sum(tfscan.scan(lambda c, x: (tf.sin(c * a) + x, c), a, xs)[1]),
        "fori_loop": lambda a: tfscan.fori_loop(0, 3, lambda i, c: tf.sin(c * a) + xs[i], a),
        "map": lambda a: tf.reduce_sum(tfscan.map(lambda r: tf.sin(r * a) * r, xs)),
        "cond": lambda a: tfscan.cond(a > 0, lambda v: tf.sin(v * v), lambda v: v * v, a),
        "switch": lambda a: tfscan.switch(tf.cast(a > 0, tf.int32), [lambda v: v * v, lambda v: tf.sin(v * v)], a),
        "cond_in_step": lambda a: tf.reduce_sum(tfscan.scan(
            lambda c, x: (tfscan.cond(x > 0, lambda u: tf.sin(u * a), lambda u: u * a, c), c), a, xs)[1]),
        "associative_scan": lambda a: tf.reduce_sum(tf.sin(tfscan.associative_scan(lambda u, v: u * v + v, xs * a))),
    }[kind]


def jax_program(kind):
    xs = jnp.asarray(XS)
    return {
        "scan": lambda a: jnp.sum(jax.lax.scan(lambda c, x: (jnp.sin(c * a) + x, c), a, xs)[1]),
        "fori_loop": lambda a: jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c * a) + xs[i], a),
        "map": lambda a: jnp.sum(jax.lax.map(lambda r: jnp.sin(r * a) * r, xs)),
        "cond": lambda a: jax.lax.cond(a > 0, lambda v: jnp.sin(v * v), lambda v: v * v, a),
        "switch": lambda a: jax.lax.switch((a > 0).astype(jnp.int32), [lambda v: v * v, lambda v: jnp.sin(v * v)], a),
        "cond_in_step": lambda a: jnp.sum(jax.lax.scan(
            lambda c, x: (jax.lax.cond(x > 0, lambda u: jnp.sin(u * a), lambda u: u * a, c), c), a, xs)[1]),
        "associative_scan": lambda a: jnp.sum(jnp.sin(jax.lax.associative_scan(lambda u, v: u * v + v, xs * a))),
    }[kind]


def held(kind, holder):
    f = tf_program(kind)
    if holder == "tf.function":
        return tf.function(f)
    if holder == "jit_compile":
        return tf.function(f, jit_compile=True)
    if holder == "tfscan.jit":
        return tfscan.jit(f)
    assert holder == "inline tfscan.jit"  # re-wrapped in each graph: one trace shared by all
    return lambda a: tfscan.jit(tf_program(kind))(a)


def computed(f, mode, eager=False):
    """``mode`` of ``f`` at ``A``, computed by a ``tf.function`` traced for this call only
    (a fresh graph), or eagerly."""
    def g(a):
        if mode == "value":
            return f(a)
        if mode == "grad":
            with tf.GradientTape() as t:
                t.watch(a)
                v = f(a)
            return t.gradient(v, a)
        return (nested_tapes if mode == "grad2" else forward_over_reverse)(f)(a)
    return float((g if eager else tf.function(g))(tf.constant(A)))


def expected(kind, mode):
    f = jax_program(kind)
    fn = {"value": f, "grad": jax.grad(f), "grad2": jax.grad(jax.grad(f)), "hvp": jax.grad(jax.grad(f))}[mode]
    return float(fn(jnp.float32(A)))


KINDS = ["scan", "fori_loop", "map", "cond", "switch", "cond_in_step", "associative_scan"]
FIRST_ORDER_FIRST = ("value", "grad", "grad2", "hvp")


@pytest.mark.parametrize("holder", ["tf.function", "jit_compile", "tfscan.jit", "inline tfscan.jit"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_held_function_differentiated_in_fresh_graphs_to_first_then_second_order_matches_jax(kind, holder):
    f = held(kind, holder)
    for i, mode in enumerate(FIRST_ORDER_FIRST):
        got = computed(f, mode)
        assert got == pytest.approx(expected(kind, mode), rel=2e-5, abs=2e-6), f"{mode} after {FIRST_ORDER_FIRST[:i]}"


@pytest.mark.parametrize("holder", ["jit_compile", "tfscan.jit"])
@pytest.mark.parametrize("kind", ["scan", "cond", "associative_scan"])
def test_a_held_function_differentiated_to_second_then_first_order_matches_jax(kind, holder):
    f = held(kind, holder)
    for mode in ("grad2", "grad", "hvp"):
        assert computed(f, mode) == pytest.approx(expected(kind, mode), rel=2e-5, abs=2e-6), mode


@pytest.mark.parametrize("kind", KINDS)
def test_a_held_compiled_function_differentiated_eagerly_to_first_then_second_order_matches_jax(kind):
    f = held(kind, "jit_compile")
    for mode in FIRST_ORDER_FIRST:
        assert computed(f, mode, eager=True) == pytest.approx(expected(kind, mode), rel=2e-5, abs=2e-6), mode


def test_a_program_that_tensorflow_differentiated_in_one_graph_returns_its_own_outputs_in_the_next():
    """TensorFlow's first-order gradient of a compiled program (an ``associative_scan``, whose
    derivatives are TensorFlow's) adds side outputs to the program's graph for good; the
    next graph that launched the shared program emitted an op with all of them, and the
    call failed ("expected 1 leaves, got 6")."""
    xs = tf.constant(XS)

    def f(a):
        return tf.reduce_sum(tf.sin(tfscan.associative_scan(lambda u, v: u * v + v, xs * a)))

    assert computed(f, "grad") == pytest.approx(expected("associative_scan", "grad"), rel=2e-5)
    assert computed(f, "value") == pytest.approx(expected("associative_scan", "value"), rel=2e-5)
