"""Where a scan is being built (eager, graph, XLA), ``disable_jit``, and the identity keys of the loops' caches."""

from __future__ import annotations

import contextlib
import threading
import types
from typing import Any, Hashable, Iterator

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

from tfscan._core.cache import _cell_full, _Identity  # identity keys: one class for both key kinds

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
    _state.disabled = getattr(_state, "disabled", 0) + 1
    try:
        yield
    finally:
        _state.disabled -= 1


@contextlib.contextmanager
def internal_trace() -> Iterator[None]:
    """While tfscan traces user code into a graph it only copies (a step, its VJP, a vmapped
    function): what is built there is never itself saved in a SavedModel."""
    _state.internal = getattr(_state, "internal", 0) + 1
    try:
        yield
    finally:
        _state.internal -= 1


def in_internal_trace() -> bool:
    return getattr(_state, "internal", 0) > 0


@contextlib.contextmanager
def vmap_trace() -> Iterator[None]:
    """While ``vmap`` traces the per-example function it then batches with ``pfor``: a scan
    built there marks its forward loop for the scan's batching rule (``_transforms.scan_batching``)."""
    _state.vmap = getattr(_state, "vmap", 0) + 1
    try:
        yield
    finally:
        _state.vmap -= 1


def in_vmap_trace() -> bool:
    return getattr(_state, "vmap", 0) > 0


def in_xla_context() -> bool:
    """True while tracing a function that XLA compiles as a whole (``jit_compile=True``)."""
    if tf.executing_eagerly():
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()))


def function_key(f: Any, depth: int = 0) -> Hashable:
    """Identify a step function by its code and what it closes over, not by its identity.

    Closed-over tensors count by identity here: this key serves the caches that do not
    yet feed a call's closed-over tensors to their programs (``cond``, ``switch``,
    ``while_loop``, ``associative_scan``); ``scan``, ``jit``, ``grad`` and ``vmap`` use
    :func:`tfscan._core.cache.closure`, which keys tensors by shape and dtype.

    A fresh ``lambda`` per call with the same code and the same closed-over values maps to
    the same key (no retrace, no unbounded growth); a closed-over tensor that is replaced
    changes the key (no stale constants). Unhashable closed-over objects count by identity.
    """
    if depth > 2:  # deeper helpers (and recursive closures) count by identity
        return _Identity(f)
    if isinstance(f, types.MethodType):
        return ("method", function_key(f.__func__, depth + 1), _value_key(f.__self__, depth + 1))
    if isinstance(f, types.FunctionType):
        cells = tuple(_value_key(c.cell_contents, depth + 1) if _cell_full(c) else None
                      for c in (f.__closure__ or ()))
        defaults = tuple(_value_key(d, depth + 1) for d in (f.__defaults__ or ()))
        globs = tuple((n, _value_key(f.__globals__[n], depth + 1)) for n in f.__code__.co_names
                      if n in f.__globals__ and _is_tensorish(f.__globals__[n]))
        return ("fn", f.__code__, cells, defaults, globs)
    return ("obj", _value_key(f, depth + 1))


def _is_tensorish(x: Any) -> bool:
    return isinstance(x, (tf.Tensor, tf.Variable, np.ndarray))




def _value_key(x: Any, depth: int = 0) -> Hashable:
    if isinstance(x, (types.FunctionType, types.MethodType)):
        return function_key(x, depth)
    if isinstance(x, (bool, int, float, complex, str, bytes, type(None), np.generic)):
        return (type(x), x)
    if isinstance(x, (tuple, list)) and len(x) < 64:
        return (type(x), tuple(_value_key(v, depth) for v in x))
    return _Identity(x)
