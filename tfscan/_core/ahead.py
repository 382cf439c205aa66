"""Compiling a graph's XLA programs while the graph is still being traced.

A compiled call tfscan emits in a ``tf.function`` graph (an ``XlaLaunch`` op,
:func:`tfscan._scan.program.launch`) is compiled by XLA when the graph first runs, one
program after the other: a Keras train step on CPU compiles the scan's forward program,
runs it, runs the loss, then compiles the backward program. Both compiles are on the
first step's critical path, and together they cost about what Keras' whole first-epoch
tracing does.

When an ``XlaLaunch`` op is emitted with fully defined input shapes (Keras traces its
train step for the batch's static shape), :func:`schedule` hands its program to one of
two worker threads, which compile it (:func:`tfscan._tf.compile_ahead`: XLA's
compile-only op, nothing runs) into the cache the op reads, while the caller goes on
tracing. XLA releases the GIL while it compiles, so the forward and backward programs
compile side by side on two cores and beside the rest of the trace and TensorFlow's graph
optimisation. A launch that arrives while its program is being compiled waits for that
compile (XLA locks each program's cache entry), so nothing is compiled twice.

Each program and input signature is scheduled once (per concrete function, weakly held).
A graph traced but never run (an export) costs its programs' compiles on a worker thread.
At interpreter exit the workers finish the compile under way and drop the rest.

>>> import tensorflow as tf, tfscan
>>> @tf.function
... def f(x):
...     return tfscan.scan(lambda c, v: (c + v, c), 0.0, x)[0]
>>> _ = f.get_concrete_function(tf.TensorSpec([4]))  # traced: its program compiles meanwhile
>>> wait()
True
>>> float(f(tf.ones([4])))  # the first run finds the program compiled
4.0
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from typing import Any, Sequence

import tensorflow as tf

from tfscan import _tf

__all__ = []  # private module

WORKERS = min(2, os.cpu_count() or 1)  # compiles at once (one XLA:CPU compile uses one core)

_lock = threading.Condition()
_jobs: collections.deque = collections.deque()
_running = 0  # worker threads alive
_busy = 0  # jobs being compiled
_seen: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


def schedule(concrete: Any, inputs: Sequence[Any], device: str | None) -> bool:
    """Compile ``concrete``'s program for ``inputs`` (the launch op's inputs: tensors or
    variables, arguments then captures) for the launch op's ``device`` on a worker thread,
    unless it was scheduled before, a shape is not fully defined, an input is a resource or
    a variant, or the device is another task's. Returns whether a compile was scheduled."""
    if device and tf.DeviceSpec.from_string(device).job not in (None, "localhost"):
        return False  # another task's device (multi-worker): compiled there, when it runs
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in inputs]
    if not all(s.shape.is_fully_defined() for s in specs) or any(
            s.dtype in (tf.resource, tf.variant) for s in specs):
        return False
    key = (tuple((tuple(s.shape.as_list()), s.dtype) for s in specs), device or None)
    global _running
    with _lock:
        try:
            seen = _seen.setdefault(concrete, set())
        except TypeError:  # not weakly referenceable: never held
            return False
        if key in seen:
            return False
        seen.add(key)
        _jobs.append((weakref.ref(concrete), specs, device or None))
        if _running < WORKERS:
            _running += 1
            threading.Thread(target=_work, name="tfscan-compile-ahead", daemon=False).start()
    return True


def _work() -> None:
    global _running, _busy
    while True:
        with _lock:
            if not _jobs or not threading.main_thread().is_alive():  # done, or the interpreter exits
                _jobs.clear() if _jobs else None
                _running -= 1
                _lock.notify_all()
                return
            ref, specs, device = _jobs.popleft()
            _busy += 1
        try:
            concrete = ref()
            if concrete is not None:
                _tf.compile_ahead(concrete, specs, device)
        except Exception:  # noqa: BLE001 - the launch itself compiles and reports any error
            pass
        finally:
            with _lock:
                _busy -= 1
                _lock.notify_all()


def wait(timeout: float | None = None) -> bool:
    """Block until every scheduled compile has finished (``False`` on ``timeout``)."""
    with _lock:
        return _lock.wait_for(lambda: not _jobs and _busy == 0, timeout)
