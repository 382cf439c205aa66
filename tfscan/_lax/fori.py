"""``fori_loop`` with ``jax.lax.fori_loop``'s signature and semantics.

With bounds known when it is called (JAX's "concrete" values) the loop is a
``tfscan.scan`` of ``upper - lower`` steps over carry ``(i, val)``, so it is
reverse-differentiable and ``unroll`` applies; otherwise it is a ``tfscan.while_loop``
over ``(i, upper, val)``, forward-differentiable only, as in JAX.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, TypeVar

import numpy as np
import tensorflow as tf

from tfscan._core import checks as _checks
from tfscan._core import tree as _tree
from tfscan._lax import control as _control
from tfscan._lax.loops import while_loop
from tfscan._scan.scan import scan

__all__ = ["fori_loop"]

T = TypeVar("T")


def fori_loop(lower: int | tf.Tensor, upper: int | tf.Tensor, body_fun: Callable[[tf.Tensor, T], T],
              init_val: T, *, unroll: int | bool | None = None) -> T:
    """Loop ``body_fun`` from ``lower`` to ``upper``, as ``jax.lax.fori_loop``.

    Semantically::

        def fori_loop(lower, upper, body_fun, init_val):
            val = init_val
            for i in range(lower, upper):
                val = body_fun(i, val)
            return val

    ``upper <= lower`` runs no iteration. When both bounds are known at call time (Python
    or NumPy ints, eager tensors, constant graph tensors — JAX's "concrete" values) this
    is a ``tfscan.scan`` of ``upper - lower`` steps, reverse-differentiable; otherwise a
    ``tfscan.while_loop``, forward-differentiable only (reverse mode raises ``ValueError``
    saying to use static bounds).

    Args:
      lower: the first index (an integer scalar).
      upper: the end index, exclusive. ``lower`` and ``upper`` must have the same integer
        dtype unless one is a Python int (which takes the other's dtype); ``i`` has that
        dtype (int32 for Python ints).
      body_fun: ``body_fun(i, val) -> val``; the output must match ``init_val`` in pytree
        structure, dtypes and shapes.
      init_val: the initial value, any pytree of tensors.
      unroll: with static bounds, steps per loop iteration (an int, or ``True`` to unroll
        fully), as scan's ``unroll``. With dynamic bounds only ``None``/``False``/``1``.

    Returns:
      The final value.

    Bounds that are two whole Python floats (``0.0, 3.0``) are accepted as in JAX; ``i``
    is then float32. Differences from JAX: other float bounds are a ``TypeError``; ``i``
    is int32 for Python-int bounds even where JAX's x64 mode would make it int64; a Python
    number returned for a carry leaf takes that leaf's dtype (as in ``tfscan.scan``).

    Example:

    >>> import tensorflow as tf, tfscan
    >>> float(tfscan.fori_loop(0, 5, lambda i, x: x + tf.cast(i, tf.float32), 0.0))
    10.0
    >>> int(tfscan.fori_loop(2, tf.constant(6), lambda i, acc: acc * i, 1))  # 2*3*4*5
    120
    """
    if not callable(body_fun):
        raise TypeError(f"fori_loop: body_fun argument should be callable as body_fun(i, val) -> val, "
                        f"got {body_fun!r:.60}.")
    (lo, lo_static), (hi, hi_static), dtype = _bounds(lower, upper)
    if lo_static is not None and hi_static is not None:
        unroll = _checks.check_unroll(1 if unroll is None else unroll)
        length = max(hi_static - lo_static, 0)
        (_, val), _ = scan(_fori_scan_step(body_fun), (tf.constant(lo_static, dtype), init_val),
                           None, length=length, unroll=unroll)
        return val
    if not (unroll is None or unroll is False or unroll == 1):
        raise ValueError("fori_loop: can only use `unroll` in `fori_loop` if the loop bounds are "
                         f"statically known (got unroll={unroll!r} with a bound known only at run time).")
    _, _, val = while_loop(_fori_cond, _fori_while_body(body_fun),
                           (tf.cast(lo, dtype), tf.cast(hi, dtype), init_val))
    return val


def _bounds(lower: Any, upper: Any):
    """``((tensor, static int or None), (...), dtype)`` with JAX's dtype rule for the bounds."""
    lo, lo_dtype = _bound(lower, "lower")
    hi, hi_dtype = _bound(upper, "upper")
    if (lo_dtype is None) != (hi_dtype is None) and tf.float32 in (lo_dtype, hi_dtype):
        raise TypeError("fori_loop: lower and upper arguments to fori_loop must have equal types, got "
                        f"{type(lower).__name__} {lower!r} and {type(upper).__name__} {upper!r}. Pass two "
                        "ints (or two whole floats).")
    if lo_dtype is None or hi_dtype is None or lo_dtype == hi_dtype:
        dtype = lo_dtype or hi_dtype or tf.int32
    else:
        raise TypeError("fori_loop: lower and upper arguments to fori_loop must have equal types, "
                        f"got {lo_dtype.name} and {hi_dtype.name}. Cast one of them.")
    return lo, hi, dtype


def _bound(value: Any, name: str):
    """``((tensor or int, static int or None), dtype or None for a Python int)``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"fori_loop: {name} must be an integer scalar, got bool {value!r}.")
    if isinstance(value, numbers.Integral) and not isinstance(value, np.integer):
        return (value, int(value)), None
    if isinstance(value, float) and not isinstance(value, np.generic):
        # JAX takes float bounds; a scan of whole steps needs integral ones (i is float32).
        if not value.is_integer():
            raise TypeError(f"fori_loop: {name}={value!r} is a float that is not a whole number; the loop "
                            f"runs whole steps. Pass integer bounds (e.g. {name}={int(value)}).")
        return (value, int(value)), tf.float32
    try:
        t = tf.convert_to_tensor(value.value() if isinstance(value, tf.Variable) else value)
    except (TypeError, ValueError):
        raise TypeError(f"fori_loop: {name} must be an integer scalar, got {type(value).__name__} "
                        f"{value!r:.60}.") from None
    if t.shape.rank != 0 or not t.dtype.is_integer:
        raise TypeError(f"fori_loop: {name} must be an integer scalar (or a whole Python float), got a "
                        f"{t.dtype.name} tensor of shape {t.shape}. Cast it: tf.cast({name}, tf.int32).")
    static = tf.get_static_value(t)
    return (t, None if static is None else int(static)), t.dtype


def _next(body_fun: Callable, i: tf.Tensor, val: Any) -> tuple:
    """``(i + 1, body_fun(i, val))``, the output checked against ``val``'s structure and specs."""
    leaves, _, tree = _tree.flatten_with_paths(val, "init_val")
    new = _checks.new_carry(body_fun(i, val), tree, _control.specs(leaves), "fori_loop", "body_fun",
                            "init_val", "init_val")
    return i + 1, _tree.unflatten(tree, new)


def _fori_scan_step(body_fun: Callable) -> Callable:
    """The scan step of a loop with static bounds: carry ``(i, val)``."""
    return lambda carry, _: (_next(body_fun, *carry), None)


def _fori_cond(carry):
    return carry[0] < carry[1]


def _fori_while_body(body_fun: Callable) -> Callable:
    """The while body of a loop with run-time bounds: carry ``(i, upper, val)``."""
    def body(carry):
        i, upper, val = carry
        i, val = _next(body_fun, i, val)
        return i, upper, val
    return body
