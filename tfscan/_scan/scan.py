"""``scan``: validate, trace the step once, run the compiled loop (or the eager one)."""

from __future__ import annotations

from typing import Callable, TypeVar

import tensorflow as tf

from tfscan._core import cache as _cache
from tfscan._core import checks as _checks
from tfscan._core import context as _context
from tfscan._core import fast as _fast
from tfscan._core import tree as _tree
from tfscan._core import weak as _weak
from tfscan._scan.autodiff import differentiable_scan
from tfscan._scan.plan import Plan
from tfscan._scan.plan import is_float
from tfscan._scan.program import Programs, Static
from tfscan._scan.remat import binomial_slots, checkpointed_scan, is_binomial
from tfscan import _tf
from tfscan._tf import record

__all__ = ["scan"]

Carry = TypeVar("Carry")
X = TypeVar("X")
Y = TypeVar("Y")

def scan(f: Callable[[Carry, X], tuple[Carry, Y]], init: Carry, xs: X = None,
         length: int | tf.Tensor | None = None, reverse: bool = False,
         unroll: int | bool = 1, remat: bool | int | str | tuple = False) -> tuple[Carry, Y]:
    """Scan ``f`` over the leading axis of ``xs`` while carrying state, as ``jax.lax.scan``.

    Semantically (for a Python ``length``)::

        def scan(f, init, xs, length=None):
            carry, ys = init, []
            for i in range(length):
                carry, y = f(carry, xs[i] if xs is not None else None)
                ys.append(y)
            return carry, stack(ys)

    but run as one compiled XLA ``While`` loop, with a linear-time gradient.

    Args:
      f: ``f(carry, x) -> (new_carry, y)``. ``new_carry`` must match ``init`` in
        structure, dtypes and shapes; ``y`` may be any nest (``None`` for no output).
      init: the initial carry, any nest of tensors (tuples, lists, dicts, namedtuples,
        ``None`` leaves). Python numbers become ``tf.constant``s (float32 / int32), unless
        the step returns another dtype for them (JAX's weak types: ``scan(f, 0, xs_int8)``
        carries int8).
      xs: a nest of tensors sliced along axis 0, or ``None`` (then pass ``length``).
      length: the number of steps: an int, or a scalar int tensor inside a
        ``tf.function`` when it is known only at run time. Must equal the leading
        size of every leaf of ``xs`` when both are given.
      reverse: walk from the last step to the first; ``ys[i]`` still belongs to ``xs[i]``.
      unroll: steps per loop iteration (a positive int), or ``True`` (or ``0``, as in JAX) to
        unroll fully.
      remat: what the gradient keeps from the forward pass. ``False`` (default): each
        step's residuals, so the backward pass never recomputes a step (fastest,
        ``O(T)`` memory). ``True`` or ``"full"``: only each step's input carry; the
        backward pass recomputes the step. An int ``k`` or ``"sqrt"``: the carry every
        ``k`` (or ``sqrt(T)``) steps; segments are recomputed, ``O(T/k + k)`` memory.
        ``"binomial"`` or ``("binomial", k)``: Griewank's binomial checkpointing with
        ``k`` snapshots (``ceil(log2 T)`` by default): ``O(k)`` carries, the backward
        pass recomputes ``O(T log T / log k)`` steps (``unroll`` is not applied to it).
        Values and gradients are the same under every policy.

    Returns:
      ``(final_carry, ys)`` where every leaf of ``ys`` has a new leading axis of size ``length``.

    Example:

    >>> import tensorflow as tf, tfscan
    >>> carry, ys = tfscan.scan(lambda c, x: (c + x, c + x), 0.0, tf.range(1.0, 6.0))
    >>> float(carry), ys.numpy().tolist()
    (15.0, [1.0, 3.0, 6.0, 10.0, 15.0])
    >>> tfscan.scan(lambda c, _: (2 * c, c), 1, length=4)[1].numpy().tolist()
    [1, 2, 4, 8]
    """
    fast = _fast_call(f, init, xs, length, reverse, unroll, remat)
    if fast is not None:
        return fast
    _checks.check_callable(f)
    unroll = _checks.check_unroll(unroll)
    reverse = _checks.check_reverse(reverse)
    remat = _checks.check_remat(remat)
    init_leaves, init_paths, init_tree = _tree.flatten_with_paths(init, "init")
    xs_leaves, xs_paths, xs_tree = _tree.flatten_with_paths(xs, "xs")
    raw_init = init_leaves
    init_leaves = _checks.to_tensors(init_leaves, init_paths, "init")
    xs_leaves = _checks.to_tensors(xs_leaves, xs_paths, "xs")
    static_length, length_value = _checks.scan_length(xs_leaves, xs_paths, length)

    if _context.jit_disabled():
        try:
            return _eager_scan(f, init_tree, init_leaves, xs_tree, xs_leaves, length_value, reverse)
        except (TypeError, ValueError, tf.errors.InvalidArgumentError):
            retyped = _retyped_init(f, init_tree, raw_init, init_leaves, xs_tree, xs_leaves)  # as compiled
            if retyped is None:
                raise
            return _eager_scan(f, init_tree, retyped, xs_tree, xs_leaves, length_value, reverse)
    if remat not in (True, False):
        if static_length is None:
            raise ValueError(f"scan: remat={remat!r} needs a length known when the scan is traced; "
                             "use remat=True for a length known only at run time.")
        if is_binomial(remat):
            remat = binomial_slots(remat, static_length)
        else:
            return checkpointed_scan(scan, f, _tree.unflatten(init_tree, init_leaves),
                                     _tree.unflatten(xs_tree, xs_leaves), static_length, reverse, unroll, remat)

    # The key holds shapes and dtypes; the TensorSpecs are made only to trace a new plan.
    carry_key = tuple((tuple(t.shape.as_list()) if t.shape.rank is not None else None, t.dtype)
                      for t in init_leaves)
    x_key = tuple((tuple(t.shape.as_list()[1:]) if t.shape.rank is not None else None, t.dtype)
                  for t in xs_leaves)
    static = Static(static_length, reverse, unroll)
    closure = _cache.closure(f)
    key = (closure.key, init_tree, xs_tree, carry_key, x_key, static.key(), remat)
    x_specs = _x_specs(xs_leaves)
    make_plan = lambda: Plan(f, init_tree, [tf.TensorSpec(t.shape, t.dtype) for t in init_leaves],  # noqa: E731
                             xs_tree, x_specs(), slots=closure.tensors)
    try:
        programs, created = _cache.lookup("scan", key, lambda: Programs(make_plan(), static, remat))
    except (TypeError, ValueError):
        retyped = _retyped_init(f, init_tree, raw_init, init_leaves, xs_tree, xs_leaves)
        if retyped is None:
            raise
        return scan(f, _tree.unflatten(init_tree, retyped), xs, length, reverse, unroll, remat)
    plan = programs.plan
    if created:
        consts = plan.step.const_values()
    elif closure.exact and plan.step.feed.complete:
        consts = plan.step.const_values(closure.tensors)  # this call's closed-over tensors
    else:
        # f reads objects whose contents may have changed (attributes of a layer, a NumPy
        # array, a distribution object): trace again, and keep the compiled programs if the
        # new trace has the same ops and constants of the same types (their values are inputs).
        fresh = make_plan()
        if fresh.step.fingerprint != plan.step.fingerprint:
            programs = Programs(fresh, static, remat)
            _cache.put("scan", key, programs)
            plan = fresh
        consts = fresh.step.const_values()
    dynamic_length = None if static_length is not None or xs_leaves else length_value
    if _needs_gradient(init_leaves, xs_leaves, consts):
        outs = differentiable_scan(programs, init_leaves, xs_leaves, consts, dynamic_length)
    else:
        carry, ys, _ = programs.forward(init_leaves, xs_leaves, consts, dynamic_length)
        outs = list(carry) + list(ys)
        if static_length is not None and closure.exact and plan.step.feed.complete and tf.executing_eagerly():
            _remember(f, (init, xs, length, reverse, unroll, remat), closure, programs)
    n = len(init_leaves)
    return _tree.unflatten(init_tree, outs[:n]), _tree.unflatten(plan.y_tree, outs[n:])


# The short-call fast path (:mod:`tfscan._core.fast`): eager calls nothing records, per step function.
_FAST = _fast.Table()


class _FastScan:
    """What the slow path resolved for one signature: the forward program and its inputs."""

    __slots__ = ("closure", "concrete", "captured", "consts", "step", "n", "init_tree", "y_tree")

    def __init__(self, closure, programs: Programs, direct):
        plan = programs.plan
        self.closure, (self.concrete, self.captured) = closure, direct
        self.step, self.n = plan.step, plan.n_carry
        variables = any(isinstance(s, tf.Variable) for s in plan.step.const_sources)
        self.consts = None if variables else plan.step.const_values(closure.tensors)
        self.init_tree, self.y_tree = plan.carry_tree, plan.y_tree

    def __call__(self, leaves: list):
        consts = self.consts if self.consts is not None else self.step.const_values(self.closure.tensors)
        outs = _tf.call_concrete(self.concrete, leaves + consts, self.captured)
        n = self.n
        return _tree.unflatten(self.init_tree, outs[:n]), _tree.unflatten(self.y_tree, outs[n:])


def _fast_key(f, args: tuple):
    """``(signature, leaves)`` of a call ``scan(f, *args)`` the fast path may take, else ``(None, None)``."""
    init, xs, length, reverse, unroll, remat = args
    if not (type(reverse) is bool and type(remat) is bool and type(unroll) in (int, bool)
            and (length is None or type(length) is int)):
        return None, None
    sig, leaves = _fast.signature((init, xs))
    return (None, None) if sig is None else ((sig, _fast.static(length, reverse, unroll, remat)), leaves)


def _fast_call(f, init, xs, length, reverse, unroll, remat):
    """The scan's result through the fast path, or ``None`` (then the slow path runs)."""
    if not tf.executing_eagerly() or record.could_possibly_record() or _context.jit_disabled():
        return None
    key, leaves = _fast_key(f, (init, xs, length, reverse, unroll, remat))
    entry = _FAST.get(f, key) if key is not None else None
    if entry is None or _cache.closure(f) is not entry.closure:
        return None
    return entry(leaves)


def _remember(f, args: tuple, closure, programs: Programs) -> None:
    """Record an eager call the slow path checked, for the fast path (see :mod:`tfscan._core.fast`)."""
    direct = programs.direct_forward()
    if direct is None or not _cache.memoized(f, closure):
        return
    key, _ = _fast_key(f, args)
    if key is not None:
        _FAST.put(f, key, _FastScan(closure, programs, direct))


def _x_specs(xs_leaves):
    return lambda: [tf.TensorSpec(t.shape[1:], t.dtype) for t in xs_leaves]


def _needs_gradient(*groups) -> bool:
    """Whether a gradient could be asked for: a graph (symbolic gradients) or a live tape."""
    if not any(is_float(t.dtype) for g in groups for t in g):
        return False
    return not tf.executing_eagerly() or record.could_possibly_record()


def _retyped_init(f, init_tree, raw_init, init_leaves, xs_tree, xs_leaves) -> list | None:
    """The init leaves with each Python scalar given the dtype the step computes for it (a
    weak type, as JAX's), or ``None`` when retyping does not help."""
    n = len(init_leaves)
    return _weak.retype(lambda *a: f(_tree.unflatten(init_tree, a[:n]), _tree.unflatten(xs_tree, a[n:]))[0],
                        raw_init, init_leaves, _x_specs(xs_leaves)())


def _eager_scan(f, init_tree, init, xs_tree, xs, length, reverse):
    """``disable_jit``: the step runs as ordinary Python, one call per step."""
    carry = _tree.unflatten(init_tree, init)
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in init]
    n = int(length)
    ys = []
    for i in (reversed(range(n)) if reverse else range(n)):
        x = _tree.unflatten(xs_tree, [t[i] for t in xs])
        new_carry, y = _checks.step_pair(f(carry, x))
        carry = _tree.unflatten(init_tree, _checks.new_carry(new_carry, init_tree, specs))
        ys.append(y)
    if reverse:
        ys.reverse()
    if not ys:
        # Nothing ran: trace f once for the shapes and dtypes of y, as the compiled path does.
        plan = Plan(f, init_tree, [tf.TensorSpec(t.shape, t.dtype) for t in init], xs_tree,
                    [tf.TensorSpec(t.shape[1:], t.dtype) for t in xs])
        stacked = [tf.zeros([0] + s.shape.as_list(), s.dtype) for s in plan.y_specs]
        return carry, _tree.unflatten(plan.y_tree, stacked)
    y_leaves = [_tree.flatten(y)[0] for y in ys]
    stacked = [tf.stack([tf.convert_to_tensor(y[j]) for y in y_leaves]) for j in range(len(y_leaves[0]))]
    return carry, _tree.unflatten(_tree.flatten(ys[0])[1], stacked)
