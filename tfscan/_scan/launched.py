"""The gradient of a compiled program launched as one ``XlaLaunch`` op.

In a ``tf.function`` graph tfscan emits a compiled program as an ``XlaLaunch`` op
(:func:`tfscan._scan.program.launch`): TensorFlow's own call of a ``jit_compile=True``
function keeps an instantiation of it for every graph that runs it; this op keeps nothing.
TensorFlow registers no gradient for ``XlaLaunch``, yet a tape outside the
``tf.function``, ``tf.gradients`` or an accumulator outside it (TensorFlow's JVP of a
function is the transpose of its gradient) differentiates the graph op by op. So tfscan
registers one gradient for the op type (:func:`tfscan._tf.register_launch_gradient`):

* each launched program is noted by its function's name (:func:`note`), weakly: the
  programs stay alive as long as the graphs that use them (:mod:`tfscan._core.cache`);
* the gradient of such an op is its program's VJP: one more compiled program, traced once
  per program (shared by every graph), that recomputes the program under a tape and
  returns the gradients of its float inputs and of the variables it reads (the resource
  inputs) — what TensorFlow's gradient of its own call of the function computed. It is
  launched the same way, so its own gradient (a Hessian-vector product, a tape of a tape)
  is the VJP of the VJP;
* any other ``XlaLaunch`` op (not tfscan's) raises TensorFlow's ``LookupError``.

Programs whose outputs pass an ``IdentityN`` with a registered gradient (scan's loops,
``while_loop(max_steps=...)``) never reach this gradient: that ``IdentityN`` gives their
outputs no cotangent.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Sequence

import tensorflow as tf

from tfscan import _tf

__all__: list = []  # private module

_lock = threading.Lock()
_PROGRAMS: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()  # function name -> concrete
_VJPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # concrete -> its VJP's tf.function


def relaunch(op: tf.Operation, after: Any, before: Any) -> list | None:
    """Make ``op`` (``before``'s launch) launch ``after`` instead (:func:`tfscan._tf.relaunch`),
    noted for its gradient; the outputs ``after`` adds, or ``None`` (``op`` unchanged)."""
    extra = _tf.relaunch(op, after, before)
    if extra is not None:
        note(op, after)
    return extra


class Added:
    """What a launched op is made to return besides its outputs (:func:`relaunch`: scan's
    residuals, a bounded loop's checkpoints), made once and then read back from the op's
    graph by name. Its holder lives as long as a registered gradient, until that graph is
    collected: holding the graph's tensors would keep the graph alive (every graph
    differentiated after inference was kept so). Holds the op weakly."""

    def __init__(self, op: tf.Operation | None):
        self._op = weakref.ref(op) if op is not None else (lambda: None)
        self._names: list | None = None

    def get(self, make: Callable[[tf.Operation], list | None]) -> list | None:
        """``make(op)`` on the first call, the same tensors after; ``None`` when there is no
        op (gone, or none given) or ``make`` returns ``None`` (tried again next time)."""
        op = self._op()
        if op is None:
            return None
        if self._names is None:
            made = make(op)
            if made is None:
                return None
            self._names = [t.name for t in made]
            return made
        return [op.graph.get_tensor_by_name(n) for n in self._names]


def note(op: tf.Operation, concrete: Any) -> None:
    """Remember that ``op`` (an ``XlaLaunch`` op just emitted) launches ``concrete``."""
    _tf.register_launch_gradient(_gradient)
    with _lock:
        _PROGRAMS[_function_name(op)] = concrete


def _function_name(op: Any) -> str:
    name = op.get_attr("function").name
    return name.decode() if isinstance(name, bytes) else name


def _differentiable(dtype: tf.DType) -> bool:
    return dtype.is_floating or dtype.is_complex


def _gradient(op: Any, *d_outs: Any) -> list:
    """The gradients of ``op``'s inputs (``None`` for integer inputs)."""
    if op is None:  # tf.saved_model traces a registered gradient without an op: none saved
        return [None] * len(d_outs)
    with _lock:
        concrete = _PROGRAMS.get(_function_name(op))
    if concrete is None:
        raise LookupError(
            f"No gradient defined for operation '{op.name}' (op type: {op.type}). It launches "
            f"{_function_name(op)!r}, which is not a tfscan program alive in this process (tfscan "
            "differentiates the XlaLaunch ops it emits itself). If you want to pretend this operation "
            "is a constant in your program, you may insert `tf.stop_gradient`.")
    inputs = list(op.inputs)
    outs = list(op.outputs)
    fo = [i for i, o in enumerate(outs) if _differentiable(o.dtype)]
    d = [tf.zeros_like(outs[i]) if d_outs[i] is None else tf.convert_to_tensor(d_outs[i]) for i in fo]
    plain = [t for t in inputs if t.dtype != tf.resource]
    res = [t for t in inputs if t.dtype == tf.resource]
    wrt = [i for i, t in enumerate(inputs) if _differentiable(t.dtype) or t.dtype == tf.resource]
    fn = _vjp_function(concrete, len(plain), fo, wrt)
    args = plain + d + res
    from tfscan._scan import program as _program  # noqa: PLC0415 - program imports this module

    run_time = [i for i, t in enumerate(args) if t.dtype.is_integer]  # run-time values of the op already
    grads = _program.launch(fn, args, run_time=run_time)
    if grads is None:
        with _tf.xla_trace():
            vjp = fn.get_concrete_function(*args)
        grads = _tf.call_concrete(vjp, args, xla=True)
    out: list = [None] * len(inputs)
    for i, g in zip(wrt, grads):
        out[i] = g
    return out


def _vjp_function(concrete: Any, n_plain: int, fo: Sequence[int], wrt: Sequence[int]) -> Any:
    """The ``jit_compile=True`` function ``(plain inputs, float output cotangents, resource
    inputs) -> gradients of inputs wrt`` of ``concrete`` (one per program)."""
    with _lock:
        fn = _VJPS.get(concrete)
    if fn is not None:
        return fn
    n_captured = len(concrete.captured_inputs)
    fo, wrt = list(fo), list(wrt)
    ref = weakref.ref(concrete)  # the program's graphs keep it alive; the cache holds this weakly

    def vjp(*flat):
        concrete = ref()
        if concrete is None:
            raise RuntimeError("tfscan: the program of this XlaLaunch op was freed with the graphs that used it.")
        plain, d, res = flat[:n_plain], flat[n_plain: n_plain + len(fo)], flat[n_plain + len(fo):]
        inputs = list(plain) + list(res)
        n_in = len(inputs) - n_captured
        sources = [inputs[i] for i in wrt]
        with tf.GradientTape(watch_accessed_variables=False, persistent=False) as tape:
            tape.watch(sources)
            outs = _tf.call_concrete(concrete, inputs[:n_in], inputs[n_in:], xla=True)
        grads = tape.gradient([outs[i] for i in fo], sources, output_gradients=list(d),
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [tf.convert_to_tensor(g) for g in grads]

    fn = _tf.quiet_retracing(tf.function(vjp, jit_compile=True, autograph=False, reduce_retracing=False))
    with _lock:
        return _VJPS.setdefault(concrete, fn)
