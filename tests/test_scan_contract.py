"""tfscan.scan against jax.lax.scan and a Python loop: the contract, point by point."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import tfscan
from conftest import assert_trees_match

Point = collections.namedtuple("Point", ["x", "v"])


def both(step_tf, step_jax, init, xs=None, **kw):
    """Run the same program through tfscan and jax.lax.scan; inputs are NumPy trees."""
    to_tf = lambda t: jax.tree_util.tree_map(tf.constant, t)  # noqa: E731
    got = tfscan.scan(step_tf, to_tf(init), None if xs is None else to_tf(xs), **kw)
    want = jax.lax.scan(step_jax, init, xs, **kw)
    return got, want


# --- the seed's three examples, exact values ---------------------------------------

def test_cumulative_sum():
    carry, ys = tfscan.scan(lambda c, x: (c + x, c + x), 0.0, tf.constant([1.0, 2, 3, 4, 5]))
    assert carry.dtype == tf.float32 and float(carry) == 15.0
    assert ys.numpy().tolist() == [1, 3, 6, 10, 15]


def test_elman_rnn(rng):
    W_hh, W_xh, b_h = (rng.normal(size=s).astype(np.float32) for s in [(5, 5), (3, 5), (5,)])
    xs = rng.normal(size=(4, 3)).astype(np.float32)

    def step_tf(h, x):
        h = tf.tanh(tf.linalg.matvec(W_hh, h, transpose_a=True) + tf.linalg.matvec(W_xh, x, transpose_a=True) + b_h)
        return h, h

    def step_jax(h, x):
        h = jnp.tanh(h @ W_hh + x @ W_xh + b_h)
        return h, h

    (h, hs), want = both(step_tf, step_jax, np.zeros(5, np.float32), xs)
    assert h.shape == (5,) and hs.shape == (4, 5)
    assert_trees_match((h, hs), want, rtol=1e-5)


def test_powers_of_two_without_xs():
    carry, ys = tfscan.scan(lambda c, _: (2 * c, c), 1, length=10)
    assert carry.dtype == tf.int32 and int(carry) == 1024
    assert ys.numpy().tolist() == [2 ** i for i in range(10)]


# --- 1. nests in carry, xs and ys ----------------------------------------------------

def test_nested_carry_xs_and_unrelated_ys(rng):
    init = {"p": Point(np.float32(0.0), np.zeros(2, np.float32)), "n": np.int32(0), "skip": None}
    xs = [rng.normal(size=(6, 2)).astype(np.float32), (rng.normal(size=6).astype(np.float64), None)]

    def make(np_):
        total = jnp.sum if np_ is jnp else tf.reduce_sum

        def step(c, x):
            a, (b, _) = x
            p = Point(c["p"].x + total(a), c["p"].v * 0.5 + a)
            y = (p.x * 2.0, b > 0, {"sq": b * b, "none": None})
            return {"p": p, "n": c["n"] + 1, "skip": None}, y
        return step

    got, want = both(make(tf), make(jnp), init, xs)
    assert_trees_match(got, want)


def test_scalar_carry_with_tuple_of_float_bool_dict_y():
    def make(np_):
        return lambda c, x: (c + x, (c * 1.0, x > 2.0, {"a": x * 2}))

    got, want = both(make(tf), make(jnp), np.float32(0), np.arange(5, dtype=np.float32))
    assert_trees_match(got, want)


def test_y_none_gives_none():
    carry, ys = tfscan.scan(lambda c, x: (c + x, None), 0.0, tf.ones(3))
    assert ys is None and float(carry) == 3.0


def test_python_scalars_and_numpy_are_converted():
    carry, ys = tfscan.scan(lambda c, x: (c + x, c), 0, np.arange(4, dtype=np.int32))
    assert carry.dtype == tf.int32 and ys.dtype == tf.int32
    carry, _ = tfscan.scan(lambda c, x: (c + x, c), np.float64(0.5), np.arange(4.0))
    assert carry.dtype == tf.float64  # float64 NumPy xs stay float64 (tf.constant)...
    carry, _ = tfscan.scan(lambda c, x: (c + 1.0, c), 0.5, length=2)
    assert carry.dtype == tf.float32 and float(carry) == 2.5  # ...and a Python float is float32


# --- 4. reverse, 6. unroll -------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("unroll", [1, 2, 3, 7, True, 0])
def test_reverse_and_unroll_match_jax(reverse, unroll, rng):
    xs = rng.normal(size=(7, 3))

    def make(np_):
        return lambda c, x: (c * 0.9 + x, (c.sum() if np_ is jnp else tf.reduce_sum(c), x * c))

    got, want = both(make(tf), make(jnp), np.zeros(3), xs, reverse=reverse, unroll=unroll)
    assert_trees_match(got, want, rtol=1e-12)


# --- 5. length 0 -------------------------------------------------------------------

def test_length_zero_keeps_carry_and_gives_empty_ys_of_the_right_type():
    def make(np_):
        total = jnp.sum if np_ is jnp else tf.reduce_sum
        cast = (lambda t: t.astype(np.int32)) if np_ is jnp else (lambda t: tf.cast(t, tf.int32))
        return lambda c, x: (c + total(x), {"y": x[:2] > 0, "z": cast(c * 2.0)})

    got, want = both(make(tf), make(jnp), np.float32(3.0), np.zeros((0, 4), np.float32))
    assert_trees_match(got, want)
    assert got[1]["y"].shape == (0, 2)


def test_length_zero_without_xs():
    carry, ys = tfscan.scan(lambda c, _: (c + 1, (c, tf.zeros([2, 3]))), 5, length=0)
    assert int(carry) == 5 and ys[0].shape == (0,) and ys[1].shape == (0, 2, 3)


# --- 7. closures and variables ---------------------------------------------------

def test_variable_current_value_is_read_every_call():
    v = tf.Variable(2.0)
    step = lambda c, x: (c * v + x, c)  # noqa: E731
    assert float(tfscan.scan(step, 1.0, tf.zeros(3))[0]) == 8.0
    v.assign(3.0)
    assert float(tfscan.scan(step, 1.0, tf.zeros(3))[0]) == 27.0

    @tf.function
    def in_graph():
        return tfscan.scan(step, 1.0, tf.zeros(2))[0]

    assert float(in_graph()) == 9.0
    v.assign(4.0)
    assert float(in_graph()) == 16.0


def test_fresh_closures_over_new_tensors_are_not_stale():
    for k in [1.0, 2.0, 5.0]:
        a = tf.constant(k)
        assert float(tfscan.scan(lambda c, x: (c + a * x, None), 0.0, tf.ones(4))[0]) == 4 * k


def test_static_python_values_are_constants_and_retrace():
    for n, scale in [(3, 2), (5, 3)]:
        carry, ys = tfscan.scan(lambda c, _: (c * scale, c), 1, length=n)
        assert int(carry) == scale ** n and ys.shape == (n,)


# --- 8, 9. shape polymorphism and lengths known only at run time -----------------------

def test_new_length_and_batch_retrace_correctly(rng):
    step = lambda c, x: (c + x, c * x)  # noqa: E731
    for shape in [(3, 2), (8, 2), (8, 5)]:
        xs = rng.normal(size=shape)
        got = tfscan.scan(step, tf.zeros(shape[1:], tf.float64), tf.constant(xs))
        want = jax.lax.scan(step, np.zeros(shape[1:]), xs)
        assert_trees_match(got, want)


def test_time_and_batch_axes_unknown_until_run_time(rng):
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float64)])
    def run(xs):
        batch = tf.shape(xs)[1]
        return tfscan.scan(lambda c, x: (c + x, tf.reduce_sum(c, -1)), tf.zeros([batch, 3], tf.float64), xs)

    for shape in [(4, 2, 3), (9, 5, 3), (0, 1, 3)]:
        xs = rng.normal(size=shape)
        want = jax.lax.scan(lambda c, x: (c + x, c.sum(-1)), np.zeros(shape[1:]), xs)
        assert_trees_match(run(tf.constant(xs)), want)


def test_tensor_length_inside_function():
    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def powers(n):
        return tfscan.scan(lambda c, _: (2 * c, c), 1, length=n)

    carry, ys = powers(tf.constant(6))
    assert int(carry) == 64 and ys.numpy().tolist() == [1, 2, 4, 8, 16, 32]


# --- always compiled: every context agrees ----------------------------------------

def _rnn_case(rng):
    W = tf.constant(rng.normal(size=(4, 4)) * 0.3)
    xs = tf.constant(rng.normal(size=(6, 2, 4)))
    step = lambda h, x: (tf.tanh(h @ W + x), tf.reduce_sum(h))  # noqa: E731
    return step, tf.zeros([2, 4], tf.float64), xs


def test_eager_function_xla_and_disable_jit_agree(rng):
    step, h0, xs = _rnn_case(rng)
    eager = tfscan.scan(step, h0, xs, unroll=2)
    graph = tf.function(lambda: tfscan.scan(step, h0, xs, unroll=2))()
    xla = tf.function(lambda: tfscan.scan(step, h0, xs, unroll=2), jit_compile=True)()
    with tfscan.disable_jit():
        python = tfscan.scan(step, h0, xs, unroll=2)
    for other in (graph, xla, python):
        assert_trees_match(other, jax.tree_util.tree_map(lambda t: t.numpy(), eager), rtol=1e-12)


def test_disable_jit_runs_python_per_step():
    calls = []

    def step(c, x):
        calls.append(float(x))  # only possible eagerly
        return c + x, c

    with tfscan.disable_jit():
        carry, ys = tfscan.scan(step, 0.0, tf.constant([1.0, 2.0, 3.0]), reverse=True)
    assert calls == [3.0, 2.0, 1.0] and float(carry) == 6.0
    assert ys.numpy().tolist() == [5.0, 3.0, 0.0]


def test_graph_call_is_a_nested_compiled_function():
    @tf.function
    def run(xs):
        return tfscan.scan(lambda c, x: (c + x, c), 0.0, xs)

    concrete = run.get_concrete_function(tf.TensorSpec([None], tf.float32))
    graph = concrete.graph
    # One XlaLaunch op (TF's _XlaMustCompile PartitionedCall keeps an instantiation of the
    # called function for every graph that runs it); the function lives in the graph's library.
    calls = [op for op in graph.get_operations() if op.type == "XlaLaunch"]
    assert len(calls) == 1 and graph._get_function(calls[0].get_attr("function").name) is not None
    assert not [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile", "PartitionedCall")]
    xs = tf.constant([1.0, 2.0, 3.0])
    np.testing.assert_allclose(concrete(xs)[1].numpy(), [0.0, 1.0, 3.0])


@pytest.mark.parametrize("length", [10, 100_000])
def test_hlo_is_one_while_whatever_the_length(length):
    fn = tf.function(lambda xs: tfscan.scan(lambda c, x: (c + x, c * 2.0), 0.0, xs), jit_compile=True)
    hlo = fn.experimental_get_compiler_ir(tf.zeros([length]))(stage="optimized_hlo")
    test_hlo_is_one_while_whatever_the_length.sizes[length] = len(hlo.splitlines())
    assert hlo.count(" while(") == 1
    if len(test_hlo_is_one_while_whatever_the_length.sizes) == 2:
        a, b = test_hlo_is_one_while_whatever_the_length.sizes.values()
        assert a == b


test_hlo_is_one_while_whatever_the_length.sizes = {}


# --- the trace cache ----------------------------------------------------------------

def test_fresh_lambdas_reuse_one_cache_entry_and_the_cache_is_bounded():
    from tfscan._core import cache as _cache

    programs = _cache.eager_cache("scan")
    xs = tf.ones(3)

    def call_with_a_fresh_lambda():
        return tfscan.scan(lambda c, x: (c + x, None), 0.0, xs)

    call_with_a_fresh_lambda()
    n = len(programs)
    for _ in range(5):
        call_with_a_fresh_lambda()
    assert len(programs) == n
    for i in range(programs.maxsize + 10):
        tfscan.scan(lambda c, _: (c + i, None), 0, length=1)
    assert len(programs) <= programs.maxsize


def test_step_that_ignores_x_and_a_carry_leaf():
    def step(c, x):
        return (c[0] + 1.0, c[1]), c[0]

    with tf.GradientTape() as tape:
        xs = tf.ones([3, 2])
        init = (tf.constant(0.0), tf.constant(5.0))
        tape.watch([xs, init[1]])
        (a, b), ys = tfscan.scan(step, init, xs)
        total = a + b + tf.reduce_sum(ys)
    assert float(a) == 3.0 and float(b) == 5.0 and ys.numpy().tolist() == [0.0, 1.0, 2.0]
    g_xs, g_b = tape.gradient(total, [xs, init[1]])
    assert g_xs.numpy().tolist() == [[0.0, 0.0]] * 3 and float(g_b) == 1.0


def test_concurrent_calls_from_threads_are_correct():
    from concurrent.futures import ThreadPoolExecutor

    def work(k):
        xs = tf.fill([5], float(k))
        carry, ys = tfscan.scan(lambda c, x: (c + x, c), 0.0, xs)
        return float(carry), ys.numpy().tolist()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(8)))
    for k, (carry, ys) in enumerate(results):
        assert carry == 5.0 * k and ys == [i * float(k) for i in range(5)]


def test_values_reached_through_objects_are_not_stale():
    class Holder:
        pass

    holder = Holder()
    holder.t, holder.scale = tf.constant(1.0), 2.0
    step = lambda c, x: (c + holder.t * holder.scale, c)  # noqa: E731
    assert float(tfscan.scan(step, 0.0, tf.zeros(3))[0]) == 6.0
    holder.t = tf.constant(10.0)
    assert float(tfscan.scan(step, 0.0, tf.zeros(3))[0]) == 60.0  # as JAX: f is traced anew
    holder.scale = 3.0
    assert float(tfscan.scan(step, 0.0, tf.zeros(3))[0]) == 90.0
    array = np.ones(2, np.float32)
    step2 = lambda c, x: (c + array, c)  # noqa: E731
    assert tfscan.scan(step2, tf.zeros(2), tf.zeros(2))[0].numpy().tolist() == [2.0, 2.0]
    array[:] = 5.0
    assert tfscan.scan(step2, tf.zeros(2), tf.zeros(2))[0].numpy().tolist() == [10.0, 10.0]
