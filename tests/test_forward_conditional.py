"""Forward mode through a scan whose step holds a conditional, against JAX.

Each step kind (a ``tfscan.cond`` taking the differentiated constant as an operand, one whose
branch closes over it, one fed through the carry, a ``tfscan.switch``, a user's ``tf.cond``)
× each forward-mode derivative (a JVP, a JVP of a JVP, forward over reverse — a
Hessian-vector product — and reverse over forward) × each wrapper (eager, ``tf.function``,
``tfscan.jit``), at two values of the constant in turn: the second call reuses what the
first traced, so a trace that kept the first call's tensor (instead of being fed this
call's) gives a wrong number here.

These gave wrong tangents before (0 in a ``tf.function``/``tfscan.jit``, half the
Hessian-vector product eagerly): an operand or branch closure of an enclosing graph was not
the tensor the step's accumulator watched, the JVP step was traced on the call's tensors
while the step function reads those of the call that traced it, and a step's VJP traced
while a tape or accumulator was live took TensorFlow's conditional gradient in a form that
an accumulator differentiating it later misses terms of. The one case TensorFlow itself
cannot do (its forward rule of ``tf.cond`` under nested accumulators) raises tfscan's error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import forward_over_forward, forward_over_reverse, jvp, nested_tapes, reverse_over_forward

XS = np.array([0.1, 0.4, -0.2], np.float32)
VALUES = (0.7, 0.45)


def _idx_tf(c):
    return tf.cast(tf.clip_by_value(c * 3.0, 0.0, 2.0), tf.int32)


def _idx_jx(c):
    return jnp.clip(c * 3.0, 0.0, 2.0).astype(jnp.int32)


def _kinds():
    """name -> (tfscan f(a), JAX f(a))."""
    def scan_tf(step, init=0.3):
        return lambda a: tfscan.scan(lambda c, x: step(a, c, x), init if init is not None else a, tf.constant(XS))[0]

    def scan_jx(step, init=0.3):
        return lambda a: jax.lax.scan(lambda c, x: step(a, c, x), init if init is not None else a, XS)[0]

    return {
        "operand": (
            scan_tf(lambda a, c, x: (tfscan.cond(c > 0.0, lambda v: v[0] * v[1] * v[1], lambda v: v[0], (c + x, a)), c)),
            scan_jx(lambda a, c, x: (jax.lax.cond(c > 0.0, lambda v: v[0] * v[1] * v[1], lambda v: v[0], (c + x, a)), c))),
        "closure": (
            scan_tf(lambda a, c, x: (tfscan.cond(c > 0.0, lambda v: tf.sin(v * a), lambda v: v, c + x), c)),
            scan_jx(lambda a, c, x: (jax.lax.cond(c > 0.0, lambda v: jnp.sin(v * a), lambda v: v, c + x), c))),
        "carry": (
            scan_tf(lambda a, c, x: (tfscan.cond(c > 0.0, lambda v: tf.sin(v) * 2.0, lambda v: v, c + x), c), None),
            scan_jx(lambda a, c, x: (jax.lax.cond(c > 0.0, lambda v: jnp.sin(v) * 2.0, lambda v: v, c + x), c), None)),
        "switch": (
            scan_tf(lambda a, c, x: (tfscan.switch(_idx_tf(c), [lambda v: v * a, lambda v: tf.sin(v * a), lambda v: v + a],
                                                   c + x), c)),
            scan_jx(lambda a, c, x: (jax.lax.switch(_idx_jx(c), [lambda v: v * a, lambda v: jnp.sin(v * a),
                                                                 lambda v: v + a], c + x), c))),
        "tf.cond": (
            scan_tf(lambda a, c, x: (tf.cond(c > 0.0, lambda: tf.sin((c + x) * a), lambda: c + x), c)),
            scan_jx(lambda a, c, x: (jax.lax.cond(c > 0.0, lambda v: jnp.sin(v * a), lambda v: v, c + x), c))),
    }


KINDS = _kinds()


def _modes(f):
    """name -> a function of ``a`` computing that derivative of ``f`` at ``a`` (tangent 1)."""
    return {"jvp": jvp(f), "jvp_of_jvp": forward_over_forward(f), "forward_over_reverse": forward_over_reverse(f),
            "reverse_over_forward": reverse_over_forward(f)}


def _expected(fj, mode: str, a: float) -> float:
    if mode == "jvp":
        return float(jax.jvp(fj, (a,), (1.0,))[1])
    return float(jax.grad(jax.grad(fj))(a))


@pytest.mark.parametrize("mode", ["jvp", "jvp_of_jvp", "forward_over_reverse", "reverse_over_forward"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_mode_through_a_step_with_a_conditional_matches_jax(kind, mode):
    ft, fj = KINDS[kind]
    for a in VALUES:
        fn = _modes(ft)[mode]
        for wrap, g in (("eager", fn), ("tf.function", tf.function(fn)), ("tfscan.jit", tfscan.jit(fn))):
            if kind == "tf.cond" and mode == "jvp_of_jvp":
                with pytest.raises(ValueError, match="forward-mode rule of tf.cond.*tfscan.cond"):
                    g(tf.constant(a))
                continue
            got = float(g(tf.constant(a)))
            np.testing.assert_allclose(got, _expected(fj, mode, a), rtol=2e-4, atol=1e-6,
                                       err_msg=f"{kind} {mode} {wrap} at a={a}")


@pytest.mark.parametrize("kind", ["operand", "closure", "switch"])
def test_a_derivative_after_a_call_at_another_value_is_fed_this_value(kind):
    """The scan's programs come from a call at another value: a Hessian-vector product and a
    jitted JVP must read this call's constant (they read the first call's before)."""
    ft, fj = KINDS[kind]
    modes = _modes(ft)
    ft(tf.constant(0.7))  # traces the scan's programs with a = 0.7
    np.testing.assert_allclose(float(modes["forward_over_reverse"](tf.constant(0.45))),
                               _expected(fj, "forward_over_reverse", 0.45), rtol=2e-4)
    modes["jvp"](tf.constant(0.7))  # eagerly, a JVP loop traced with a = 0.7
    np.testing.assert_allclose(float(tfscan.jit(modes["jvp"])(tf.constant(0.45))), _expected(fj, "jvp", 0.45),
                               rtol=2e-4)


@pytest.mark.parametrize("kind", ["operand", "closure", "switch", "tf.cond"])
def test_a_hessian_vector_product_after_nested_tapes_of_the_same_program(kind, fresh_programs):
    """Nested ``GradientTape``s trace the step first, with two tapes watching the tensor it
    closes over: TensorFlow wrapped its conditional in a function of its own, and the
    Hessian-vector product that reused that trace failed (XLA cannot compile ``Optional``s:
    TensorFlow built the conditional's second-order gradient outside XLA's context)."""
    ft, fj = KINDS[kind]
    want = float(jax.grad(jax.grad(fj))(0.45))
    np.testing.assert_allclose(float(nested_tapes(ft)(tf.constant(0.45))), want, rtol=2e-4)
    for wrap in (lambda f: f, tf.function, tfscan.jit):
        got = float(wrap(forward_over_reverse(ft))(tf.constant(0.45)))
        np.testing.assert_allclose(got, want, rtol=2e-4)
