"""Checkpointed scans: keep a few carries, recompute the rest for the gradient.

Two policies live here.

**Every ``k`` steps** (``remat=k`` / ``"sqrt"``): a scan of ``T`` steps becomes an outer
scan over ``T // k`` segments whose step is an inner scan of ``k`` steps, plus a tail
scan of the remaining ``T % k``. The outer scan saves only its input carries (the
checkpoints) and recomputes a segment when the backward pass reaches it, so residual
memory is ``O(T/k + k)`` carries — ``O(sqrt(T))`` with ``k = sqrt(T)``.

**Binomial** (``remat="binomial"`` / ``("binomial", k)``): Griewank's optimal offline
checkpointing (revolve). With ``k`` snapshot slots (the first holds the initial carry)
the backward pass keeps ``k + 1`` carries and runs ``r*T - C(k+r, r-1)`` forward steps,
``r`` the least integer with ``C(k+r, k) >= T`` — ``O(T log T / log k)`` — where the
``sqrt`` policy keeps ``O(sqrt T)``. ``"binomial"`` alone takes ``k = ceil(log2 T)``.

Design — schedule as data. The recursion "advance ``m`` steps from the snapshot in
slot ``s``, snapshot into ``s + 1``, reverse the right part with one slot fewer, then
the left part" (``m`` from the binomial bounds below, which give the minimal total
number of forward steps — checked against an exhaustive search in the tests) is
unrolled in Python, when the scan is traced, into an int32 table with one row per
action group: ``(restore slot, position, advance n, store slot, backward?)``. One
compiled ``While`` walks the table: it restores the slot's carry, advances ``n`` steps
(an inner ``While`` with a run-time trip count), writes the carry into the ``[k + 1,
...]`` snapshot buffer (slot ``k`` is scratch) and, if asked, applies the step's VJP at
that position (an inner ``While`` of 0 or 1 trips, so the loop body has no
conditional). The table has ``O(T)`` rows; the program is the same size for every
``T``, unlike a recursion of nested scans (whose HLO grows with the depth ``log T``
and which cannot place segments of unequal, binomial lengths). The forward pass saves
only the snapshots of the schedule's first rows (its "spine", which only advances): the
backward pass starts after them. Values are those of the plain loop: the same step runs
on the same carries, so gradients equal ``remat=False``'s to float rounding.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from tfscan._core import tree as _tree
from tfscan._core.flat import scatter, split_list
from tfscan._scan.buffered_loop import _write, keep_shape
from tfscan._scan.plan import Plan, float_indices

__all__ = []  # private module


def checkpointed_scan(scan: Callable, f: Callable, init: Any, xs: Any, length: int, reverse: bool,
                      unroll: int | bool, every: int | str) -> tuple[Any, Any]:
    """``scan(f, init, xs, length, reverse, unroll)`` with checkpoints every ``every`` steps."""
    k = segment_length(length, every)
    segments, tail = divmod(length, k)
    if segments <= 1:
        return scan(f, init, xs, length=length, reverse=reverse, unroll=unroll, remat=True)
    if reverse:  # walk the reversed sequence forwards, then put the ys back in order
        xs = _tree.map_leaves(lambda x: tf.reverse(x, [0]), xs)
    main = _tree.map_leaves(lambda x: tf.reshape(x[: segments * k], _with_lead([segments, k], x, 1)), xs)

    def segment(carry, x_segment):
        return scan(f, carry, x_segment, length=k, unroll=unroll)

    carry, ys = scan(segment, init, main, length=segments, remat=True)
    if tail:
        rest = _tree.map_leaves(lambda x: x[segments * k:], xs)
        carry, ys_tail = scan(f, carry, rest, length=tail, unroll=unroll)
        ys = _tree.map_leaves(_join, ys, ys_tail)
    else:
        ys = _tree.map_leaves(lambda y: tf.reshape(y, _with_lead([segments * k], y, 2)), ys)
    if reverse:
        ys = _tree.map_leaves(lambda y: tf.reverse(y, [0]), ys)
    return carry, ys


def _join(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The segments' ys ``a`` (``[segments, k, ...]``) with the tail's ``b`` after them, along
    axis 0. Eagerly, with a gradient that keeps only ``a``'s shape: the tape would otherwise
    keep ``a`` alive (for the gradients of the reshape and the concat) next to the result."""
    def fwd(a, b):
        return tf.concat([tf.reshape(a, _with_lead([-1], a, 2)), b], 0)
    if not tf.executing_eagerly():
        return fwd(a, b)
    shape = a.shape
    n = shape[0] * shape[1]

    @tf.custom_gradient
    def join(a, b):  # stop_gradient: the tape records (and keeps the inputs of) only ``join``
        return fwd(tf.stop_gradient(a), tf.stop_gradient(b)), lambda d: (tf.reshape(d[:n], shape), d[n:])
    return join(a, b)


def segment_length(length: int, every: int | str) -> int:
    """Steps per segment: ``every``, or for ``"sqrt"`` the divisor of ``length`` nearest
    ``sqrt(length)`` within a factor 2 of it (no tail segment, whose ys would be joined to
    the others' by a copy), else ``isqrt(length)``."""
    if every != "sqrt":
        return every
    root = max(1, math.isqrt(length))
    near = [d for d in range(max(2, (root + 1) // 2), 2 * root + 1) if length % d == 0]
    return min(near, key=lambda d: (abs(d * d - length), d)) if near else root


def _with_lead(lead: list, t: tf.Tensor, drop: int):
    """``lead + t.shape[drop:]``, from the run-time shape where it is not static."""
    rest = t.shape[drop:]
    if rest.is_fully_defined():
        return lead + rest.as_list()
    return tf.concat([tf.constant(lead, tf.int32), tf.shape(t, out_type=tf.int32)[drop:]], 0)


# ------------------------------------------------------------------ binomial checkpointing

def is_binomial(remat: Any) -> bool:
    return isinstance(remat, tuple) and remat[:1] == ("binomial",)


def binomial_slots(remat: tuple, length: int) -> tuple:
    """``("binomial", k)`` with ``k`` resolved for ``length`` (``ceil(log2 T)``, at least 1)."""
    k = remat[1] if remat[1] is not None else max(1, math.ceil(math.log2(max(length, 2))))
    return ("binomial", int(k))


def _eta(c: int, r: int) -> int:
    """Steps reversible with ``c`` snapshots and at most ``r`` advances of each step."""
    return math.comb(c + r, c) if r >= 0 else 0


def _split(length: int, c: int) -> int:
    """Steps to advance before the next snapshot (minimal total forward steps)."""
    r = 0
    while _eta(c, r) < length:
        r += 1
    return max(1, _eta(c, r - 2), length - _eta(c - 1, r))


# Columns of a schedule row.
RESTORE, POS, ADVANCE, STORE, BACKWARD = range(5)


@functools.lru_cache(maxsize=64)
def schedule(length: int, slots: int) -> np.ndarray:
    """The reversal of ``length`` steps with ``slots`` snapshots: an int32 ``[rows, 5]`` table.

    Row ``(s, p, n, w, b)``: load the carry of position ``p`` from slot ``s``, run ``n``
    steps, store the carry into slot ``w`` (``slots`` is scratch), then, if ``b``, apply
    the VJP of step ``p + n``. Backward steps come in the order ``length - 1, ..., 0``.
    """
    rows: list[tuple[int, int, int, int, int]] = []
    scratch = slots
    stack = [(0, length, 0)]  # (start, end, slot holding the carry at start)
    while stack:
        start, end, s = stack.pop()
        size, c = end - start, slots - s
        if size <= 0:
            continue
        if size == 1 or c == 1:  # recompute from the snapshot for every step, last first
            rows.extend((s, start, t - start, scratch, 1) for t in reversed(range(start, end)))
            continue
        m = _split(size, c)
        rows.append((s, start, m, s + 1, 0))
        stack.append((start, start + m, s))  # the left part, after the right one
        stack.append((start + m, end, s + 1))
    return np.asarray(rows, np.int32).reshape([-1, 5])


@functools.lru_cache(maxsize=64)
def spine(length: int, slots: int) -> tuple[int, np.ndarray]:
    """``(rows, slot_at)``: the schedule's first ``rows`` rows only advance along the forward
    sweep and take snapshots; the forward pass takes them instead (step ``t`` writes its
    input carry into slot ``slot_at[t]``, ``slots`` being the scratch slot)."""
    table = schedule(length, slots)
    slot_at = np.full([length], slots, np.int32)
    if length:
        slot_at[0] = 0
    r = s = 0
    while r < len(table) and table[r, BACKWARD] == 0 and table[r, RESTORE] == s:
        s = int(table[r, STORE])
        slot_at[table[r, POS] + table[r, ADVANCE]] = s
        r += 1
    return r, slot_at


def forward_steps(length: int, slots: int) -> int:
    """How many steps the binomial backward pass recomputes (``ADVANCE`` summed after the spine)."""
    return int(schedule(length, slots)[spine(length, slots)[0]:, ADVANCE].sum())


def binomial_forward(plan: Plan, length: int, reverse: bool, unroll, init, xs, consts, slots: int,
                     captured: Callable):
    """``(carry, ys, snapshots)``: the scan, writing the spine's snapshots into ``[slots + 1, ...]``."""
    from tfscan._scan import buffered_loop as _buffered_loop

    n = len(init)
    slot_at = spine(length, slots)[1]
    order = tf.constant(slot_at[::-1].copy() if reverse else slot_at)  # read at the step's index
    snaps0 = [tf.repeat(tf.convert_to_tensor(c)[None], slots + 1, axis=0) for c in init]

    def body(carry, slices):
        c, snaps = split_list(carry, [n])
        snaps = [_write(b, v, slices[-1]) for b, v in zip(snaps, c)]
        new_c, ys = plan.apply(c, slices[:-1], captured(consts))
        return list(new_c) + snaps, ys

    carry, ys = _buffered_loop.run(body, list(init) + snaps0, list(xs) + [order], length, reverse, unroll,
                                   plan.y_specs)
    carry, snaps = split_list(carry, [n])
    return carry, ys, snaps


def binomial_backward(plan: Plan, length: int, reverse: bool, xs, consts, snaps, d_carry, d_ys,
                      slots: int, step_vjp: Callable, captured: Callable, wanted=None, dy_rows=None):
    """``(d_init, d_xs, d_consts)`` of a scan whose forward pass kept the ``snaps`` of
    :func:`binomial_forward`.

    ``step_vjp(plan, c_t, x_t, k, d_c, dy_t, wanted)`` recomputes one step and pulls the
    cotangents back (``tfscan._scan.program.step_vjp`` bound to the step's traced VJP).
    """
    fc, fx, fy, fk = float_indices(plan, consts, wanted)
    nc, nx = len(plan.carry_specs), len(xs)
    d_c0 = [d_carry[i] for i in fc]
    d_k0 = [tf.zeros_like(consts[i]) for i in fk]
    d_x0 = [tf.zeros_like(xs[i]) for i in fx]
    table = schedule(length, slots)
    if length == 0:
        return scatter(nc, fc, d_c0), scatter(nx, fx, d_x0), scatter(len(consts), fk, d_k0)
    shapes = [c.shape[1:] for c in snaps]
    dy_rows = dy_rows or {}
    dys = [d_ys[i] for i in fy if i not in dy_rows]  # per step; the others: one row for all steps

    def index(p):  # execution position -> index along the time axis
        return length - 1 - p if reverse else p

    def advance(pos, n, carry):
        def body(j, carry):
            x = [tf.gather(t, index(pos + j)) for t in xs]
            new, _ = plan.apply(carry, x, captured(consts))
            return j + 1, [keep_shape(c, s) for c, s in zip(new, shapes)]
        return tf.while_loop(lambda j, c: j < n, body, (tf.constant(0), list(carry)))[1]

    def row_body(r, snaps, d_c, d_k, d_x):
        row = tf.gather(tbl, r)
        slot, pos, n, store, back = (row[i] for i in range(5))
        carry = advance(pos, n, [tf.gather(b, slot) for b in snaps])
        snaps = [_write(b, c, store) for b, c in zip(snaps, carry)]

        def vjp_body(j, d_c, d_k, d_x):
            t = index(pos + n)
            x = [tf.gather(v, t) for v in xs]
            seq = iter([tf.gather(v, t) for v in dys])
            dy = [captured([dy_rows[i]])[0] if i in dy_rows else next(seq) for i in fy]
            g_c, g_x, g_k = step_vjp(plan, carry, x, captured(consts), d_c, dy, wanted)
            d_x = [_write(b, g, t) for b, g in zip(d_x, g_x)]
            return j + 1, list(g_c), [a + g for a, g in zip(d_k, g_k)], d_x

        _, d_c, d_k, d_x = tf.while_loop(lambda j, *_: j < back, vjp_body, (tf.constant(0), d_c, d_k, d_x))
        return r + 1, snaps, d_c, d_k, d_x

    tbl = tf.constant(table)
    first = spine(length, slots)[0]
    _, _, d_c, d_k, d_x = tf.while_loop(lambda r, *_: r < table.shape[0], row_body,
                                        (tf.constant(first), list(snaps), d_c0, d_k0, d_x0))
    return scatter(nc, fc, d_c), scatter(nx, fx, d_x), scatter(len(consts), fk, d_k)
