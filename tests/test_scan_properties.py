"""Property tests: random nests, lengths, dtypes, reverse and unroll against a Python loop."""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfscan
from tfscan._core import tree as _tree
from conftest import assert_trees_match

Pair = collections.namedtuple("Pair", ["a", "b"])
DTYPES = [np.float32, np.float64, np.int32, np.bool_]


@st.composite
def leaves(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    return dtype, shape


def nests(leaf):
    return st.recursive(
        leaf,
        lambda kids: st.one_of(
            st.tuples(kids, kids), st.lists(kids, max_size=3),
            st.dictionaries(st.sampled_from("abc"), kids, max_size=3),
            st.builds(Pair, kids, kids), st.just(None)),
        max_leaves=4)


def _value(rng, dtype, shape):
    if dtype == np.bool_:
        return rng.random(shape) > 0.5
    if dtype == np.int32:
        return rng.integers(-3, 4, shape).astype(np.int32)
    return rng.normal(size=shape).astype(dtype)


def _map(fn, tree):
    if tree is None:
        return None
    if isinstance(tree, Pair):
        return Pair(*(_map(fn, t) for t in tree))
    if isinstance(tree, tuple) and not (len(tree) == 2 and isinstance(tree[1], tuple) and isinstance(tree[0], type)):
        return tuple(_map(fn, t) for t in tree)
    if isinstance(tree, list):
        return [_map(fn, t) for t in tree]
    if isinstance(tree, dict):
        return {k: _map(fn, v) for k, v in tree.items()}
    return fn(tree)


def _update(c, x_sum):
    """A dtype-preserving update of one carry leaf from a float scalar."""
    if c.dtype == tf.bool:
        return tf.math.logical_xor(c, x_sum > 0)
    if c.dtype.is_integer:
        return c + tf.cast(x_sum > 0, c.dtype)
    return c * 0.5 + tf.cast(x_sum, c.dtype)


def _total(x_leaves):
    return sum((tf.reduce_sum(tf.cast(x, tf.float64)) for x in x_leaves), tf.constant(0.0, tf.float64))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(carry_spec=nests(leaves()), xs_spec=nests(leaves()), length=st.integers(0, 20),
       reverse=st.booleans(), unroll=st.integers(1, 5), seed=st.integers(0, 2 ** 16))
def test_random_nests_match_python_loop(carry_spec, xs_spec, length, reverse, unroll, seed):
    rng = np.random.default_rng(seed)
    init = _map(lambda s: _value(rng, s[0], s[1]), carry_spec)
    xs = _map(lambda s: _value(rng, s[0], (length,) + s[1]), xs_spec)
    x_leaves_of = lambda x: _tree.flatten(x)[0]  # noqa: E731

    def f(carry, x):
        s = _total(x_leaves_of(x))
        new = _tree.map_leaves(lambda c: _update(c, s), carry)
        y = {"s": s, "x": x, "c": carry}
        return new, y

    has_xs = bool(x_leaves_of(xs))
    kwargs = dict(length=None if has_xs else length, reverse=reverse, unroll=unroll)
    got = tfscan.scan(f, init, xs if has_xs else None, **kwargs)
    with tfscan.disable_jit():  # the Python loop, step by step
        want = tfscan.scan(f, init, xs if has_xs else None, **kwargs)
    assert_trees_match(got, jax_like(want), rtol=1e-12, atol=1e-12)


def jax_like(tree):
    return _tree.map_leaves(lambda t: t.numpy() if hasattr(t, "numpy") else t, tree)
