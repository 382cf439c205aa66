"""Where a scan is being built (eager, graph, XLA) and ``disable_jit``."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

import tensorflow as tf

from tfscan import _tf

__all__ = []  # private module

_state = threading.local()


def jit_disabled() -> bool:
    return getattr(_state, "disabled", 0) > 0


@contextlib.contextmanager
def disable_jit() -> Iterator[None]:
    """Run scans as plain eager Python loops inside this block (like ``jax.disable_jit``).

    The step then runs as ordinary Python, one call per step: ``print`` and ``pdb`` work.

    >>> import tensorflow as tf, tfscan
    >>> with tfscan.disable_jit():
    ...     carry, ys = tfscan.scan(lambda c, x: (c + x, float(c)), 0.0, tf.constant([1.0, 2.0]))
    >>> float(carry), ys.numpy().tolist()
    (3.0, [0.0, 1.0])
    """
    with _depth("disabled"):
        yield


@contextlib.contextmanager
def _depth(name: str) -> Iterator[None]:
    """Count one more level of ``name`` on this thread while the block runs."""
    setattr(_state, name, getattr(_state, name, 0) + 1)
    try:
        yield
    finally:
        setattr(_state, name, getattr(_state, name) - 1)


def internal_trace() -> contextlib.AbstractContextManager:
    """While tfscan traces user code into a graph it only copies (a step, its VJP, a vmapped
    function): what is built there is never itself saved in a SavedModel."""
    return _depth("internal")


def in_internal_trace() -> bool:
    return getattr(_state, "internal", 0) > 0


@contextlib.contextmanager
def fed_in_place(pairs: Sequence[tuple[Any, Any]]) -> Iterator[None]:
    """While the block runs, a program that a function closing over tensor ``a`` is compiled
    into is fed ``b`` in its place, for each ``(a, b)`` of ``pairs``.

    For the gradient function of an op that ``tf.gradients`` meets as a copy (a step's ops
    imported into a loop body or a VJP graph): the Python functions it differentiates close
    over the original op's tensors, of a graph the copy's cannot read; the copy's own inputs
    are what they stand for."""
    saved = getattr(_state, "in_place", {})
    _state.in_place = {**saved, **{id(a): b for a, b in pairs if a is not b}}
    try:
        yield
    finally:
        _state.in_place = saved


def in_place_of(tensors: Sequence[Any]) -> list:
    """``tensors``, each replaced by what :func:`fed_in_place` feeds in its place."""
    in_place = getattr(_state, "in_place", None)
    return [in_place.get(id(t), t) for t in tensors] if in_place else list(tensors)


def vmap_trace() -> contextlib.AbstractContextManager:
    """While ``vmap`` traces the per-example function it then batches with ``pfor``: a scan
    built there marks its forward loop for the scan's batching rule (``_transforms.scan_batching``)."""
    return _depth("vmap")


def in_vmap_trace() -> bool:
    return getattr(_state, "vmap", 0) > 0


@contextlib.contextmanager
def vmap_example(graph: Any) -> Iterator[None]:
    """While ``vmap`` traces the per-example function into ``graph``: a scan built directly
    there, whose inputs no tape watches, is replaced whole by its batching rule, so it saves
    no residuals (:func:`is_vmap_example`); the gradient that would read them traces the
    function again (``Batched.vjp_pe``)."""
    graphs = getattr(_state, "vmap_examples", None)
    if graphs is None:
        graphs = _state.vmap_examples = []
    graphs.append(graph)
    try:
        yield
    finally:
        graphs.pop()


def is_vmap_example(graph: Any) -> bool:
    """Whether ``graph`` is the one ``vmap`` is tracing its per-example function into."""
    graphs = getattr(_state, "vmap_examples", None)
    return bool(graphs) and graphs[-1] is graph


def inline_batching() -> contextlib.AbstractContextManager:
    """While ``vmap`` emits its batched computation into a graph XLA compiles whole
    (``Batched.inline``): the tapes record it, so a scan batched there records its own VJP."""
    return _depth("inline_batching")


def in_inline_batching() -> bool:
    return getattr(_state, "inline_batching", 0) > 0


def per_example_vjp() -> contextlib.AbstractContextManager:
    """While ``vmap``'s gradient traces the vmapped per-example VJP: the scans it batches
    there are batched op by op, since that VJP reads their forward loops' residuals."""
    return _depth("per_example_vjp")


def in_per_example_vjp() -> bool:
    return getattr(_state, "per_example_vjp", 0) > 0


def in_xla_context() -> bool:
    """True while tracing a function that XLA compiles as a whole (``jit_compile=True``)."""
    if tf.executing_eagerly():
        return False
    return _tf.in_xla_context()


def traced_alone(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on a fresh thread and its result (its exception re-raised here).

    GradientTapes and ForwardAccumulators are per thread, so none live on the caller's
    thread sees what ``fn`` traces, while tapes and accumulators made inside the trace
    record as usual (``record.stop_recording`` would silence those too). For the trace of a
    program whose functions close over a tensor an accumulator watches: each capture of
    that tensor gives the traced placeholder the tensor's tangent, and TensorFlow's forward
    rule of a conditional in the trace then fails (TensorFlow 2.21,
    ``cond_v2._resolve_grad_inputs``). The fresh thread starts with this thread's tfscan
    state (``vmap`` and internal traces) but no default graph: ``fn`` may capture tensors of
    a graph being built here (a ``tf.function`` it traces takes them as inputs), never add
    ops to that graph.
    """
    box: dict = {}
    state = dict(vars(_state))

    def target():
        vars(_state).update(state)
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="tfscan-trace")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def traced_unwatched(fn: Callable[[], Any], closed: Sequence[Any]) -> Any:
    """``fn()`` (a trace of user code that closes over the tensors ``closed``), on a thread of
    its own (:func:`traced_alone`) when a ``ForwardAccumulator`` watches one of them, eagerly
    or in a graph.

    Every use of a captured tensor in a trace records an identity on the live accumulators
    (TensorFlow's capture does, each time): the trace would capture the accumulator's eager
    tangent as well, a constant of this call that no slot of the closure feeds, so each
    later call would trace again, and the trace would hold the accumulator's JVP ops.
    In a graph, TensorFlow's forward rule of a conditional in the trace fails besides
    (TensorFlow 2.21, ``cond_v2._resolve_grad_inputs`` asserts). tfscan's forward rules
    trace the function again with the tangents as inputs.

    Also alone when two tapes watch one of them (nested ``GradientTape``s): TensorFlow
    would wrap each conditional of the trace in a function of its own
    (:meth:`~tfscan._tf.record.higher_order`), and that cached trace's later second
    derivative under an accumulator then built the conditional's gradient outside XLA's
    context, with ``Optional``s XLA cannot compile."""
    return traced_alone(fn) if closed and (watched(closed) or _tf.record.higher_order(closed)) else fn()


def accumulating() -> bool:
    """Whether a ``ForwardAccumulator`` is live (one busy computing a tangent counts)."""
    with _tf.record.forwardprop_state():
        return _tf.record.accumulators() > 0


def watched(tensors: Sequence[Any]) -> bool:
    """Whether a live ``ForwardAccumulator`` has a tangent of one of ``tensors`` (one busy
    computing a tangent counts)."""
    return bool(watched_indices(tensors))


def watched_indices(tensors: Sequence[Any]) -> set:
    """Indices of ``tensors`` a live ``ForwardAccumulator`` has a tangent of (one busy
    computing a tangent counts); an index ``>= len(tensors)`` names a packed tangent
    (:meth:`tfscan._tf.record.tangent_indices`)."""
    with _tf.record.forwardprop_state():
        return _tf.record.tangent_indices(list(tensors))

