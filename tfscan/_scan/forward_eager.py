"""Forward mode alone, eagerly (accumulators, no tape): values and tangents from the JVP loops.

Accumulators take a recorded operation's tangents one after the other. When no tape
watches a scan's inputs, its values need not come from the primal loop: the JVP loop gives
them along with the oldest accumulator's tangents (:func:`first_tangents`), so the primal
loop is neither compiled nor run. With two accumulators (a JVP of a JVP), the JVP loop of
the JVP loop gives, in one run, the values, both accumulators' tangents and the older one's
tangents of the newer one's (:func:`_second_order`): the first-order loops are neither
compiled nor run. The scan's forward function then serves each accumulator the tangents
computed for the very tangents it passes; any other request runs the JVP loop as usual
(:func:`tfscan._scan.forward.scan_tangents`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf

from tfscan import _tf
from tfscan._core.flat import scatter, split_list
from tfscan._scan import forward as _forward
from tfscan._scan.program import Programs

__all__ = []  # private module


def first_tangents(programs: Programs, init: Sequence[tf.Tensor], xs: Sequence[tf.Tensor],
                   consts: Sequence[tf.Tensor], dynamic_length: Any):
    """Forward mode alone (no tape): ``(carry + ys, forward_function maker, recorded)`` from
    one run of a JVP loop, or ``None`` (then the recorded path runs). ``recorded``: the indices
    of ``init + xs + consts`` to record the scan's operation on, those some accumulator has a
    tangent of; the forward function takes their tangents alone (:func:`_served`).

    Accumulators take an operation's tangents one after the other; the oldest one's could be
    computed here with the primal values, unrecorded (no older accumulator could
    differentiate them), so the primal loop is neither compiled nor run. With one live
    accumulator, that is the JVP loop's run. With two (a JVP of a JVP, :func:`_second_order`),
    the JVP loop of the JVP loop gives, in one run, the values, both accumulators' tangents
    and the older one's tangents of the newer one's: the first-order loops are neither
    compiled nor run. Otherwise newer accumulators get theirs from ``scan_tangents``,
    recorded, as usual.
    """
    if _forward.is_computing():
        return None  # inside a forward function: the oldest accumulator may be the busy one
    inputs = list(init) + list(xs) + list(consts)
    accumulators = _given_tangents(inputs)
    if not accumulators:
        return None
    recorded = sorted({i for given, _ in accumulators for i, t in enumerate(given) if t is not None})
    if len(accumulators) == 2:
        found = _second_order(programs, init, xs, consts, dynamic_length, accumulators)
        if found is not None:
            return found[0], _served(programs, init, xs, consts, dynamic_length, found[1], recorded), recorded
    given, others = accumulators[0]
    if others or _tf.record.tangent_indices([t for t in given if t is not None]):
        return None  # a tangent with a tangent of its own: the recorded path differentiates it
    outs, t_outs = _forward.run_jvp(programs, init, xs, consts, dynamic_length, given, _unrecorded)
    return outs, _served(programs, init, xs, consts, dynamic_length, [(given, lambda: t_outs)], recorded), recorded


def _given_tangents(inputs: Sequence[tf.Tensor]) -> list[tuple[list, list]]:
    """``(tangents of inputs, other tensors it has tangents of)`` per live accumulator with
    a tangent, oldest first (``None`` where it has no tangent): the others are newer
    accumulators' tangents of ``inputs`` (TensorFlow packs them as primals too)."""
    packed = _tf.record.pack_tangents(inputs)
    if not any(packed.indices):
        return []
    pool, n = list(inputs) + list(packed.tangents), len(inputs)
    out = []
    for entry in reversed([e for e in packed.indices if e]):  # newest first in TensorFlow's packing
        given, others = [None] * n, []
        for i, j in entry:
            if i < n:
                given[i] = pool[j]
            else:
                others.append(pool[i])
        out.append((given, others))
    return out


def _unrecorded(progs: Programs, i, x, k, dl) -> list:
    """``carry + ys`` of ``progs``' forward loop, unseen by tapes and accumulators."""
    with _tf.record.stop_recording():
        carry, ys, _ = progs.forward(i, x, k, dl)
    return list(carry) + list(ys)


def _same(tangents: Sequence[Any], given: Sequence[Any]) -> bool:
    """Whether an accumulator passes the very tangents ``given`` were read from it."""
    return len(tangents) == len(given) and all(t is None or tangents[i] is t for i, t in enumerate(given))


def _among(tensors: Sequence[Any], pool: Sequence[Any]) -> bool:
    ids = {id(t) for t in pool}
    return all(id(t) in ids for t in tensors)


def _served(programs: Programs, init, xs, consts, dynamic_length, ready: list, recorded: list) -> Callable:
    """A scan's ``forward_function`` maker serving each ``(given tangents, result maker)`` of
    ``ready`` once, to the accumulator that passes those very tangents; any other call
    (other tangents, a second call) runs the JVP loop as usual (``scan_tangents``).

    The operation is recorded on the inputs ``recorded`` alone (those with a tangent): an
    accumulator makes zeros, eagerly, for each recorded input it has no tangent of (a
    process's first ``Fill`` and ``Cast`` kernels: tens of milliseconds), and none of them
    is needed. Accumulators take an operation in the order they were made, oldest first
    (TensorFlow's accumulator set is ordered so that an outer one sees an inner one's JVP
    computation): with one tensor seeding both (``ready`` holds equal tangents), the older
    accumulator, served first, gets the first entry, which is its own."""
    pending, n_in = list(ready), len(init) + len(xs) + len(consts)

    def forward_function(run: Callable) -> Callable:
        def fn(*compact):
            tangents = scatter(n_in, recorded, compact)
            for n, (given, result) in enumerate(pending):
                if _same(tangents, given):
                    del pending[n]
                    return result()
            return _forward.scan_tangents(programs, init, xs, consts, dynamic_length, tangents, run)
        return fn

    return forward_function


def _second_order(programs: Programs, init, xs, consts, dynamic_length, accumulators: list):
    """``(carry + ys, [(given tangents, result maker)] for _served)`` for two live accumulators
    (a JVP of a JVP, no tape) from one run of the second-order JVP loop, or ``None``.

    The newer accumulator's tangents ``t_in`` make the first-order loop's inputs ``p``; the
    older one's tangents of ``p`` (its tangents of the scan's inputs and of ``t_in``) make
    the second-order loop's. Its run gives the values, ``t_in``'s outputs, and the older
    tangents of both. The newer accumulator's outputs are recorded for the older one as an
    operation on ``p`` (as the first-order loop's call would be) whose forward function
    serves the precomputed second-order tangents.
    """
    (t_out, out_others), (t_in, in_others) = accumulators
    live_in = [t for t in t_in if t is not None]
    if in_others or not _among(out_others, live_in) or _tf.record.should_record_backprop(live_in):
        return None  # tangents of tangents elsewhere, or a tape
    first_order: list = []

    def second(progs: Programs, i, x, k, dl):  # the first-order loop's programs and inputs
        p = list(i) + list(x) + list(k)
        on_p = _given_tangents(p)
        if len(on_p) != 2 or on_p[1][1] or not _among(on_p[0][1], p):
            raise _NotServed()
        outs, t_outs = _forward.run_jvp(progs, i, x, k, dl, on_p[0][0], _unrecorded)
        first_order.extend([progs, (i, x, k, dl), p, on_p[0][0], t_outs])
        return outs

    try:
        outs, t_in_outs = _forward.run_jvp(programs, init, xs, consts, dynamic_length, t_in, second)
    except _NotServed:
        return None
    progs, p_args, p, t_p, t_p_outs = first_order
    on_outer = [i for i, t in enumerate(t_p) if t is not None]
    jvp, _ = _forward.scan_jvp(programs, consts, _forward.given_tangents(len(init), len(xs), t_in))
    counts = [len(init), len(jvp.fc), len(jvp.fk), jvp.n_y]

    def values_and_tangents(flat: list) -> tuple[list, list]:
        """A first-order loop's ``carry + ys`` as (values', t_in's outputs') parts."""
        carry, t_carry, _, ys, t_ys = split_list(flat, counts)
        return carry + ys, scatter(counts[0], jvp.fc, t_carry) + scatter(counts[3], jvp.fy, t_ys)

    outer_of_outs, outer_of_t_in = values_and_tangents(t_p_outs)
    floats = [j for j, t in enumerate(t_in_outs) if t is not None]

    def inner_result() -> list:
        served = [True]

        def forward(*compact):  # the older accumulator's tangents of p (those it has)
            tangents = scatter(len(p), on_outer, compact)
            if served and _same(tangents, t_p):
                served.clear()
                return [outer_of_t_in[j] for j in floats]
            full = _forward.scan_tangents(progs, *p_args, tangents, _run())
            return [values_and_tangents(full)[1][j] for j in floats]

        # recorded on the inputs the older accumulator has tangents of: no zeros made for others
        _tf.record.record_operation("TfscanScanJVP", [t_in_outs[j] for j in floats], [p[i] for i in on_outer],
                                    _no_backward, forward)
        return t_in_outs

    return outs, [(t_out, lambda: outer_of_outs), (t_in, inner_result)]


class _NotServed(Exception):
    """The second-order path does not apply (:func:`_second_order`): take the usual one."""


def _run() -> Callable:
    from tfscan._scan.autodiff import run  # noqa: PLC0415 - autodiff imports this module
    return run


def _no_backward(*_):
    raise RuntimeError("tfscan internal: a second-order JVP computed for accumulators alone was "
                       "asked for a gradient; differentiate with a tape live when the scan runs.")
