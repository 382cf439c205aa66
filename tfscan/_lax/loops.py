"""``while_loop``, ``fori_loop`` and ``map`` with ``jax.lax``'s signatures and semantics.

``while_loop`` traces ``cond_fun`` and ``body_fun`` once on the carry's specs (their
closed-over tensors and variables become explicit inputs, as for scan) and runs one
compiled XLA ``While``. A while loop has no reverse-mode derivative (its trip count is
data-dependent, so nothing bounds the memory of a backward pass); as in JAX, asking for
one raises a ``ValueError`` — unless the loop is given ``max_steps=N``: then it stops
after at most ``N`` steps and ``tfscan._lax.bounded`` reverses it (checkpointed by ``remat``,
in time linear in the steps actually taken). Forward mode (``tf.autodiff.ForwardAccumulator``)
works either way: the tangents run in a second compiled loop alongside the primal carry.

``fori_loop`` with bounds known when it is called becomes a ``tfscan.scan`` (so it is
reverse-differentiable); otherwise it is a ``while_loop``. ``map`` is a scan with no
carry; with ``batch_size`` each step maps a chunk with ``tf.vectorized_map``.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, Callable, TypeVar

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record

from tfscan._core import cache as _cache
from tfscan._core import checks as _checks
from tfscan._core import context as _context
from tfscan._core import tree as _tree
from tfscan._core import weak as _weak
from tfscan._lax import bounded as _bounded
from tfscan._lax import control as _control
from tfscan._scan import forward as _forward
from tfscan._scan.buffered_loop import keep_shape
from tfscan._scan.plan import Plan, is_float, scatter
from tfscan._scan.scan import scan
from tfscan._scan.step import Traced

__all__ = ["while_loop", "fori_loop", "map"]

T = TypeVar("T")

_REVERSE_ERROR = (
    "Reverse-mode differentiation does not work for tfscan.while_loop or tfscan.fori_loop "
    "with dynamic start/stop values (bounds known only at run time). Try using tfscan.scan, "
    "or using fori_loop with static start/stop (Python ints), or pass max_steps=N (a Python "
    "int bounding the number of steps) to tfscan.while_loop.")

_SYMBOLIC_ERROR = _REVERSE_ERROR + (
    " (Forward mode works with a tf.autodiff.ForwardAccumulator opened eagerly or inside the "
    "tf.function that runs the loop, not around a tf.function call.)")



def while_loop(cond_fun: Callable[[T], Any], body_fun: Callable[[T], T], init_val: T, *,
               max_steps: int | None = None, remat: bool | int | str = False) -> T:
    """Repeat ``body_fun`` while ``cond_fun`` is true, as ``jax.lax.while_loop``.

    Semantically::

        def while_loop(cond_fun, body_fun, init_val):
            val = init_val
            while cond_fun(val):
                val = body_fun(val)
            return val

    run as one compiled XLA ``While`` (inline when the caller is already XLA-compiled,
    so loops nest). Inside ``tfscan.disable_jit()`` it is that Python loop.

    Differentiation: forward mode (``tf.autodiff.ForwardAccumulator`` around the call,
    eager or inside the same ``tf.function``) works, for the carry and for closed-over
    tensors and variables. Reverse mode raises ``ValueError`` as in JAX, unless
    ``max_steps`` is given.

    Beyond JAX — ``max_steps=N``: the loop stops when ``cond_fun`` is false *or* after
    ``N`` steps (running into the bound is not an error: the result is the carry after
    ``N`` steps, what ``jax.lax.scan`` of length ``N`` with a ``done`` mask computes), and
    it is reverse-differentiable (``tfscan.grad``, ``tf.GradientTape``, ``tf.gradients``)
    w.r.t. ``init_val`` and closed-over tensors and variables, in time linear in the
    steps actually taken. ``remat`` bounds the memory of the backward pass:
    ``False``/``True`` keep every step's carry (``N`` carries), an int ``k`` keeps one
    carry every ``k`` steps and recomputes the rest, ``"sqrt"`` takes ``k = sqrt(N)``
    (``2 sqrt(N)`` carries: use it for large bounds). See ``tfscan._lax.bounded``.

    Args:
      cond_fun: ``cond_fun(val)`` returns a boolean scalar (a bool tensor of shape ``()``).
      body_fun: ``body_fun(val)`` returns the next ``val``, with exactly the pytree
        structure, dtypes and shapes of ``init_val`` (a Python number leaf takes the dtype
        of the carry leaf it replaces).
      init_val: the initial carry, any pytree of tensors (Python numbers become
        ``tf.constant``s: float32 / int32).
      max_steps: ``None`` (JAX's loop), or a non-negative Python int bounding the steps.
      remat: with ``max_steps``, what the backward pass keeps (above).

    Returns:
      The carry when ``cond_fun`` first returns false (or after ``max_steps`` steps).

    A Python scalar in ``init_val`` takes the dtype the body returns for it, as JAX's
    weak types do (``init_val=0`` with a body adding an int8 tensor carries int8); a
    tensor leaf never changes dtype. Differences from JAX: forward mode does not reach through a
    ``tf.function`` call from an accumulator opened outside it (that raises the
    reverse-mode ``ValueError``).

    Example:

    >>> import tensorflow as tf, tfscan
    >>> i, x = tfscan.while_loop(lambda c: c[1] < 100.0, lambda c: (c[0] + 1, c[1] * 3.0), (0, 1.0))
    >>> int(i), float(x)
    (5, 243.0)
    >>> float(tfscan.grad(lambda x: tfscan.while_loop(lambda c: c < 100.0, lambda c: c * 3.0, x,
    ...                                               max_steps=50))(1.0))  # d(243 x)/dx
    243.0
    """
    if not (callable(cond_fun) and callable(body_fun)):
        raise TypeError("while_loop: cond_fun and body_fun arguments should be callable, got "
                        f"cond_fun={cond_fun!r:.60} and body_fun={body_fun!r:.60}.")
    asked = (max_steps, remat)
    max_steps, remat = _check_bound(max_steps, remat)
    leaves, _, tree = _control.to_tensors("while_loop", init_val, "init_val")
    if _context.jit_disabled() and tf.executing_eagerly():
        val, i = _tree.unflatten(tree, leaves), 0
        while (max_steps is None or i < max_steps) and bool(_bool_scalar(cond_fun(val))):
            val, i = body_fun(val), i + 1
        return val
    carry_specs = _control.specs(leaves)
    key = (_context.function_key(cond_fun), _context.function_key(body_fun), tree, carry_specs,
           max_steps, remat)
    try:
        plan = _cache.lookup("while_loop", key, lambda: _WhilePlan(cond_fun, body_fun, tree, carry_specs,
                                                                    max_steps, remat))[0]
    except (TypeError, ValueError):  # a Python scalar in init_val may need the body's dtype (weak type)
        retyped = _weak.retype(lambda *a: body_fun(_tree.unflatten(tree, list(a))), _tree.flatten(init_val)[0],
                               leaves, [])
        if retyped is None:
            raise
        return while_loop(cond_fun, body_fun, _tree.unflatten(tree, retyped), max_steps=asked[0], remat=asked[1])
    out = [t if same else o for t, o, same in zip(leaves, plan.run(leaves), plan.unchanged)]
    return _tree.unflatten(tree, out)


def _check_bound(max_steps: Any, remat: Any) -> tuple[int | None, Any]:
    if max_steps is None:
        if remat is not False:
            raise ValueError(f"while_loop: remat={remat!r} needs max_steps (a Python int bounding the "
                             "number of steps): without it the loop has no reverse mode to checkpoint.")
        return None, False
    if isinstance(max_steps, (bool, np.bool_)) or not isinstance(max_steps, numbers.Integral) or max_steps < 0:
        raise TypeError(f"while_loop: max_steps must be None or a non-negative Python int (known when the "
                        f"loop is traced), got {type(max_steps).__name__} {max_steps!r:.60}.")
    remat = _checks.check_remat(remat, "while_loop")
    return int(max_steps), _bounded.interval(remat, int(max_steps))


def _bool_scalar(out: Any) -> tf.Tensor:
    leaves, treedef = _tree.flatten(out)
    if treedef != _tree.LEAF:
        raise TypeError(f"while_loop: cond_fun must return a boolean scalar, but got pytree {treedef}.")
    try:
        t = tf.convert_to_tensor(leaves[0])
    except (TypeError, ValueError):
        raise TypeError("while_loop: cond_fun must return a boolean scalar, but got "
                        f"{type(leaves[0]).__name__} {leaves[0]!r:.60}.") from None
    if t.dtype != tf.bool or t.shape.rank != 0:
        raise TypeError("while_loop: cond_fun must return a boolean scalar, but got output type "
                        f"{_checks._typestr(tf.TensorSpec(t.shape, t.dtype))}. Compare with a "
                        "scalar (x < n) or reduce (tf.reduce_any) to get one.")
    return t


class _WhilePlan:
    """The traced ``cond_fun`` / ``body_fun`` of a while loop and its compiled programs."""

    graph_bound = True  # keyed on closed-over tensors by identity: one graph's own (tfscan._core.cache)

    def __init__(self, cond_fun: Callable, body_fun: Callable, tree: _tree.TreeDef, carry_specs: tuple,
                 max_steps: int | None = None, every: int = 1):
        self.specs = list(carry_specs)
        self.max_steps = max_steps
        self._user = (cond_fun, tree, every)
        self._jvp_plan: _WhilePlan | None = None

        def flat_cond(*carry):
            return [_bool_scalar(cond_fun(_tree.unflatten(tree, list(carry))))]

        def flat_body(*carry):
            out = body_fun(_tree.unflatten(tree, list(carry)))
            new = _checks.new_carry(out, tree, self.specs, "while_loop", "body_fun", "init_val", "init_val")
            # Leaves the body returns unchanged are forwarded past the loop (as JAX does): an
            # unbatched value stays unbatched under vmap.
            self.unchanged = [a is b for a, b in zip(new, carry)]
            return new

        self._flat_body = flat_body
        self.cond = Traced(flat_cond, self.specs, name="while_cond")
        self.reverse = None
        if max_steps is None:
            self.body = Traced(flat_body, self.specs, name="while_body")
        else:  # a scan step (no xs, no ys), for the step's traced VJP
            step = lambda c, _: (_tree.unflatten(tree, flat_body(*_tree.flatten(c)[0])), None)  # noqa: E731
            plan = Plan(step, tree, self.specs, _tree.flatten(None)[1], [], name="while_loop")
            self.body = plan.step
            self.reverse = _bounded.Reverse(plan, self.cond, max_steps, every)
        self.fc = [i for i, s in enumerate(self.specs) if is_float(s.dtype)]
        self._forward = _control.Compiled(lambda meta: self._forward_build)

    def _loop(self, carry: list, kc: list, body: Callable) -> list:
        if not carry:  # nothing is carried, so nothing the loop computes can be observed
            return []
        shapes = [t.shape for t in carry]
        return list(tf.while_loop(
            lambda *c: self.cond.apply(list(c[:len(self.specs)]), kc)[0],
            lambda *c: [keep_shape(t, s) for t, s in zip(body(list(c)), shapes)],
            carry, maximum_iterations=self.max_steps))

    def _split(self, args: tuple, sizes: list) -> list:
        out, args = [], list(args)
        for n in sizes:
            out.append(args[:n])
            args = args[n:]
        return out

    def _forward_build(self, *args):
        n, nc = len(self.specs), len(self.cond.const_sources)
        carry, kc, kb = self._split(args, [n, nc, len(args) - n - nc])
        return self._loop(carry, kc, lambda c: self.body.apply(c, kb))

    def jvp_plan(self, kb: list) -> "_WhilePlan":
        """The loop over ``(carry, tangents of its float leaves, tangents of the body's float
        constants)``: the body runs under a ``ForwardAccumulator`` inside its trace
        (:func:`tfscan._scan.forward.jvp_call`), so each op — a nested loop too — is
        differentiated by its own forward rule; the constants' tangents ride in the carry.
        It is a while loop of this kind again: a JVP of it is its own JVP loop."""
        if self._jvp_plan is not None:
            return self._jvp_plan
        cond_fun, tree, every = self._user
        n, fc, fk = len(self.specs), self.fc, self._float_consts(kb)
        sources = self.body.const_sources
        closed = [s if isinstance(s, tf.Variable) else v for s, v in zip(sources, kb)]
        closed += [h for _, h in self.body.handles]
        specs = self.specs + [self.specs[i] for i in fc] + [tf.TensorSpec(kb[i].shape, kb[i].dtype) for i in fk]
        n_t = len(fc)

        def cond(v):
            return cond_fun(_tree.unflatten(tree, v[:n]))

        def body(v):
            c, tc, tk = v[:n], v[n: n + n_t], v[n + n_t:]
            outs, t_outs = _forward.jvp_call(self._flat_body, c, scatter(n, fc, tc),
                                             _forward.watch_list(sources, kb, fk, tk), closed)
            return list(outs) + [t_outs[i] for i in fc] + list(tk)

        self._jvp_plan = _WhilePlan(cond, body, _tree.flatten([0] * len(specs))[1], tuple(specs),
                                    self.max_steps, every)
        return self._jvp_plan

    @staticmethod
    def _float_consts(consts) -> list:
        return [i for i, c in enumerate(consts) if is_float(c.dtype)]

    def run(self, carry: list) -> list:
        kc, kb = self.cond.const_values(), self.body.const_values()
        recording = record.could_possibly_record()
        if self.reverse is not None and (recording or not tf.executing_eagerly()):
            self.reverse.trace_vjp(kb)
        with record.stop_recording() if recording else contextlib.nullcontext():
            if self.reverse is None:
                outs = self._forward(*carry, *kc, *kb)
            else:
                outs, steps, bufs = self.reverse.forward(carry, kc, kb)
            if not tf.executing_eagerly() and any(is_float(t.dtype) for t in outs):
                # symbolic gradients: tf.gradients, a tape outside the function
                outs = _no_reverse(outs) if self.reverse is None else \
                    self.reverse.with_registered_gradient(outs, steps, bufs, carry, kb)
        if not (recording and outs):
            return outs
        n, fk = len(carry), self._float_consts(kb)

        def forward_function(*tangents):
            t_c = [_zeros_if_none(tangents[i], carry[i]) for i in self.fc]
            t_k = [_zeros_if_none(tangents[n + i], kb[i]) for i in fk]
            with _forward.computing():
                out = self.jvp_plan(kb).run(list(carry) + t_c + t_k)[n: n + len(self.fc)]
            result = [None] * n
            for j, i in enumerate(self.fc):
                result[i] = out[j]
            return result

        def backward_function(*d_outs):
            if self.reverse is None:
                raise ValueError(_REVERSE_ERROR)
            return self.reverse.backward(steps, bufs, kb, list(d_outs))

        record.record_operation("tfscan_while_loop", outs, list(carry) + list(kb),
                                backward_function, forward_function)
        return outs


def _zeros_if_none(t: Any, like: tf.Tensor) -> tf.Tensor:
    return tf.zeros_like(like) if t is None else t


def _no_reverse(outs: list) -> list:
    """Identity whose gradient is JAX's reverse-mode error (for graph-mode symbolic gradients)."""
    @tf.custom_gradient
    def identity(*xs):
        def grad(*_):
            raise ValueError(_SYMBOLIC_ERROR)
        return [tf.identity(x) for x in xs], grad

    return list(identity(*outs))


def fori_loop(lower: int | tf.Tensor, upper: int | tf.Tensor, body_fun: Callable[[tf.Tensor, T], T],
              init_val: T, *, unroll: int | bool | None = None) -> T:
    """Loop ``body_fun`` from ``lower`` to ``upper``, as ``jax.lax.fori_loop``.

    Semantically::

        def fori_loop(lower, upper, body_fun, init_val):
            val = init_val
            for i in range(lower, upper):
                val = body_fun(i, val)
            return val

    ``upper <= lower`` runs no iteration. When both bounds are known at call time (Python
    or NumPy ints, eager tensors, constant graph tensors — JAX's "concrete" values) this
    is a ``tfscan.scan`` of ``upper - lower`` steps, reverse-differentiable; otherwise a
    ``tfscan.while_loop``, forward-differentiable only (reverse mode raises ``ValueError``
    saying to use static bounds).

    Args:
      lower: the first index (an integer scalar).
      upper: the end index, exclusive. ``lower`` and ``upper`` must have the same integer
        dtype unless one is a Python int (which takes the other's dtype); ``i`` has that
        dtype (int32 for Python ints).
      body_fun: ``body_fun(i, val) -> val``; the output must match ``init_val`` in pytree
        structure, dtypes and shapes.
      init_val: the initial value, any pytree of tensors.
      unroll: with static bounds, steps per loop iteration (an int, or ``True`` to unroll
        fully), as scan's ``unroll``. With dynamic bounds only ``None``/``False``/``1``.

    Returns:
      The final value.

    Bounds that are two whole Python floats (``0.0, 3.0``) are accepted as in JAX; ``i``
    is then float32. Differences from JAX: other float bounds are a ``TypeError``; ``i``
    is int32 for Python-int bounds even where JAX's x64 mode would make it int64; a Python
    number returned for a carry leaf takes that leaf's dtype (as in ``tfscan.scan``).

    Example:

    >>> import tensorflow as tf, tfscan
    >>> float(tfscan.fori_loop(0, 5, lambda i, x: x + tf.cast(i, tf.float32), 0.0))
    10.0
    >>> int(tfscan.fori_loop(2, tf.constant(6), lambda i, acc: acc * i, 1))  # 2*3*4*5
    120
    """
    if not callable(body_fun):
        raise TypeError(f"fori_loop: body_fun argument should be callable as body_fun(i, val) -> val, "
                        f"got {body_fun!r:.60}.")
    (lo, lo_static), (hi, hi_static), dtype = _bounds(lower, upper)
    if lo_static is not None and hi_static is not None:
        unroll = _checks.check_unroll(1 if unroll is None else unroll)
        length = max(hi_static - lo_static, 0)
        (_, val), _ = scan(_fori_scan_step(body_fun), (tf.constant(lo_static, dtype), init_val),
                           None, length=length, unroll=unroll)
        return val
    if not (unroll is None or unroll is False or unroll == 1):
        raise ValueError("fori_loop: can only use `unroll` in `fori_loop` if the loop bounds are "
                         f"statically known (got unroll={unroll!r} with a bound known only at run time).")
    _, _, val = while_loop(_fori_cond, _fori_while_body(body_fun),
                           (tf.cast(lo, dtype), tf.cast(hi, dtype), init_val))
    return val


def _bounds(lower: Any, upper: Any):
    """``((tensor, static int or None), (...), dtype)`` with JAX's dtype rule for the bounds."""
    lo, lo_dtype = _bound(lower, "lower")
    hi, hi_dtype = _bound(upper, "upper")
    if (lo_dtype is None) != (hi_dtype is None) and tf.float32 in (lo_dtype, hi_dtype):
        raise TypeError("fori_loop: lower and upper arguments to fori_loop must have equal types, got "
                        f"{type(lower).__name__} {lower!r} and {type(upper).__name__} {upper!r}. Pass two "
                        "ints (or two whole floats).")
    if lo_dtype is None or hi_dtype is None or lo_dtype == hi_dtype:
        dtype = lo_dtype or hi_dtype or tf.int32
    else:
        raise TypeError("fori_loop: lower and upper arguments to fori_loop must have equal types, "
                        f"got {lo_dtype.name} and {hi_dtype.name}. Cast one of them.")
    return lo, hi, dtype


def _bound(value: Any, name: str):
    """``((tensor or int, static int or None), dtype or None for a Python int)``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"fori_loop: {name} must be an integer scalar, got bool {value!r}.")
    if isinstance(value, numbers.Integral) and not isinstance(value, np.integer):
        return (value, int(value)), None
    if isinstance(value, float) and not isinstance(value, np.generic):
        # JAX takes float bounds; a scan of whole steps needs integral ones (i is float32).
        if not value.is_integer():
            raise TypeError(f"fori_loop: {name}={value!r} is a float that is not a whole number; the loop "
                            f"runs whole steps. Pass integer bounds (e.g. {name}={int(value)}).")
        return (value, int(value)), tf.float32
    try:
        t = tf.convert_to_tensor(value.value() if isinstance(value, tf.Variable) else value)
    except (TypeError, ValueError):
        raise TypeError(f"fori_loop: {name} must be an integer scalar, got {type(value).__name__} "
                        f"{value!r:.60}.") from None
    if t.shape.rank != 0 or not t.dtype.is_integer:
        raise TypeError(f"fori_loop: {name} must be an integer scalar (or a whole Python float), got a "
                        f"{t.dtype.name} tensor of shape {t.shape}. Cast it: tf.cast({name}, tf.int32).")
    static = tf.get_static_value(t)
    return (t, None if static is None else int(static)), t.dtype


def _fori_scan_step(body_fun: Callable) -> Callable:
    def step(carry, _):
        i, val = carry
        leaves, _, tree = _tree.flatten_with_paths(val, "init_val")
        new = _checks.new_carry(body_fun(i, val), tree, _control.specs(leaves), "fori_loop", "body_fun", "init_val", "init_val")
        return (i + 1, _tree.unflatten(tree, new)), None
    return step


def _fori_cond(carry):
    return carry[0] < carry[1]


def _fori_while_body(body_fun: Callable) -> Callable:
    def body(carry):
        i, upper, val = carry
        leaves, _, tree = _tree.flatten_with_paths(val, "init_val")
        new = _checks.new_carry(body_fun(i, val), tree, _control.specs(leaves), "fori_loop", "body_fun", "init_val", "init_val")
        return i + 1, upper, _tree.unflatten(tree, new)
    return body


def map(f: Callable[[Any], Any], xs: Any, *, batch_size: int | None = None) -> Any:  # noqa: A001
    """Map ``f`` over the leading axis of ``xs``, as ``jax.lax.map``.

    Semantically ``stack([f(x) for x in xs])`` for every leaf, run as a compiled
    ``tfscan.scan`` (one step per element, so memory stays that of one call of ``f``).
    With ``batch_size=b`` each scan step applies ``f`` to ``b`` elements at once,
    vectorized with ``tf.vectorized_map``; when the length is not a multiple of ``b``
    the remainder is one more vectorized call. ``batch_size=0`` (or one at least the
    length) vectorizes everything in one call. Differentiable like scan.

    Args:
      f: ``f(x) -> y`` for one slice ``x`` of ``xs``; ``y`` may be any pytree (``None``
        leaves allowed).
      xs: a pytree of tensors with a common leading axis.
      batch_size: ``None`` (sequential), or a non-negative int.

    Returns:
      ``f``'s outputs stacked along a new leading axis.

    Differences from JAX: ``batch_size`` vectorizes with ``tf.vectorized_map`` (TensorFlow's
    ``vmap``), which runs ops it cannot vectorize in a loop instead; it needs the leading
    size of ``xs`` known when traced.

    Example:

    >>> import tensorflow as tf, tfscan
    >>> xs = tf.reshape(tf.range(10.0), [5, 2])
    >>> tfscan.map(lambda x: tf.reduce_sum(x), xs).numpy().tolist()
    [1.0, 5.0, 9.0, 13.0, 17.0]
    >>> tfscan.map(lambda x: x[0] * x[1], xs, batch_size=2).numpy().tolist()
    [0.0, 6.0, 20.0, 42.0, 72.0]
    """
    if not callable(f):
        raise TypeError(f"map: f argument should be callable as f(x) -> y, got {f!r:.60}.")
    if batch_size is None:
        return scan(_map_step(f), (), xs)[1]
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"map: batch_size must be None or a non-negative int, got "
                        f"{type(batch_size).__name__} {batch_size!r:.40}.")
    if batch_size < 0:
        raise ValueError(f"map: batch_size must be None or a non-negative int, got {batch_size}.")
    leaves, paths, tree = _control.to_tensors("map", xs, "xs")
    if not leaves:
        return scan(_map_step(f), (), xs)[1]  # scan's error: nothing to map over
    length, _ = _checks.scan_length(leaves, paths, None)
    if length is None:
        raise ValueError(f"map: batch_size needs the leading axis of xs known when map is traced, but "
                         f"{paths[0]} has shape {leaves[0].shape}. Use batch_size=None, or give the "
                         "tf.function a static leading dimension.")
    if length == 0:
        return scan(_map_step(f), (), xs)[1]
    num_batches, remainder = divmod(length, batch_size) if batch_size else (0, length)
    step = _map_step(_vectorized(f, tree))
    parts = []
    if num_batches:
        chunks = [tf.reshape(x[: num_batches * batch_size], [num_batches, batch_size] + x.shape[1:].as_list()
                             if x.shape[1:].is_fully_defined() else
                             tf.concat([[num_batches, batch_size], tf.shape(x)[1:]], 0)) for x in leaves]
        parts.append(scan(step, (), chunks)[1])
    if remainder:
        rest = [x[num_batches * batch_size:][None] for x in leaves]
        parts.append(scan(step, (), rest)[1])
    out_leaves = [tf.concat([_merge_leading(p) for p in group], 0)
                  for group in zip(*[_tree.flatten(p)[0] for p in parts])]
    return _tree.unflatten(_tree.flatten(parts[0])[1], out_leaves)


def _merge_leading(t: tf.Tensor) -> tf.Tensor:
    """``[chunks, chunk, ...] -> [chunks * chunk, ...]``."""
    rest = t.shape[2:]
    return tf.reshape(t, [-1] + rest.as_list() if rest.is_fully_defined() else
                      tf.concat([[-1], tf.shape(t)[2:]], 0))


def _map_step(f: Callable) -> Callable:
    def step(_, x):
        return (), f(x)
    return step


def _vectorized(f: Callable, xs_tree: _tree.TreeDef) -> Callable:
    """``f`` on a chunk: the flat leaves of a batch of ``xs`` (any pytree) -> pytree of outputs."""
    def vf(chunk):
        box = []

        def one(elems):
            out = f(_tree.unflatten(xs_tree, list(elems)))
            leaves, paths, tree = _tree.flatten_with_paths(out, "output")
            box[:] = [tree]
            leaves = [_checks.output_tensor(v, p, "map", "f") for v, p in zip(leaves, paths)]
            return leaves or [tf.zeros([], tf.int32)]  # vectorized_map needs an output

        outs = tf.vectorized_map(one, list(chunk), fallback_to_while_loop=True)
        return _tree.unflatten(box[0], list(outs)[: box[0].num_leaves])
    return vf
