"""Forward mode of a scan: a JVP loop of its own, as in JAX (not a transposed VJP).

A ``tf.autodiff.ForwardAccumulator`` that meets a recorded operation calls the
operation's ``forward_function`` with the input tangents, when it has one, instead of
transposing its backward function (TensorFlow's "double-back"). A scan's forward function
(:func:`scan_tangents`) runs another scan: over ``(carry, carry tangents, constant
tangents)`` and ``(xs, xs tangents)``, whose step calls the user's step again *inside the
step's trace, under a ForwardAccumulator* (:func:`jvp_call`). So every op of the step is
differentiated by its own forward rule — a nested run-time-bounded ``while_loop`` (which has
no VJP) by its JVP loop, a nested scan by this JVP — and the JVP scan is an ordinary tfscan
scan: one compiled ``While``, itself recorded with a forward function (a JVP of a JVP is a
scan again) and a VJP (reverse over forward). A step of pure ops (``Traced.plain``: nothing
for a forward rule to do differently) is not called again: its trace is emitted again and
differentiated op by op by forward rules, inline (:func:`_plain_jvp`, :mod:`tfscan._scan.jvp_rules`:
JAX's JVP rules for the common ops, an op without one by its gradient transposed), minus a
TensorFlow function traced per op, and without building a whole gradient to transpose.

Eagerly, with no tape, the values come from the JVP loop itself
(:mod:`tfscan._scan.forward_eager`).

Constants the step closes over are captured again by the JVP step's trace; their tangents
ride in the carry unchanged (so a later call's tangents are fed, never baked into a trace).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from tfscan import _tf
from tfscan._core import tree as _tree
from tfscan._core.flat import scatter, split_list
from tfscan._scan import jvp_rules as _rules
from tfscan._scan.plan import Plan, float_indices, is_float
from tfscan._scan.program import Programs

__all__ = []  # private module


def jvp_call(fn: Callable[..., Sequence[tf.Tensor]], args: Sequence[tf.Tensor],
             tangents: Sequence[tf.Tensor | None], watched: Sequence[tuple[Any, tf.Tensor]] = (),
             closed: Sequence[Any] = (), plain: bool = False, imported: Callable | None = None):
    """``(fn(*args), tangents of its outputs)``, built inside the graph being traced.

    ``tangents[i]`` is the tangent of ``args[i]`` (``None``: not differentiated).
    ``watched`` pairs a tensor or ``tf.Variable`` that ``fn`` closes over with its tangent.
    Those and ``closed`` (what else ``fn`` closes over: tensors, variables, resources) are
    captured into this graph first, unseen by the live tapes, so that ``fn``'s own use of
    them is that capture, and only this function's accumulator differentiates ``fn``.
    Output tangents are ``None`` for non-float outputs, zeros for float outputs that do
    not depend on anything watched.

    ``plain``: ``fn`` traces pure real-valued ops only (:attr:`tfscan._scan.step.Traced.plain`,
    no variable watched). Its JVP is then built inline op by op by forward rules
    (:func:`_plain_jvp`) — what an accumulator does op by op, but without tracing (and, a JVP
    of a JVP, differentiating) a TensorFlow function per op. ``imported``
    (optional, with ``plain``): ``fn``'s traced ops emitted again, called instead of ``fn``
    there, so that the user's step is not traced again.
    """
    _tf.guard_empty_function_call_records()  # nested accumulators in one trace (a JVP of a JVP)
    graph = _tf.default_graph()
    for obj in list(closed) + [o for o, _ in watched]:
        _tf.record.silent_capture(graph, obj.handle if isinstance(obj, tf.Variable) else obj)
    if plain:
        found = _plain_jvp(imported or fn, args, tangents, [(_tf.in_graph(graph, o), t) for o, t in watched])
        if found is not None:
            return found
    primals, ts = [], []
    for a, t in zip(args, tangents):
        if t is not None:
            primals.append(a)
            ts.append(t)
    for obj, t in watched:
        primals.append(obj if isinstance(obj, tf.Variable) else _tf.in_graph(graph, obj))
        ts.append(t)
        if outside(obj, graph):
            # A nested loop takes the tensor itself as an input (an eager one, or one of an
            # outer graph: its compiled call captures it): watched too, with the same tangent.
            # (Inside a tf.function, an outer graph's tensor unwatched gave the nested loop no
            # tangent: a JVP silently missed that term.)
            primals.append(obj)
            ts.append(t)
    # An accumulator busy computing a tangent (the one whose forward function traces this)
    # silences the accumulators made after it: let this one record.
    with _tf.record.forwardprop_state(), tf.autodiff.ForwardAccumulator(primals, ts) as acc:
        outs = list(fn(*args))
    out_t = [_shaped_as(acc.jvp(o, unconnected_gradients=tf.UnconnectedGradients.ZERO), o) if is_float(o.dtype)
             else None for o in outs]
    return outs, out_t


def outside(obj: Any, graph: Any) -> bool:
    """Whether ``obj`` is a tensor that ``graph`` captures: an eager one, or one of an outer graph."""
    return is_eager(obj) or (isinstance(obj, tf.Tensor) and obj.graph is not graph)


def _plain_jvp(fn: Callable, args: Sequence[tf.Tensor], tangents: Sequence[Any],
               watched: Sequence[tuple[tf.Tensor, tf.Tensor]]):
    """``(fn(*args), output tangents)`` as :func:`jvp_call`, for a plain ``fn``: its ops
    differentiated one by one by their forward rules (:mod:`tfscan._scan.jvp_rules`), an op
    without one by its gradient transposed (``tf.gradients`` twice: the "double-back"
    TensorFlow's accumulator applies to each op). ``None`` when a gradient is missing or a
    value is not real (then the accumulator, which may know a forward rule, is used)."""
    outs = list(fn(*args))
    if any(o.dtype.is_complex for o in outs):
        return None
    found = _rules.forward_tangents(outs, list(zip(args, tangents)) + list(watched))
    if found is None:
        return None
    out_t = [None if not is_float(o.dtype) else tf.zeros_like(o) if t is None else _shaped_as(tf.convert_to_tensor(t), o)
             for o, t in zip(outs, found)]
    return outs, out_t


def filled_cotangents(d_outs: Sequence[Any], outs: Sequence[tf.Tensor], fo: Sequence[int]) -> list:
    """A tape's cotangents of the float outputs ``outs[i]``, ``i`` in ``fo`` (zeros where
    ``None``): the VJP of a construct recording derivatives of its own."""
    return [tf.zeros_like(outs[i]) if d_outs[i] is None else tf.convert_to_tensor(d_outs[i]) for i in fo]


def filled_tangents(tangents: Sequence[Any], leaves: Sequence[tf.Tensor], fl: Sequence[int],
                    closed: Sequence[tf.Tensor], variables: Sequence[tf.Variable]) -> tuple[list, list, list]:
    """An accumulator's tangents of ``(leaves, closed, variables' handles)`` split into the
    float leaves' (``leaves[i]``, ``i`` in ``fl``), the closed tensors' and the variables',
    zeros where ``None``: the JVP of a construct recording derivatives of its own."""
    t_in, t_cl, t_vs = split_list(tangents, [len(leaves), len(closed)])
    return ([tf.zeros_like(leaves[i]) if t_in[i] is None else t_in[i] for i in fl],
            [tf.zeros_like(c) if t is None else t for c, t in zip(closed, t_cl)],
            [tf.zeros(v.shape, v.dtype) if t is None else t for v, t in zip(variables, t_vs)])


def is_eager(obj: Any) -> bool:
    """Whether ``obj`` is an eager tensor (a closed-over value a trace captures)."""
    return isinstance(obj, tf.Tensor) and not tf.is_symbolic_tensor(obj)


def zeros_like(t: tf.Tensor) -> tf.Tensor:
    """Zeros of ``t``'s shape and dtype. An eager tensor of static shape gets them from NumPy:
    no kernel runs (a process's first eager ``ZerosLike`` or ``Fill`` costs milliseconds, tens
    of them on a loaded machine: a first JVP's whole trace costs about that)."""
    if is_eager(t) and t.shape.is_fully_defined():
        return tf.constant(np.zeros(t.shape, t.dtype.as_numpy_dtype))
    return tf.zeros_like(t)


def _shaped_as(t: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """A tangent with its primal's static shape: an accumulator's tangent of a function call's
    output may have lost it (a JVP of a JVP), and a loop buffer needs the rank."""
    if t.shape.is_fully_defined() or not like.shape.is_compatible_with(t.shape):
        return t
    t = tf.identity(t)
    t.set_shape(t.shape.merge_with(like.shape))
    return t


def watch_list(sources: Sequence[Any], values: Sequence[tf.Tensor], indices: Sequence[int],
               tangents: Sequence[tf.Tensor]) -> list[tuple[Any, tf.Tensor]]:
    """``(object to watch, tangent)`` for the float constants ``indices`` of a trace.

    ``sources[i]`` is what fed constant ``i`` when the step was traced (a tensor or a
    ``tf.Variable``); ``values[i]`` its value for this call (the tensor the step closes
    over now). A variable read several times is watched once (each read has its tangent).
    """
    out, seen = [], set()
    for i, t in zip(indices, tangents):
        obj = sources[i] if isinstance(sources[i], tf.Variable) else values[i]
        if id(obj) not in seen:
            seen.add(id(obj))
            out.append((obj, t))
    return out


class _ScanJVP:
    """The JVP scan of one scan's :class:`Programs`, for the constants' types of a call and
    which xs and constants have tangents (``given``: as JAX's symbolic zeros, an x or a
    constant without one is not differentiated: no zeros ride in the loop)."""

    def __init__(self, programs: Programs, consts: Sequence[tf.Tensor], given: tuple | None = None):
        plan = programs.plan
        n_c, n_x = len(plan.carry_specs), len(plan.x_specs)
        fc, fx, fy, fk = float_indices(plan, consts)
        if given is not None:
            fx, fk = [i for i in fx if given[0][i]], [i for i in fk if given[1][i]]
        self.fc, self.fx, self.fy, self.fk = fc, fx, fy, fk
        # The step's Python function reads the tensors of the call that traced the plan (a
        # later call reusing the programs feeds its own, as ``StepVJP`` does): the JVP step
        # is traced on those and fed with a call's constants (:meth:`consts`). A variable is
        # read in the trace (its read is fed).
        sources = plan.step.const_sources
        values = [v if isinstance(s, tf.Variable) else s for s, v in zip(sources, consts)]
        k_specs = [tf.TensorSpec(consts[i].shape, consts[i].dtype) for i in fk]
        carry_specs = list(plan.carry_specs) + [plan.carry_specs[i] for i in fc] + k_specs
        x_specs = list(plan.x_specs) + [plan.x_specs[i] for i in fx]
        n_tc = len(fc)
        closed = [s if isinstance(s, tf.Variable) else v for s, v in zip(sources, values)]
        closed += [h for _, h in plan.step.handles]
        plain = plan.step.plain

        def imported(*args):  # the step's trace emitted again, fed with this call's constants
            graph = _tf.default_graph()
            return plan.step.apply(list(args), [_tf.in_graph(graph, v) for v in values])

        def step(carry, x):
            c, tc, tk = split_list(carry, [n_c, n_tc])
            xv, tx = split_list(x, [n_x])
            outs, t_outs = jvp_call(plan.flat_step, list(c) + list(xv),
                                    scatter(n_c, fc, tc) + scatter(n_x, fx, tx),
                                    watch_list(sources, values, fk, tk), closed, plain, imported)
            c_out, y_out = split_list(outs, [n_c])
            new_carry = c_out + [t_outs[i] for i in fc] + list(tk)
            ys = y_out + [t_outs[n_c + i] for i in fy]
            return new_carry, ys

        carry_tree = _tree.flatten([0] * len(carry_specs))[1]
        x_tree = _tree.flatten([0] * len(x_specs))[1]
        jvp_plan = Plan(step, carry_tree, carry_specs, x_tree, x_specs, name=f"{plan.name}_jvp", slots=values)
        self.programs = Programs(jvp_plan, programs.static, programs.remat)
        self.n_y = len(plan.y_specs)

    def consts(self, consts: Sequence[tf.Tensor]) -> list[tf.Tensor] | None:
        """The JVP step's constants for a call's ``consts``, or ``None`` if they cannot be fed."""
        step = self.programs.plan.step
        return step.const_values(list(consts)) if step.feed.complete else None


_lock = threading.Lock()
_cache: "weakref.WeakKeyDictionary[Programs, dict]" = weakref.WeakKeyDictionary()


def given_tangents(n_i: int, n_x: int, tangents: Sequence[Any]) -> tuple:
    """Which xs and which constants have a tangent (``scan_jvp``'s ``given``), from the
    tangents of ``init + xs + consts`` (``None``: none)."""
    return (tuple(t is not None for t in tangents[n_i:n_i + n_x]),
            tuple(t is not None for t in tangents[n_i + n_x:]))


def scan_jvp(programs: Programs, consts: Sequence[tf.Tensor], given: tuple | None = None) -> tuple[_ScanJVP, list]:
    """The JVP scan of ``programs`` for ``consts`` and ``given`` (:func:`given_tangents`),
    made once, and the constants it is fed with."""
    key = (tuple((tuple(c.shape.as_list()) if c.shape.rank is not None else None, c.dtype) for c in consts), given)
    with _lock:
        found = _cache.setdefault(programs, {}).get(key)
    if found is not None:
        k = found.consts(consts)
        if k is not None:
            return found, k
    made = _ScanJVP(programs, consts, given)  # outside the lock: tracing may meet a nested scan
    with _lock:
        _cache[programs][key] = made
    k = made.consts(consts)
    return made, made.programs.plan.step.const_values() if k is None else k


def scan_tangents(programs: Programs, init: Sequence[tf.Tensor], xs: Sequence[tf.Tensor],
                  consts: Sequence[tf.Tensor], dynamic_length: Any, tangents: Sequence[Any],
                  run: Callable) -> list:
    """The tangents of a scan's ``carry + ys`` (flat) given those of ``init + xs + consts``.

    ``run(programs, init, xs, consts, dynamic_length)`` runs a scan's programs (recorded
    on the live tapes and accumulators when they may ask for a derivative).
    """
    with computing():
        return run_jvp(programs, init, xs, consts, dynamic_length, tangents, run)[1]


_state = threading.local()


class computing:
    """While a forward function computes tangents (:func:`is_computing`)."""

    def __enter__(self):
        _state.computing = getattr(_state, "computing", 0) + 1

    def __exit__(self, *exc):
        _state.computing -= 1


def is_computing() -> bool:
    """Whether a forward function is computing tangents on this thread (then the oldest
    accumulator may be the busy one: :mod:`tfscan._scan.forward_eager` stands aside)."""
    return bool(getattr(_state, "computing", 0))


def run_jvp(programs: Programs, init, xs, consts, dynamic_length, tangents, run) -> tuple[list, list]:
    """``(carry + ys, their tangents)`` (flat) by the JVP loop, run by ``run``."""
    n_i, n_x = len(init), len(xs)
    jvp, k = scan_jvp(programs, consts, given_tangents(n_i, n_x, tangents))

    def tangent(j, like):
        t = tangents[j]
        return zeros_like(like) if t is None else t

    t_init = [tangent(i, init[i]) for i in jvp.fc]
    t_xs = [tangent(n_i + i, xs[i]) for i in jvp.fx]
    t_k = [tangent(n_i + n_x + i, consts[i]) for i in jvp.fk]
    outs = run(jvp.programs, list(init) + t_init + t_k, list(xs) + t_xs, k, dynamic_length)
    carry, t_carry, _, ys, t_ys = split_list(outs, [n_i, len(t_init), len(t_k), jvp.n_y])
    return carry + ys, scatter(n_i, jvp.fc, t_carry) + scatter(jvp.n_y, jvp.fy, t_ys)
