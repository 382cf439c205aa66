"""The implementations being compared, as builders of zero-argument callables.

Every scan implementation is written against one contract, JAX's: ``scan(step, init, xs)
-> (carry, ys)`` with ``step(carry, x) -> (new_carry, y)``. In every workload here ``y``
is the new carry, which lets ``tf.scan`` (an accumulator API: it stacks the carries) and
``keras.ops.scan`` (whose TF backend requires ``y`` to match the carry) run the same
program without extra work; the final carry of ``tf.scan`` is its last stacked row.

How each one runs (the "where" of an implementation):

- ``eager``: called from eager Python (tfscan compiles its loop itself);
- ``graph``: inside ``tf.function`` (no XLA);
- ``xla``: inside ``tf.function(jit_compile=True)``;
- JAX: inside ``jax.jit``.

Gradients are of ``loss = sum(ys)`` with respect to the workload's chosen inputs, taken
with ``tf.GradientTape`` (TensorFlow's own gradient of the loop, or tfscan's) or ``jax.grad``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import jax
import jax.numpy as jnp
import keras

import tfscan
from benchmarks import _floors


@dataclass(frozen=True)
class Impl:
    key: str         # short id used in JSON
    label: str       # shown in tables and plots
    family: str      # "tfscan", "jax", "tf", "keras", "numpy"
    peer: bool = True  # counts as "another implementation" for tfscan's ratio (scan loops only)
    goal: bool = True  # tfscan rows: held to the goals


IMPLS = {
    i.key: i for i in [
        Impl("tfscan", "tfscan.scan (eager call)", "tfscan"),
        Impl("tfscan@xla", "tfscan.scan in tf.function(jit_compile)", "tfscan"),
        Impl("tfscan@graph", "tfscan.scan in tf.function (no XLA)", "tfscan"),
        Impl("tfscan.grad", "tfscan.grad of a tfscan.scan loss (compiled)", "tfscan"),
        Impl("tfscan.jit", "tfscan.scan in tfscan.jit", "tfscan"),
        Impl("jax", "jax.lax.scan in jax.jit", "jax"),
        Impl("tf.scan", "tf.scan in tf.function", "tf"),
        Impl("tf.scan@xla", "tf.scan in tf.function(jit_compile)", "tf"),
        Impl("keras", "keras.ops.scan in tf.function", "keras"),
        Impl("keras@xla", "keras.ops.scan in tf.function(jit_compile)", "keras"),
        Impl("while@xla", "tf.while_loop+TensorArray in jit_compile", "tf"),
        Impl("numpy", "np.cumsum (vectorized, reference)", "numpy", peer=False),
        # vmap workload
        Impl("jax.vmap", "jax.vmap(lax.scan) in jax.jit", "jax"),
        Impl("tf.scan.batched", "tf.scan batched by hand, tf.function", "tf"),
        Impl("tf.scan.batched@xla", "tf.scan batched by hand, jit_compile", "tf"),
        Impl("tfscan.batched", "tfscan.scan batched by hand (eager call)", "tfscan"),
        Impl("vectorized_map", "tf.vectorized_map(tf.scan), tf.function", "tf"),
        Impl("vectorized_map@xla", "tf.vectorized_map(tf.scan), jit_compile", "tf"),
        Impl("vectorized_map.tfscan", "tf.vectorized_map(tfscan.scan), tf.function", "tfscan"),
        Impl("tfscan.vmap", "tfscan.vmap(tfscan.scan) (eager call)", "tfscan"),
        Impl("tfscan.jit.vmap", "tfscan.jit(tfscan.vmap(tfscan.scan))", "tfscan"),
        # call overhead workload
        Impl("jax.nojit", "jax.lax.scan, not jitted (eager)", "jax"),
        Impl("tf.scan.eager", "tf.scan, eager", "tf"),
        Impl("keras.eager", "keras.ops.scan, eager", "keras"),
        Impl("tf.function.empty", "the floor: an empty tf.function call (same arguments, returns a)", "tf",
             peer=False, goal=False),
        Impl("handwritten@xla", "the floor: value and gradient written by hand as one XLA program "
             "(tf.function(jit_compile), two tf.while_loops)", "tf", peer=False, goal=False),
        Impl("tf.call@xla", "the floor: the compiled tfscan.scan, its traced function called directly "
             "(concrete function's inference function)", "tf", peer=False, goal=False),
        # memory workload
        Impl("jax.checkpoint", "jax.lax.scan of jax.checkpoint(step) in jax.jit", "jax"),
        Impl("jax.checkpoint[dots_saveable]", "jax.lax.scan of jax.checkpoint(step, "
             "policy=dots_saveable) in jax.jit", "jax"),
        # bounded while loop, inference
        Impl("jax.while", "jax.lax.while_loop in jax.jit", "jax"),
        Impl("tfscan.while", "tfscan.while_loop(max_steps=T) (eager call)", "tfscan"),
        Impl("tfscan.while@graph", "tfscan.while_loop(max_steps=T) in tf.function (no XLA)", "tfscan"),
        Impl("tfscan.while@xla", "tfscan.while_loop(max_steps=T) in tf.function(jit_compile)", "tfscan"),
        Impl("tf.while_loop", "tf.while_loop(maximum_iterations=T), eager", "tf"),
        Impl("tf.while_loop@graph", "tf.while_loop(maximum_iterations=T) in tf.function", "tf"),
        Impl("tf.while_loop@xla", "tf.while_loop(maximum_iterations=T) in tf.function(jit_compile)", "tf"),
        # parallel prefix scans (a different algorithm: shown, not a peer, no goal)
        Impl("jax.assoc", "jax.lax.associative_scan in jax.jit", "jax", peer=False, goal=False),
        Impl("tfscan.assoc", "tfscan.associative_scan (eager call)", "tfscan", peer=False, goal=False),
    ]
}


def impl(key: str) -> Impl:
    if key in IMPLS:
        return IMPLS[key]
    if key.startswith("tfscan["):  # e.g. "tfscan[remat=sqrt]", "tfscan[remat=True]@xla"
        name, _, at = key.partition("@")
        where = " in tf.function(jit_compile)" if at == "xla" else " (eager call)"
        return Impl(key, name.replace("tfscan", "tfscan.scan", 1) + where, "tfscan")
    if key.startswith("jax") and key.endswith("@eager"):
        return Impl(key, impl(key[: -len("@eager")]).label.replace(" in jax.jit", "") + ", jax.grad not jitted", "jax")
    if key.startswith("jax.checkpoint[every="):  # e.g. "jax.checkpoint[every=sqrt]"
        return Impl(key, f"jax.lax.scan of jax.checkpoint(segments of {key[21:-1]} steps) in jax.jit", "jax")
    if key.endswith(AROUND):  # e.g. "tfscan@graph~around"
        return Impl(key, impl(key[: -len(AROUND)]).label + ", a tape around its call (weights: variables)",
                    impl(key[: -len(AROUND)]).family)
    family = key.split(".")[0]  # e.g. the Keras workload's "keras.SimpleRNN@xla"
    return Impl(key, key.replace("@xla", " (jit_compile)"),
                family if family in ("tfscan", "keras", "jax", "tf") else "other")


# ---------------------------------------------------------------- scan adapters (TF)

def scan_tfscan(step, init, xs):
    return tfscan.scan(step, init, xs)


def scan_tf(step, init, xs):
    ys = tf.scan(lambda c, x: step(c, x)[0], xs, initializer=init)
    return tf.nest.map_structure(lambda y: y[-1], ys), ys


def scan_keras(step, init, xs):
    return keras.ops.scan(step, init, xs)


def scan_while(step, init, xs):
    """The hand-written loop: ``tf.while_loop`` writing each ``y`` to a ``TensorArray``."""
    flat_xs = tf.nest.flatten(xs)
    flat_init = [tf.convert_to_tensor(c) for c in tf.nest.flatten(init)]
    n = int(flat_xs[0].shape[0])
    tas = [tf.TensorArray(c.dtype, size=n, element_shape=c.shape) for c in flat_init]

    def body(i, carry, tas):
        x = tf.nest.pack_sequence_as(xs, [t[i] for t in flat_xs])
        new_c, y = step(tf.nest.pack_sequence_as(init, carry), x)
        tas = [ta.write(i, v) for ta, v in zip(tas, tf.nest.flatten(y))]
        return i + 1, tf.nest.flatten(new_c), tas

    _, carry, tas = tf.while_loop(lambda i, c, t: i < n, body, (tf.constant(0), flat_init, tas),
                                  maximum_iterations=n)
    return tf.nest.pack_sequence_as(init, carry), tf.nest.pack_sequence_as(init, [t.stack() for t in tas])


TF_SCANS = {  # impl key -> (scan adapter, where)
    "tfscan": (scan_tfscan, "eager"),
    "tfscan@xla": (scan_tfscan, "xla"),
    "tfscan@graph": (scan_tfscan, "graph"),
    "tf.scan": (scan_tf, "graph"),
    "tf.scan@xla": (scan_tf, "xla"),
    "keras": (scan_keras, "graph"),
    "keras@xla": (scan_keras, "xla"),
    "while@xla": (scan_while, "xla"),
    "tf.scan.eager": (scan_tf, "eager"),
    "keras.eager": (scan_keras, "eager"),
}


def wrap_tf(f: Callable, where: str) -> Callable:
    if where == "eager":
        return f
    return tf.function(f, jit_compile=(where == "xla"), autograph=False, reduce_retracing=False)


def block(out: Any) -> Any:
    """Wait for a JAX result; TF results are ready when the call returns."""
    return jax.block_until_ready(out)


# ---------------------------------------------------------------- builders

WRT = ("params", "init", "xs")


def tf_data(data: dict) -> tuple:
    return tuple(tf.nest.map_structure(tf.constant, data[k]) for k in WRT)


def jax_data(data: dict) -> tuple:
    return tuple(jax.tree_util.tree_map(jnp.asarray, data[k]) for k in WRT)


def forward(key: str, problem, data: dict) -> Callable[[], Any]:
    """A callable running the forward scan of ``problem`` on ``data`` with implementation ``key``."""
    if key in ("jax", "jax.nojit"):
        def run(params, init, xs):
            return jax.lax.scan(problem.jax_step(params), init, xs)
        fn = jax.jit(run) if key == "jax" else run
        args = jax_data(data)
        return lambda: block(fn(*args))
    if key in ("numpy", "jax.assoc", "tfscan.assoc"):
        return problem.special_forward(key, data)
    if key == "tfscan.jit":
        def run(params, init, xs):
            return tfscan.scan(problem.tf_step(params), init, xs)
        fn = tfscan.jit(run)
        args = tf_data(data)
        return lambda: fn(*args)
    adapter, where = TF_SCANS[key]

    def run(params, init, xs):
        return adapter(problem.tf_step(params), init, xs)
    fn = wrap_tf(run, where)
    args = tf_data(data)
    return lambda: fn(*args)


def forward_fixed_step(key: str, problem, data: dict) -> Callable[[], Any]:
    """As ``forward``, but the step function is made once, outside the timed call, as eager
    code that calls a scan repeatedly would (un-jitted JAX retraces a new step function)."""
    if key in ("jax", "jax.nojit"):
        params, init, xs = jax_data(data)
        step = problem.jax_step(params)
        fn = (lambda init, xs: jax.lax.scan(step, init, xs))
        fn = jax.jit(fn) if key == "jax" else fn
        return lambda: block(fn(init, xs))
    params, init, xs = tf_data(data)
    step = problem.tf_step(params)
    if key == "tf.call@xla":  # the cheapest call TensorFlow has for a compiled function
        fn = tf.function(lambda init, xs: scan_tfscan(step, init, xs), jit_compile=True, autograph=False)
        concrete = fn.get_concrete_function(init, xs)
        atomic, captured = concrete._inference_function, list(concrete.captured_inputs)
        return lambda: atomic.call_flat(init, xs, *captured)
    if key == "tfscan.jit":
        fn = tfscan.jit(lambda init, xs: tfscan.scan(step, init, xs))
        return lambda: fn(init, xs)
    adapter, where = TF_SCANS[key]
    fn = wrap_tf(lambda init, xs: adapter(step, init, xs), where)
    return lambda: fn(init, xs)


def gradient(key: str, problem, data: dict) -> Callable[[], Any]:
    """A callable returning the gradient of ``sum(ys)`` w.r.t. ``problem.wrt`` (a tuple)."""
    if key in _floors.KEYS:
        return _floors.build(key, problem, data)
    if key.endswith(AROUND):
        return _gradient_around(key[: -len(AROUND)], problem, data)
    idx = tuple(WRT.index(w) for w in problem.wrt)
    final = getattr(problem, "final", False)  # the loss reads the final carry, not the ys
    # ``...@eager``: jax.grad run op by op, not under jax.jit (each scan still compiled), so the
    # ys and their cotangent are materialised, as in a TensorFlow eager gradient.
    jit = not key.endswith("@eager")
    key = key[: -len("@eager")] if key.startswith("jax") and not jit else key
    if key in ("jax", "jax.checkpoint") or key.startswith("jax.checkpoint["):
        every = key[len("jax.checkpoint[every="):-1] if key.startswith("jax.checkpoint[every=") else None

        def loss(params, init, xs):
            step = problem.jax_step(params)
            if every is not None:  # tfscan's remat=k / "sqrt" written in JAX: checkpointed segments
                carry, ys = jax_segmented_scan(step, init, xs, every)
                return problem.jax_loss(carry if final else ys)
            if key == "jax.checkpoint":
                step = jax.checkpoint(step)
            elif key.startswith("jax.checkpoint["):  # e.g. jax.checkpoint[dots_saveable]
                policy = getattr(jax.checkpoint_policies, key[len("jax.checkpoint["):-1])
                step = jax.checkpoint(step, policy=policy)
            carry, ys = jax.lax.scan(step, init, xs)
            return problem.jax_loss(carry if final else ys)
        fn = jax.grad(loss, argnums=idx)
        fn = jax.jit(fn) if jit else fn
        args = jax_data(data)
        return lambda: block(fn(*args))
    if key == "tfscan.grad":
        def loss(params, init, xs):
            carry, ys = tfscan.scan(problem.tf_step(params), init, xs)
            return problem.tf_loss(carry if final else ys)
        fn = tfscan.grad(loss, argnums=idx)
        args = tf_data(data)
        return lambda: tuple(fn(*args))
    if key.startswith("tfscan[remat="):  # e.g. tfscan[remat=sqrt], tfscan[remat=True]@xla
        name, _, at = key.partition("@")
        remat = _parse_remat(name[len("tfscan[remat="):-1])
        adapter = lambda step, init, xs: tfscan.scan(step, init, xs, remat=remat)  # noqa: E731
        where = "xla" if at == "xla" else "eager"
    else:
        adapter, where = TF_SCANS[key]

    def run(params, init, xs):
        args = (params, init, xs)
        wrt = tuple(args[i] for i in idx)
        with tf.GradientTape() as tape:
            tape.watch(wrt)
            carry, ys = adapter(problem.tf_step(params), init, xs)
            loss = problem.tf_loss(carry if final else ys)
        return tuple(tape.gradient(loss, wrt))
    fn = wrap_tf(run, where)
    args = tf_data(data)
    return lambda: fn(*args)


AROUND = "~around"  # e.g. "tfscan@graph~around": the tape outside the function's call


def _gradient_around(key: str, problem, data: dict) -> Callable[[], Any]:
    """The gradient of a model's function by a tape around its call, as a custom training loop
    or a Keras model called under a tape writes it: the weights (``params``) are
    ``tf.Variable``s the function reads, the other inputs its arguments; TensorFlow builds the
    function's gradient apart from it, for every input."""
    adapter, where = TF_SCANS[key]
    final = getattr(problem, "final", False)
    params, init, xs = tf_data(data)
    variables = tf.nest.map_structure(tf.Variable, params)

    def loss(init, xs):
        carry, ys = adapter(problem.tf_step(variables), init, xs)
        return problem.tf_loss(carry if final else ys)
    fn = wrap_tf(loss, where)
    wrt = tuple({"params": variables, "init": init, "xs": xs}[w] for w in problem.wrt)

    def run():
        with tf.GradientTape() as tape:
            tape.watch([w for w in wrt if not isinstance(w, (dict, tf.Variable))])
            value = fn(init, xs)
        return tuple(tape.gradient(value, wrt))
    return run


def jax_segmented_scan(step, init, xs, every: str):
    """``jax.lax.scan`` checkpointed every ``k`` steps (``every``: an int or ``"sqrt"``): an
    outer scan over segments whose step, a ``jax.checkpoint`` of the inner scan, keeps only
    its input carry — JAX's way of writing tfscan's ``remat=k`` / ``"sqrt"``."""
    T = jax.tree_util.tree_leaves(xs)[0].shape[0]
    from tfscan._scan.remat import segment_length  # the segments tfscan's remat="sqrt" takes
    k = segment_length(T, every if every == "sqrt" else int(every))
    segments, tail = divmod(T, k)
    main = jax.tree_util.tree_map(lambda x: x[: segments * k].reshape((segments, k) + x.shape[1:]), xs)
    segment = jax.checkpoint(lambda c, x: jax.lax.scan(step, c, x))
    carry, ys = jax.lax.scan(segment, init, main)
    ys = jax.tree_util.tree_map(lambda y: y.reshape((segments * k,) + y.shape[2:]), ys)
    if tail:
        carry, ys_tail = jax.lax.scan(step, carry, jax.tree_util.tree_map(lambda x: x[segments * k:], xs))
        ys = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), ys, ys_tail)
    return carry, ys


def _parse_remat(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if text.isdigit():
        return int(text)
    return text


def remat_policies(length: int) -> list | None:
    """The ``remat`` values to measure, or ``None`` when ``tfscan.scan`` has no ``remat``."""
    import inspect
    try:
        params = inspect.signature(tfscan.scan).parameters
    except (TypeError, ValueError):
        return None
    if "remat" not in params:
        return None
    k = max(2, int(round(length ** 0.5)))
    return [False, True, "full", "sqrt", k]


def to_numpy_leaves(out: Any) -> list[np.ndarray]:
    """Flatten a result (TF or JAX nests, tuples) into a list of float64 arrays."""
    leaves = jax.tree_util.tree_leaves(
        out, is_leaf=lambda x: isinstance(x, (tf.Tensor, tf.Variable, np.ndarray)))
    return [np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float64) for x in leaves]


def max_rel_error(got: Any, ref: Any) -> float:
    """Largest |got - ref| over all leaves, relative to the largest |ref| of that leaf."""
    g, r = to_numpy_leaves(got), to_numpy_leaves(ref)
    if len(g) != len(r):
        return float("inf")
    worst = 0.0
    for a, b in zip(g, r):
        if a.shape != b.shape:
            return float("inf")
        scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-6)
        err = float(np.max(np.abs(a - b))) / scale if b.size else 0.0
        if not np.isfinite(err):
            return float("inf")
        worst = max(worst, err)
    return worst


def hvp(key: str, problem, data: dict) -> Callable[[], Any]:
    """A callable returning the Hessian-vector product of ``sum(ys)`` w.r.t. ``params["W_hh"]``
    in the direction ``data["v"]``: ``jax.jvp`` of ``jax.grad`` under ``jax.jit``, or a
    ``tf.autodiff.ForwardAccumulator`` around a ``GradientTape`` (TensorFlow's spelling)."""
    if key == "jax":
        def run(params, init, xs, v):
            def loss(w):
                return problem.jax_loss(jax.lax.scan(problem.jax_step({**params, "W_hh": w}), init, xs)[1])
            return jax.jvp(jax.grad(loss), (params["W_hh"],), (v,))[1]
        fn = jax.jit(run)
        args = jax_data(data) + (jnp.asarray(data["v"]),)
        return lambda: block(fn(*args))
    adapter, where = TF_SCANS[key]

    def run(params, init, xs, v):
        w = params["W_hh"]
        with tf.autodiff.ForwardAccumulator(w, v) as acc:
            with tf.GradientTape() as tape:
                tape.watch(w)
                _, ys = adapter(problem.tf_step({**params, "W_hh": w}), init, xs)
                loss = problem.tf_loss(ys)
            g = tape.gradient(loss, w)
        return acc.jvp(g)
    fn = wrap_tf(run, where)
    args = tf_data(data) + (tf.constant(data["v"]),)
    return lambda: fn(*args)


def jvp2(key: str, problem, data: dict) -> Callable[[], Any]:
    """A callable returning the final carry, its JVP and its second-order JVP (a JVP of a
    JVP) w.r.t. the step parameter ``a``, which travels in the carry: ``jax.jvp`` of
    ``jax.jvp`` under ``jax.jit``, or nested ``tf.autodiff.ForwardAccumulator``s around a
    ``tfscan.scan`` called eagerly."""
    if key == "jax":
        step = problem.jax_step2()

        def run(a, init, xs):
            def final(a):
                return jax.lax.scan(step, (init, a), xs)[0][0]

            def first(a):
                return jax.jvp(final, (a,), (jnp.ones_like(a),))
            (c, t), (_, tt) = jax.jvp(first, (a,), (jnp.ones_like(a),))
            return c, t, tt
        fn = jax.jit(run)
        args = (jnp.asarray(data["params"]["a"]), jnp.asarray(data["init"]), jnp.asarray(data["xs"]))
        return lambda: block(fn(*args))
    step = problem.tf_step2()
    a, init, xs = tf.constant(data["params"]["a"]), tf.constant(data["init"]), tf.constant(data["xs"])

    # The tangent seeds are made once, outside both accumulators (JAX's seeds are constants of
    # its program): made inside the outer one, TensorFlow would trace a JVP function of
    # ``OnesLike`` on the first call (~45 ms), a cost of TensorFlow's forward mode, not the scan's.
    # Two tensors, as the row was first measured; one tensor seeding both accumulators takes the
    # same one-loop path since s7-jvp2 (tests/test_first_call.py::test_jvp_of_jvp_runs_one_program_alone).
    seed_outer, seed_inner = tf.ones_like(a), tf.ones_like(a)

    def run():
        with tf.autodiff.ForwardAccumulator(a, seed_outer) as outer:
            with tf.autodiff.ForwardAccumulator(a, seed_inner) as inner:
                c = tfscan.scan(step, (init, a), xs)[0][0]
            t = inner.jvp(c)
        return c, t, outer.jvp(t)
    return run
