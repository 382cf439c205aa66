"""A derivative carries no tangent for what it does not differentiate (JAX's symbolic zeros).

A scan is recorded on the live tapes and accumulators as one operation. TensorFlow's
accumulator calls its forward function with a tangent for every input the operation was
recorded on, zeros for those it has none of: recorded on all of them, the JVP loop of a
Hessian-vector product of an RNN carried a zero tangent for its data ``xs`` (``[T, B, D]``)
and for every tensor the step closes over, and differentiated the step with respect to
them (370 ms against 240 a call at T=400, B=32, D=128 in a ``tf.function``). The operation
is now recorded on the inputs some tape watches or some accumulator has a tangent of.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from tfscan._scan import forward as _forward

T, B, D = 5, 2, 3
_rng = np.random.default_rng(0)
XS = _rng.standard_normal((T, B, D)).astype(np.float32)
U = (_rng.standard_normal((D, D)) * 0.5).astype(np.float32)
W0 = (_rng.standard_normal((D, D)) * 0.5).astype(np.float32)
V = _rng.standard_normal((D, D)).astype(np.float32)


def _loss_tf(w, xs, u):
    _, hs = tfscan.scan(lambda h, x: (lambda n: (n, n))(tf.tanh(h @ w + x @ u)), tf.zeros((B, D)), xs)
    return tf.reduce_sum(hs ** 2)


def _loss_jx(w):
    _, hs = jax.lax.scan(lambda h, x: (lambda n: (n, n))(jnp.tanh(h @ w + x @ U)), jnp.zeros((B, D)), XS)
    return jnp.sum(hs ** 2)


def _forward_over_reverse(w, xs, u):
    with tf.autodiff.ForwardAccumulator(w, tf.constant(V)) as acc:
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = _loss_tf(w, xs, u)
        g = tape.gradient(loss, w)
    return acc.jvp(g)


def _reverse_over_forward(w, xs, u):
    with tf.GradientTape() as tape:
        tape.watch(w)
        with tf.autodiff.ForwardAccumulator(w, tf.constant(V)) as acc:
            loss = _loss_tf(w, xs, u)
        j = acc.jvp(loss)
    return tape.gradient(j, w)


@pytest.mark.usefixtures("fresh_programs")  # each case makes its JVP loops afresh
@pytest.mark.parametrize("mode", ["eager", "tf.function"])
@pytest.mark.parametrize("way", [_forward_over_reverse, _reverse_over_forward], ids=["forward over reverse",
                                                                                     "reverse over forward"])
def test_the_jvp_loop_of_a_second_derivative_carries_no_tangent_for_data(way, mode, monkeypatch):
    made = []
    init = _forward._ScanJVP.__init__

    def counting(self, programs, consts, given=None):
        init(self, programs, consts, given)
        made.append((len(programs.plan.x_specs), self.fx, self.fk))

    monkeypatch.setattr(_forward._ScanJVP, "__init__", counting)
    fn = tf.function(way) if mode == "tf.function" else way
    w, xs, u = tf.constant(W0), tf.constant(XS), tf.constant(U)
    got = fn(w, xs, u)

    # The user's scan (one x) is differentiated with respect to w alone: not xs, not u.
    primal = [(fx, fk) for n_x, fx, fk in made if n_x == 1]
    assert primal, made
    for fx, fk in primal:
        assert fx == [] and len(fk) == 1, made
    hessian_v = jax.jvp(jax.grad(_loss_jx), (jnp.asarray(W0),), (jnp.asarray(V),))[1]
    np.testing.assert_allclose(got.numpy(), np.asarray(hessian_v), rtol=2e-4, atol=2e-4)
