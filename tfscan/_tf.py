"""The one door to TensorFlow internals: every use of a private TensorFlow API is here.

Each entry says what it is, why no public API serves, and the TensorFlow versions it
was checked on. Everything else in tfscan uses public ``tf.*`` APIs only, so a
TensorFlow release that moves an internal breaks this module (and its smoke test,
``tests/test_tf_adapter.py``), not code scattered across the package.

Checked on: TensorFlow 2.21.
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf
from tensorflow.python.autograph.core import function_wrappers as _autograph_wrappers
from tensorflow.python.eager import context as _context
from tensorflow.python.eager import record as _record
from tensorflow.python.framework import ops as _ops

__all__ = []  # private module


def default_graph() -> Any:
    """The graph being built (a ``FuncGraph`` inside ``tf.function``).

    Public ``tf.compat.v1.get_default_graph`` returns the same object; this name avoids
    the ``compat.v1`` namespace in code that is TF2-only.
    """
    return _ops.get_default_graph()


def call_concrete(concrete: Any, args: Sequence[tf.Tensor], captured: Sequence[Any] | None = None) -> list:
    """Call a ``ConcreteFunction`` on flat tensors, feeding ``captured`` for its captures.

    Why private: ``ConcreteFunction._call_flat`` is the only way to (1) skip
    ``tf.function``'s argument canonicalization (a large part of a short scan's eager
    cost) and (2) feed new values for a trace's captured inputs, so that a function
    closing over a tensor recomputed each call reuses its compiled program instead of
    being traced again. Works eagerly and while building a graph. Eagerly with nothing
    recording (``record.could_possibly_record``), it calls the traced function's
    ``_inference_function.call_flat`` (an ``AtomicFunction``), which is what
    ``_call_flat`` itself ends in then.
    """
    if captured is None:
        captured = concrete.captured_inputs
    if not _record.could_possibly_record() and _context.executing_eagerly():
        # No tape or accumulator could record this call: run the function itself, skipping
        # ``_call_flat``'s gradient bookkeeping (a third of a short scan's call).
        outs = concrete._inference_function.call_flat(*args, *captured)  # noqa: SLF001
    else:
        outs = concrete._call_flat(list(args), list(captured))  # noqa: SLF001 - see docstring
    if outs is None:
        return []
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


def quiet_retracing(fn: Any) -> Any:
    """Silence ``tf.function``'s "frequent retracing" warning for ``fn``.

    Why private: the warning counts traces of every ``tf.function`` made from the same
    Python code; tfscan makes one function per cache entry, each traced once, so the
    warning would be wrong. No public switch exists.
    """
    fn._omit_frequent_tracing_warning = True  # noqa: SLF001 - see docstring
    return fn


def is_autograph_scope(x: Any) -> bool:
    """Whether ``x`` is the ``FunctionScope`` AutoGraph puts in a converted function's closure.

    Why private: a lambda defined inside a ``tf.function`` (AutoGraph on, the default)
    closes over a new ``FunctionScope`` on every trace; it only names ops and carries no
    value a trace depends on, so the cache key must ignore it, or every graph (each
    Keras retrace) would compile the same scan again. No public type exists to test.
    """
    return isinstance(x, _autograph_wrappers.FunctionScope)


def set_pfor_converter(op: Any, converter: Any) -> None:
    """Give one graph operation its own ``pfor`` converter (``tf.vectorized_map``'s engine).

    Why private: ``pfor`` converts an operation with ``op.pfor_converter`` when the
    attribute exists, before its per-type registry; that is the only way to convert one
    particular op differently from others of its type. tfscan uses it on the ops of a
    scan's forward loop traced for ``vmap``: the scan's batching rule replaces the whole
    loop, so ``pfor`` must not batch those ops one by one first (that would double the
    trace and leave a dead loop in the graph). Checked on TensorFlow 2.21
    (``parallel_for/pfor.py``: ``PFor._convert_helper``).
    """
    op.pfor_converter = converter


def without_autograph(fn: Any) -> Any:
    """``fn`` for tfscan's public API: never converted by AutoGraph, and run as written.

    ``tf.autograph.experimental.do_not_convert`` does this by entering a "conversion
    disabled" context on every call, a tenth of a short eager scan's cost. AutoGraph only
    converts while a ``tf.function`` is traced, so an eager call goes straight to ``fn``.
    Why private: the mark AutoGraph reads (``autograph_info__``, set by
    ``autograph.impl.api.autograph_artifact``, which ``do_not_convert`` uses) has no public
    setter. Checked on TensorFlow 2.21.
    """
    import functools

    from tensorflow.python.autograph.impl import api as _autograph_api

    slow = tf.autograph.experimental.do_not_convert(fn)
    executing_eagerly = _context.executing_eagerly

    def call(*args: Any, **kwargs: Any) -> Any:
        if executing_eagerly():
            return fn(*args, **kwargs)
        return slow(*args, **kwargs)

    functools.update_wrapper(call, fn)
    return _autograph_api.autograph_artifact(call)
