"""Shared test helpers: JAX (the oracle) with 64-bit types, and pytree comparison."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfscan._core import tree as _tree  # noqa: E402

jax.config.update("jax_enable_x64", True)


def assert_trees_match(got, want, rtol=1e-5, atol=1e-6):
    """Same structure, shapes, dtypes, and values (to tolerance); ``want`` may be JAX/NumPy."""
    g_leaves, g_paths, g_tree = _tree.flatten_with_paths(got, "out")
    w_leaves, _, w_tree = _tree.flatten_with_paths(want, "out")
    assert g_tree == w_tree, f"structure {g_tree} != {w_tree}"
    for path, g, w in zip(g_paths, g_leaves, w_leaves):
        g = g.numpy() if hasattr(g, "numpy") else np.asarray(g)
        w = np.asarray(w)
        assert g.shape == w.shape, f"{path}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"{path}: dtype {g.dtype} != {w.dtype}"
        if g.dtype == bool or np.issubdtype(g.dtype, np.integer):
            np.testing.assert_array_equal(g, w, err_msg=path)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=path)


def nested_tapes(f):
    """``a -> d2 f / da2`` by a ``GradientTape`` around another (reverse over reverse)."""
    def second(a):
        with tf.GradientTape() as outer:
            outer.watch(a)
            with tf.GradientTape() as inner:
                inner.watch(a)
                y = f(a)
            g = inner.gradient(y, a)
        return outer.gradient(g, a)
    return second


def jvp(f):
    """``a -> df/da`` (tangent 1) by a ``ForwardAccumulator``."""
    def first(a):
        with tf.autodiff.ForwardAccumulator(a, tf.ones_like(a)) as acc:
            y = f(a)
        return acc.jvp(y)
    return first


def forward_over_forward(f):
    """``a -> d2 f / da2`` (tangent 1) by a ``ForwardAccumulator`` around another."""
    def second(a):
        with tf.autodiff.ForwardAccumulator(a, tf.ones_like(a)) as outer:
            j = jvp(f)(a)
        return outer.jvp(j)
    return second


def reverse_over_forward(f):
    """``a -> d2 f / da2`` (tangent 1) by a ``GradientTape`` around a ``ForwardAccumulator``."""
    def second(a):
        with tf.GradientTape() as tape:
            tape.watch(a)
            j = jvp(f)(a)
        return tape.gradient(j, a)
    return second


def forward_over_reverse(f):
    """``a -> d2 f / da2`` (tangent 1) by a ``ForwardAccumulator`` around a ``GradientTape``
    (a Hessian-vector product)."""
    def second(a):
        with tf.autodiff.ForwardAccumulator(a, tf.ones_like(a)) as acc:
            with tf.GradientTape() as tape:
                tape.watch(a)
                y = f(a)
            g = tape.gradient(y, a)
        return acc.jvp(g)
    return second


def clear_programs() -> None:
    """Empty every cache of tfscan's traced programs: the next call traces afresh."""
    from tfscan._core import cache
    for name in cache.sizes():
        cache.eager_cache(name).clear()


@pytest.fixture
def fresh_programs():
    """Each test traces its programs afresh (under the tapes it opens): a program traced by
    an earlier test would hide what this one's derivatives trace."""
    clear_programs()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
