"""How a compiled call gives graph-mode differentiation its own VJP.

Eagerly, tfscan records one operation per compiled call on the live tapes
(:class:`tfscan._tf.record`). In a graph, ``tf.gradients`` and the tapes of a
``tf.function`` differentiate ops by type, so each call routes its outputs through an
``IdentityN`` whose gradient is overridden with a function registered under a fresh name
(``tf.RegisterGradient``, as ``tf.custom_gradient`` does itself). TensorFlow's registry
keeps every registered name for the life of the process (a scan's is removed with its graph,
:func:`tfscan._tf.unregister_gradient`), so a registered function must
hold what it needs weakly (the graphs that use it keep it alive).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Callable, Sequence

import tensorflow as tf

from tfscan import _tf

__all__: list = []  # private module

_lock = threading.Lock()
_ids = itertools.count()


def register(prefix: str, grad: Callable) -> str:
    """Register ``grad(op, *d_outputs)`` under a name no other call uses; return the name."""
    with _lock:
        name = f"{prefix}_{next(_ids)}"
    tf.RegisterGradient(name)(grad)
    return name


def identity(name: str, flat: Sequence[tf.Tensor]) -> list:
    """``flat`` through one ``IdentityN`` whose gradient is the one registered as ``name``."""
    with _tf.default_graph().gradient_override_map({"IdentityN": name}):
        return list(tf.identity_n(list(flat)))


_failing: dict[tuple, str] = {}  # error messages -> the name their failing gradient is registered as


def failing_identity(flat: Sequence[tf.Tensor], message: str, forward_message: str | None = None) -> list:
    """``flat`` through an ``IdentityN`` whose gradient raises ``ValueError(message)`` (a
    loop with no reverse mode), or ``ValueError(forward_message)`` when it is built while a
    ``ForwardAccumulator`` is live (TensorFlow's JVP of a ``tf.function`` call transposes
    the call's gradient). ``vmap``'s batching keeps it (:func:`is_failing`), so the batched
    loop has no reverse mode either."""
    key = (message, forward_message)
    with _lock:
        name = _failing.get(key)
    if name is None:
        def grad(op, *d_outputs):
            if forward_message is not None and _tf.record.accumulators():
                raise ValueError(forward_message)
            raise ValueError(message)
        name = register("TfscanNoGradient", grad)
        with _lock:
            name = _failing.setdefault(key, name)
    return identity(name, flat)


def gradient_type(op: tf.Operation) -> str | None:
    """The name of ``op``'s own gradient (``tf.custom_gradient``, :func:`graph_owned_identity`,
    a scan's ``IdentityN``), or ``None`` when TensorFlow's registered gradient applies."""
    try:
        name = op.get_attr("_gradient_op_type")
    except ValueError:
        return None
    return name.decode() if isinstance(name, bytes) else name


def is_failing(op: tf.Operation) -> str | None:
    """The gradient name of ``op`` when it is a :func:`failing_identity`, else ``None``."""
    name = gradient_type(op)
    return name if name in _failing.values() else None


def graph_owned_identity(prefix: str, grad: Callable, flat: Sequence[tf.Tensor]) -> list:
    """``flat`` through one ``IdentityN`` whose gradient is ``grad(op, *d_outputs)``, owned by
    the graph being built.

    ``grad`` is set on the op itself (``tf.gradients`` reads it first; it may hold what it
    needs strongly: it lives and dies with the op's graph). It is also registered, weakly,
    under a fresh name the op carries (removed when the graph is collected), under which
    ``tf.saved_model`` saves it: it traces the registered function without an op, which
    then differentiates this op."""
    ref = weakref.ref(grad)
    site: list = []

    def registered(op, *d_all):
        fn, target = ref(), op if op is not None else (site[0]() if site else None)
        if fn is None or target is None:
            raise ValueError(f"tfscan: the gradient registered as {name} was freed with the graph of its op.")
        return fn(target, *d_all)

    name = register(prefix, registered)
    out = identity(name, flat)
    _tf.set_op_gradient_function(out[0].op, grad)
    site.append(weakref.ref(out[0].op))
    weakref.finalize(_tf.default_graph(), _tf.unregister_gradient, name)
    return out
