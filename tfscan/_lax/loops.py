"""``while_loop`` with ``jax.lax.while_loop``'s signature and semantics.

``while_loop`` traces ``cond_fun`` and ``body_fun`` once on the carry's specs (their
closed-over tensors and variables become explicit inputs, as for scan) and runs one
compiled XLA ``While``. A while loop has no reverse-mode derivative (its trip count is
data-dependent, so nothing bounds the memory of a backward pass); as in JAX, asking for
one raises a ``ValueError`` — unless the loop is given ``max_steps=N``: then it stops
after at most ``N`` steps and ``tfscan._lax.bounded`` reverses it (checkpointed by ``remat``,
in time linear in the steps actually taken). Forward mode (``tf.autodiff.ForwardAccumulator``)
works either way: the tangents run in a second compiled loop alongside the primal carry.

``fori_loop`` (``fori.py``) and ``map`` (``map.py``) are built on ``scan`` and this loop.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, Callable, TypeVar

import numpy as np
import tensorflow as tf

from tfscan._core import cache as _cache
from tfscan._core import checks as _checks
from tfscan._core import context as _context
from tfscan._core import gradients as _gradients
from tfscan._core import tree as _tree
from tfscan._core import weak as _weak
from tfscan._core.flat import scatter, split_list
from tfscan._lax import bounded as _bounded
from tfscan._lax import control as _control
from tfscan._scan import forward as _forward
from tfscan._scan import program as _program
from tfscan._scan.buffered_loop import keep_shape
from tfscan._scan.plan import Plan, is_float
from tfscan._scan.step import Traced
from tfscan._tf import record

__all__ = ["while_loop"]

T = TypeVar("T")

REVERSE_ERROR = (
    "Reverse-mode differentiation does not work for tfscan.while_loop or tfscan.fori_loop "
    "with dynamic start/stop values (bounds known only at run time). Try using tfscan.scan, "
    "or using fori_loop with static start/stop (Python ints), or pass max_steps=N (a Python "
    "int bounding the number of steps) to tfscan.while_loop.")

_SYMBOLIC_ERROR = REVERSE_ERROR + (
    " (Forward mode works with a tf.autodiff.ForwardAccumulator opened eagerly or inside the "
    "tf.function that runs the loop, not around a tf.function call.)")

# Raised instead when the gradient is built while an accumulator is live: TensorFlow's JVP
# of a tf.function call transposes the call's gradient (a tape may be live too: the
# reverse-mode error follows).
_FORWARD_ERROR = (
    "Forward mode (tf.autodiff.ForwardAccumulator) opened outside a tf.function does not reach a "
    "tfscan.while_loop or tfscan.fori_loop with dynamic start/stop values inside it: TensorFlow "
    "computes the JVP of a tf.function call by transposing the call's gradient, which such a loop "
    "does not have (as in JAX). Use tfscan.jit instead of tf.function for that function (an eager "
    "tfscan.jit call has forward rules of its own), or open the ForwardAccumulator inside the "
    "tf.function. If a GradientTape differentiates the loop: " + REVERSE_ERROR)

# Raised when an accumulator would differentiate the backward loop of while_loop(max_steps)
# (a Hessian-vector product: a tape inside an accumulator). TensorFlow would transpose the
# compiled backward loop's own gradient, which XLA cannot build ("fixed tensor list size").
_FORWARD_OVER_REVERSE_ERROR = (
    "Forward mode over the reverse mode of tfscan.while_loop(..., max_steps=N) (a "
    "GradientTape inside a tf.autodiff.ForwardAccumulator, e.g. a Hessian-vector product) is "
    "not supported: the loop's reverse mode is first-order (JAX has no reverse mode of a while "
    "loop at all). Take the second derivative in forward mode (nested ForwardAccumulators, or "
    "the accumulator inside the tape), or write the loop as tfscan.scan / tfscan.fori_loop with "
    "static bounds, whose derivatives compose to any order.")


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
    c_closure, b_closure = _cache.closure(cond_fun), _cache.closure(body_fun)
    key = (c_closure.pinned_key, b_closure.pinned_key, tree, carry_specs, max_steps, remat)
    make = lambda: _WhilePlan(cond_fun, body_fun, tree, carry_specs, max_steps, remat,  # noqa: E731
                              c_closure.tensors, b_closure.tensors)
    try:
        plan, created = _cache.lookup("while_loop", key, make)
        if not created and not plan.complete and not plan.owner.owns(body_fun):
            plan = make()  # it reads tensors through objects the walk does not open: trace again
            _cache.put("while_loop", key, plan)
    except (TypeError, ValueError):  # a Python scalar in init_val may need the body's dtype (weak type)
        retyped = _weak.retype(lambda *a: body_fun(_tree.unflatten(tree, list(a))), _tree.flatten(init_val)[0],
                               leaves, [])
        if retyped is None:
            raise
        return while_loop(cond_fun, body_fun, _tree.unflatten(tree, retyped), max_steps=asked[0], remat=asked[1])
    kc, kb = plan.cond.const_values(c_closure.tensors), plan.body.const_values(b_closure.tensors)
    out = [t if same else o for t, o, same in zip(leaves, plan.run(leaves, kc, kb), plan.unchanged)]
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

    def __init__(self, cond_fun: Callable, body_fun: Callable, tree: _tree.TreeDef, carry_specs: tuple,
                 max_steps: int | None = None, every: int = 1, cond_slots: tuple = (), body_slots: tuple = ()):
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
        self.cond = Traced(flat_cond, self.specs, name="while_cond", slots=cond_slots)
        self.reverse = None
        if max_steps is None:
            self.body = Traced(flat_body, self.specs, name="while_body", slots=body_slots)
        else:  # a scan step (no xs, no ys), for the step's traced VJP
            step = lambda c, _: (_tree.unflatten(tree, flat_body(*_tree.flatten(c)[0])), None)  # noqa: E731
            plan = Plan(step, tree, self.specs, _tree.flatten(None)[1], [], name="while_loop", slots=body_slots)
            self.body = plan.step
            self.reverse = _bounded.Reverse(plan, self.cond, max_steps, every)
        self.fc = [i for i, s in enumerate(self.specs) if is_float(s.dtype)]
        # Each call feeds its own closed-over tensors (:meth:`Traced.const_values`), so one
        # plan serves every call with the same code, closed-over values and specs.
        self.complete = self.cond.feed.complete and self.body.feed.complete
        self.owner = _cache.Owner(body_fun)
        self.graph_bound = self.cond.graph_bound or self.body.graph_bound
        # Integer carry leaves the body changes are run-time values of the loop's program.
        self._forward = _control.Compiled(lambda meta: self._forward_build,
                                          self.body.changed_integers(len(self.specs)))

    def _loop(self, carry: list, kc: list, body: Callable) -> list:
        if not carry:  # nothing is carried, so nothing the loop computes can be observed
            return []
        shapes = [t.shape for t in carry]
        return list(tf.while_loop(
            lambda *c: self.cond.apply(list(c[:len(self.specs)]), kc)[0],
            lambda *c: [keep_shape(t, s) for t, s in zip(body(list(c)), shapes)],
            carry, maximum_iterations=self.max_steps))

    def _forward_build(self, *args):
        n, nc = len(self.specs), len(self.cond.const_sources)
        carry, kc, kb = split_list(args, [n, nc])
        return self._loop(carry, kc, lambda c: self.body.apply(c, kb))

    def _jvp_closed(self, kb: list) -> list:
        """What the JVP loop's body closes over: the body's constants (variables as such)
        and the resources it uses other than by reads."""
        closed = [s if isinstance(s, tf.Variable) else v for s, v in zip(self.body.const_sources, kb)]
        return closed + [h for _, h in self.body.handles]

    def jvp_run(self, carry: list, kc: list, kb: list) -> list:
        """:meth:`run` of :meth:`jvp_plan`, fed this call's constants (the plan is traced once)."""
        plan = self.jvp_plan(kc, kb)
        return plan.run(carry, plan.cond.const_values(kc), plan.body.const_values(self._jvp_closed(kb)))

    def jvp_plan(self, kc: list, kb: list) -> "_WhilePlan":
        """The loop over ``(carry, tangents of its float leaves, tangents of the body's float
        constants)``: the body runs under a ``ForwardAccumulator`` inside its trace
        (:func:`tfscan._scan.forward.jvp_call`), so each op — a nested loop too — is
        differentiated by its own forward rule; the constants' tangents ride in the carry.
        It is a while loop of this kind again: a JVP of it is its own JVP loop."""
        if self._jvp_plan is not None:
            return self._jvp_plan
        # The JVP loop re-traces the user functions this plan was traced from, which read the
        # tensors of *that* call: it is built on the traced constants (``kc``/``kb`` of a later
        # call are fed to it as slots). Built on this call's, a body closing over a fresh tensor
        # read the first call's without a tangent: a silently wrong JVP after a tape's call.
        kc, kb = self.cond.const_values(), self.body.const_values()
        cond_fun, tree, every = self._user
        n, fc, fk = len(self.specs), self.fc, self._float_consts(kb)
        sources = self.body.const_sources
        closed = self._jvp_closed(kb)
        specs = self.specs + [self.specs[i] for i in fc] + [tf.TensorSpec(kb[i].shape, kb[i].dtype) for i in fk]
        n_t = len(fc)

        def cond(v):
            return cond_fun(_tree.unflatten(tree, v[:n]))

        def body(v):
            c, tc, tk = split_list(v, [n, n_t])
            outs, t_outs = _forward.jvp_call(self._flat_body, c, scatter(n, fc, tc),
                                             _forward.watch_list(sources, kb, fk, tk), closed)
            return list(outs) + [t_outs[i] for i in fc] + list(tk)

        self._jvp_plan = _WhilePlan(cond, body, _tree.flatten([0] * len(specs))[1], tuple(specs),
                                    self.max_steps, every, tuple(kc), tuple(closed))
        return self._jvp_plan

    @staticmethod
    def _float_consts(consts) -> list:
        return [i for i, c in enumerate(consts) if is_float(c.dtype)]

    def run(self, carry: list, kc: list, kb: list) -> list:
        """The final carry from ``carry``, with the cond's and body's constants ``kc``, ``kb``."""
        recording = record.could_possibly_record()
        if self.reverse is not None and (recording or not tf.executing_eagerly()):
            self.reverse.trace_vjp(kb)
        with record.stop_recording() if recording else contextlib.nullcontext():
            # Where nothing records (inference) no checkpoints are saved; in a graph, only if a
            # gradient is asked of it later (the launched op is then made to save them).
            deferred = self.reverse is not None and not recording and _program.launchable()
            if self.reverse is None or deferred or not recording and tf.executing_eagerly():
                outs = self._forward(*carry, *kc, *kb)
            else:
                outs, steps, bufs = self.reverse.forward(carry, kc, kb)
            if not tf.executing_eagerly() and any(is_float(t.dtype) for t in outs):
                # symbolic gradients: tf.gradients, a tape outside the function
                outs = _no_reverse(outs) if self.reverse is None else \
                    self.reverse.with_deferred_gradient(outs, self._forward, carry, kc, kb) if deferred else \
                    self.reverse.with_registered_gradient(outs, steps, bufs, carry, kb)
        if not (recording and outs):
            return outs
        n, fk = len(carry), self._float_consts(kb)

        def forward_function(*tangents):
            t_c = [_zeros_if_none(tangents[i], carry[i]) for i in self.fc]
            t_k = [_zeros_if_none(tangents[n + i], kb[i]) for i in fk]
            with _forward.computing():
                out = self.jvp_run(list(carry) + t_c + t_k, kc, kb)[n: n + len(self.fc)]
            result = [None] * n
            for j, i in enumerate(self.fc):
                result[i] = out[j]
            return result

        def backward_function(*d_outs):
            if self.reverse is None:
                raise ValueError(REVERSE_ERROR)
            if record.tangent_indices(list(carry) + list(kb) + list(d_outs)):
                raise ValueError(_FORWARD_OVER_REVERSE_ERROR)
            return self.reverse.backward(steps, bufs, kb, list(d_outs))

        record.record_operation("tfscan_while_loop", outs, list(carry) + list(kb),
                                backward_function, forward_function)
        return outs


def _zeros_if_none(t: Any, like: tf.Tensor) -> tf.Tensor:
    return tf.zeros_like(like) if t is None else t


def _no_reverse(outs: list) -> list:
    """Identity whose gradient is JAX's reverse-mode error (for graph-mode symbolic gradients)."""
    return _gradients.failing_identity(outs, _SYMBOLIC_ERROR, _FORWARD_ERROR)
