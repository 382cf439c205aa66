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


_failing: dict[str, str] = {}  # error message -> the name its failing gradient is registered as


def failing_identity(flat: Sequence[tf.Tensor], message: str) -> list:
    """``flat`` through an ``IdentityN`` whose gradient raises ``ValueError(message)`` (a
    loop with no reverse mode). ``vmap``'s batching keeps it (:func:`is_failing`), so the
    batched loop has no reverse mode either."""
    with _lock:
        name = _failing.get(message)
    if name is None:
        def grad(op, *d_outputs):
            raise ValueError(message)
        name = register("TfscanNoGradient", grad)
        with _lock:
            name = _failing.setdefault(message, name)
    return identity(name, flat)


def is_failing(op: tf.Operation) -> str | None:
    """The gradient name of ``op`` when it is a :func:`failing_identity`, else ``None``."""
    try:
        name = op.get_attr("_gradient_op_type")
    except ValueError:
        return None
    name = name.decode() if isinstance(name, bytes) else name
    return name if name in _failing.values() else None
