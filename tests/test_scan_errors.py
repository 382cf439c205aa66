"""Bad input gets a clear error naming the argument and the leaf, raised before tracing."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
import tensorflow as tf

import tfscan


def _never_called(c, x):
    raise AssertionError("f must not be traced when the inputs are already wrong")


def raises_like_jax(exc, match, tf_call, jax_call):
    with pytest.raises(exc, match=match):
        tf_call()
    with pytest.raises((TypeError, ValueError, IndexError)):  # JAX rejects the same program
        jax_call()


def test_carry_structure_mismatch_names_both_structures():
    init = {"h": np.zeros(2, np.float32), "n": np.int32(0)}
    raises_like_jax(
        TypeError, r"same structure as init.*\{'h': \*, 'n': \*\}.*\{'h': \*\}",
        lambda: tfscan.scan(lambda c, x: ({"h": c["h"]}, None), init, length=2),
        lambda: jax.lax.scan(lambda c, x: ({"h": c["h"]}, None), init, length=2))


def test_carry_dtype_mismatch_names_the_leaf():
    init = (np.float32(0), {"h": np.zeros(3, np.float32)})
    step_tf = lambda c, x: ((c[0], {"h": tf.cast(c[1]["h"], tf.float64)}), None)  # noqa: E731
    step_jax = lambda c, x: ((c[0], {"h": c[1]["h"].astype(np.float64)}), None)  # noqa: E731
    raises_like_jax(TypeError, re.escape("carry[1]['h']") + r".*float32\[3\].*float64\[3\].*dtypes",
                    lambda: tfscan.scan(step_tf, init, length=2),
                    lambda: jax.lax.scan(step_jax, init, length=2))


def test_carry_shape_mismatch_names_the_leaf_and_shapes():
    init = [np.zeros(3, np.float32), np.zeros((2, 2), np.float32)]
    step_tf = lambda c, x: ([c[0], tf.zeros([2, 3])], None)  # noqa: E731
    step_jax = lambda c, x: ([c[0], np.zeros((2, 3), np.float32)], None)  # noqa: E731
    raises_like_jax(TypeError, re.escape("carry[1]") + r".*float32\[2,2\].*float32\[2,3\].*shapes",
                    lambda: tfscan.scan(step_tf, init, length=2),
                    lambda: jax.lax.scan(step_jax, init, length=2))


def test_xs_leading_sizes_must_agree():
    xs = {"a": [np.zeros(3), np.zeros(4)]}
    raises_like_jax(ValueError, re.escape("xs['a'][0] has leading size 3, xs['a'][1] has leading size 4"),
                    lambda: tfscan.scan(_never_called, 0.0, xs),
                    lambda: jax.lax.scan(lambda c, x: (c, None), 0.0, xs))


def test_length_must_match_xs():
    raises_like_jax(ValueError, r"length=5 .*xs\[0\] has leading size 3",
                    lambda: tfscan.scan(_never_called, 0.0, (np.zeros(3),), length=5),
                    lambda: jax.lax.scan(lambda c, x: (c, None), 0.0, (np.zeros(3),), length=5))


def test_xs_none_needs_length():
    raises_like_jax(ValueError, r"xs is None.*length",
                    lambda: tfscan.scan(_never_called, 0.0),
                    lambda: jax.lax.scan(lambda c, x: (c, None), 0.0))


def test_scalar_xs_leaf_is_rejected():
    raises_like_jax(ValueError, re.escape("xs leaf xs['b'] is a scalar"),
                    lambda: tfscan.scan(_never_called, 0.0, {"a": np.zeros(2), "b": np.float32(1)}),
                    lambda: jax.lax.scan(lambda c, x: (c, None), 0.0, {"a": np.zeros(2), "b": np.float32(1)}))


@pytest.mark.parametrize("unroll,exc", [(-2, ValueError), (1.5, TypeError), ("2", TypeError)])
def test_bad_unroll(unroll, exc):
    with pytest.raises(exc, match="unroll"):
        tfscan.scan(_never_called, 0.0, length=3, unroll=unroll)


@pytest.mark.parametrize("length,exc", [(-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_length(length, exc):
    with pytest.raises(exc, match="length"):
        tfscan.scan(_never_called, 0.0, length=length)


def test_non_callable_f():
    with pytest.raises(TypeError, match="f must be callable"):
        tfscan.scan(3, 0.0, length=2)


def test_f_must_return_a_pair():
    with pytest.raises(TypeError, match=r"pair \(new_carry, y\)"):
        tfscan.scan(lambda c, x: c + x, 0.0, np.zeros(2, np.float32))


def test_non_tensor_leaf_names_its_path():
    with pytest.raises(TypeError, match=re.escape("init leaf init['cfg']")):
        tfscan.scan(_never_called, {"cfg": object()}, length=2)
    with pytest.raises(TypeError, match=re.escape("xs leaf xs[1]") + ".*string"):
        tfscan.scan(_never_called, 0.0, (np.zeros(2), np.array(["a", "b"])))


def test_non_bool_reverse():
    with pytest.raises(TypeError, match="reverse"):
        tfscan.scan(_never_called, 0.0, length=2, reverse="yes")
