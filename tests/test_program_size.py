"""What a scan's gradient program is made of (issue 14, item 5): no ops JAX's does not have.

Counts, never times. The backward loop takes the step index from its loop counter (it read a
``tf.range(T)`` sequence, which TensorFlow's constant folding turned into a ``T``-element
literal of the program and the loop gathered from at every step); the row of a ``sum(ys)``
cotangent is one op; a step's output is written to its buffer without a strided slice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import assert_trees_match

T = 37  # a length no other shape of the program has


def _light(a, c0, xs, reverse=False, unroll=1):
    # The carry is also the y: the backward loop reads step t's input carry from the ys at t - 1.
    return tfscan.scan(lambda c, x: (tf.tanh(a * c + x),) * 2, c0, xs, reverse=reverse, unroll=unroll)


def _tape_gradient(reverse=False, unroll=1):
    def run(a, c0, xs):
        with tf.GradientTape() as tape:
            tape.watch([a, c0, xs])
            loss = tf.reduce_sum(_light(a, c0, xs, reverse, unroll)[1])
        return tape.gradient(loss, [a, c0, xs])
    return tf.function(run, jit_compile=True, autograph=False)


def _args():
    return (tf.constant(0.7), tf.constant(0.1), tf.constant(np.random.default_rng(0).normal(size=T).astype(np.float32)))


def _all_nodes(concrete) -> list:
    graph_def = concrete.graph.as_graph_def()
    return list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]


def test_backward_loop_reads_no_index_sequence():
    fn = _tape_gradient()
    hlo = fn.experimental_get_compiler_ir(*_args())(stage="hlo")
    assert f"s32[{T}]" not in hlo, "the backward loop reads an int32 [T] sequence (a tf.range literal)"
    ops = [n.op for n in _all_nodes(fn.get_concrete_function(*_args()))]
    assert "Range" not in ops


def test_sum_cotangent_row_and_buffer_writes_take_no_strided_slice():
    ops = [n.op for n in _all_nodes(_tape_gradient().get_concrete_function(*_args()))]
    assert ops.count("StridedSlice") == 0, sorted(ops)


@pytest.mark.parametrize("reverse,unroll", [(False, 1), (True, 1), (False, 4), (True, 4)])
def test_gradient_with_the_step_index_from_the_counter_matches_jax(reverse, unroll):
    a, c0, xs = _args()

    def loss_jax(a, c0, xs):
        ys = jax.lax.scan(lambda c, x: (jnp.tanh(a * c + x),) * 2, c0, xs, reverse=reverse, unroll=unroll)[1]
        return jnp.sum(ys)
    want = jax.grad(loss_jax, argnums=(0, 1, 2))(*(np.asarray(v) for v in (a, c0, xs)))
    got = _tape_gradient(reverse, unroll)(a, c0, xs)
    assert_trees_match(list(got), list(want), rtol=1e-5, atol=1e-5)
    with tf.GradientTape() as tape:  # eagerly too: two compiled programs
        tape.watch([a, c0, xs])
        loss = tf.reduce_sum(_light(a, c0, xs, reverse, unroll)[1])
    assert_trees_match(list(tape.gradient(loss, [a, c0, xs])), list(want), rtol=1e-5, atol=1e-5)


def _while_states(hlo: str) -> list[str]:
    """The loop-state tuple type of every ``while`` instruction of an HLO module's text."""
    states = []
    for line in hlo.splitlines():
        left, sep, _ = line.partition(" while(")
        if sep and "=" in left:
            states.append(left.split("=", 1)[1].strip())
    return states


@pytest.mark.parametrize("reverse,unroll", [(False, 1), (True, 4)])
def test_each_loop_carries_one_counter(reverse, unroll):
    # tfscan's loops are one While each built by _tf.counted_loop: their state is the step
    # counter, the carries, the output buffers and the loop invariants -- not also
    # tf.while_loop's own loop counter and maximum-iteration count (two int32 scalars more
    # per loop for the bridge and XLA to compile, and a costlier trace).
    hlo = _tape_gradient(reverse, unroll).experimental_get_compiler_ir(*_args())(stage="hlo")
    states = _while_states(hlo)
    assert len(states) == (2 if unroll == 1 else 4), states  # forward and backward (each with its tail)
    assert all(s.count("s32[]") == 1 for s in states), states


def test_plain_step_vjp_is_its_ops_walked_in_reverse(monkeypatch):
    # A plain step's VJP is built as JAX transposes a linearized jaxpr: its ops visited from
    # the outputs back, each given the registered gradient of its type. Not by tf.gradients
    # (its grad_ys Identity per cotangent, control-flow bookkeeping) inside a tf.function trace
    # (an Identity per output): the backward loop body holds the gradient ops and no Identity.
    calls = []
    gradients = tf.gradients
    monkeypatch.setattr(tf, "gradients", lambda *a, **k: calls.append(1) or gradients(*a, **k))
    fn = _tape_gradient()
    nodes = _all_nodes(fn.get_concrete_function(*_args()))
    assert not calls
    graph_def = fn.get_concrete_function(*_args()).graph.as_graph_def()
    body = [f for f in graph_def.library.function if any(n.op == "TanhGrad" for n in f.node_def)]
    assert len(body) == 1 and [n.op for n in body[0].node_def].count("Identity") == 0, \
        sorted(n.op for n in body[0].node_def)
    assert [n.op for n in nodes].count("TanhGrad") == 1
