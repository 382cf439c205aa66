"""``unroll=None`` (scan's default) unrolls the forward loop of a long scan of a cheap step.

Counts in the optimised HLO, never times: the forward ``While``'s trip count and the copies
of the step in it. Values are bitwise those of ``unroll=1`` (the same ops in the same order);
a heavy step, a short or odd length, an explicit ``unroll`` and the backward loop of a
gradient stay as they were.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf

import tfscan
from tfscan._scan import unrolling

T = 4096  # the shortest length the rule unrolls (a multiple of its factor)


def _light(c, x):
    c = tf.tanh(0.9 * c + x)
    return c, c


def _cumsum(c, x):
    c = c + x
    return c, c


def _xs(n=T, shape=()):
    return tf.constant(np.random.default_rng(0).normal(size=(n,) + shape).astype(np.float32))


def _hlo(fn, *args) -> str:
    return tf.function(fn, jit_compile=True, autograph=False).experimental_get_compiler_ir(*args)(
        stage="optimized_hlo")


def _trips(hlo: str) -> list[int]:
    return sorted(int(n) for n in re.findall(r'"known_trip_count":\{"n":"(\d+)"', hlo))


def test_the_rule_is_what_the_docstring_says():
    assert (unrolling.FACTOR, unrolling.MIN_LENGTH) == (4, 4096)
    assert T % unrolling.FACTOR == 0


@pytest.mark.parametrize("reverse", [False, True])
def test_a_cheap_long_forward_runs_four_steps_per_iteration(reverse):
    hlo = _hlo(lambda xs: tfscan.scan(_light, 0.0, xs, reverse=reverse), _xs())
    assert _trips(hlo) == [T // 4] and hlo.count(" tanh(") == 4
    rolled = _hlo(lambda xs: tfscan.scan(_light, 0.0, xs, reverse=reverse, unroll=1), _xs())
    assert _trips(rolled) == [T] and rolled.count(" tanh(") == 1


@pytest.mark.parametrize("n,why", [(T - 4, "short"), (T + 1, "not a multiple of 4"), (T + 2, "not a multiple of 4")])
def test_short_or_odd_lengths_stay_rolled(n, why):
    hlo = _hlo(lambda xs: tfscan.scan(_light, 0.0, xs), _xs(n))
    assert _trips(hlo) == [n], why


def test_a_heavy_step_stays_rolled():
    w = tf.constant(np.random.default_rng(1).normal(size=(16, 16)).astype(np.float32))

    def rnn(h, x):  # carry, x and y of 16 elements each: 48, over the bound of 32
        h = tf.tanh(tf.linalg.matvec(w, h) + x)
        return h, h
    hlo = _hlo(lambda xs: tfscan.scan(rnn, tf.zeros(16), xs), _xs(shape=(16,)))
    assert _trips(hlo) == [T]

    def busy(c, x):  # 3 elements, but 9 ops: over the bound of 8
        for _ in range(3):
            c = tf.tanh(0.5 * c + x)
        return c, c
    assert _trips(_hlo(lambda xs: tfscan.scan(busy, 0.0, xs), _xs())) == [T]


def test_an_explicit_unroll_is_obeyed():
    assert _trips(_hlo(lambda xs: tfscan.scan(_light, 0.0, xs, unroll=2), _xs())) == [T // 2]
    assert _trips(_hlo(lambda xs: tfscan.scan(_light, 0.0, xs, unroll=8), _xs())) == [T // 8]


def test_the_backward_loop_of_a_gradient_stays_rolled():
    def grad(xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            loss = tf.reduce_sum(tfscan.scan(_light, 0.0, xs)[1])
        return tape.gradient(loss, xs)
    assert _trips(_hlo(grad, _xs())) == [T // 4, T]


@pytest.mark.parametrize("step", [_light, _cumsum], ids=["light", "cumsum"])
@pytest.mark.parametrize("reverse", [False, True])
def test_values_are_bitwise_those_of_unroll_1(step, reverse):
    xs = _xs(T + 4)  # eager calls, the forward program of each
    c0, y0 = tfscan.scan(step, 0.0, xs, reverse=reverse, unroll=1)
    c1, y1 = tfscan.scan(step, 0.0, xs, reverse=reverse)
    assert np.array_equal(y0.numpy(), y1.numpy()) and c0.numpy() == c1.numpy()
    jitted = tfscan.jit(lambda xs: tfscan.scan(step, 0.0, xs, reverse=reverse))
    c2, y2 = jitted(xs)
    assert np.array_equal(y0.numpy(), y2.numpy()) and c0.numpy() == c2.numpy()


def test_gradient_values_are_those_of_unroll_1():
    xs = _xs()

    def grads(unroll):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            loss = tf.reduce_sum(tfscan.scan(_light, 0.0, xs, unroll=unroll)[1])
        return tape.gradient(loss, xs).numpy()
    assert np.array_equal(grads(None), grads(1))


def test_unroll_none_is_checked_like_the_others():
    with pytest.raises(TypeError, match=r"scan: unroll must be a bool or a non-negative int \(or None\), got str"):
        tfscan.scan(_light, 0.0, _xs(8), unroll="4")
