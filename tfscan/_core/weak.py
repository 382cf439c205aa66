"""JAX's weak types for a loop's initial carry: a Python scalar takes the step's dtype.

TensorFlow has no weak types: ``0`` becomes int32, and ``int32 + int8`` is an error. In
JAX a Python scalar in ``init`` is weakly typed, so ``scan(f, 0, xs_int8)`` carries int8.
When tracing the step with the default dtypes fails (or returns another dtype for such a
leaf), :func:`retype` traces the step again — only to learn dtypes, nothing is compiled —
giving each Python-scalar leaf a candidate dtype (the step's result for it, then the
dtypes of the other inputs, then every dtype of the scalar's kind) and returns the first assignment for
which the step returns each of those leaves in the dtype it was given. A tensor leaf
never changes dtype: a real dtype change stays the carry check's error.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from tfscan._core import tree as _tree
from tfscan._tf import record

__all__ = []  # private module


_ALL = (tf.int32, tf.float32, tf.int64, tf.float64, tf.int8, tf.int16, tf.uint8, tf.uint16, tf.uint32,
        tf.uint64, tf.float16, tf.bfloat16, tf.complex64, tf.complex128)


def python_scalars(leaves: Sequence[Any]) -> list[bool]:
    """Which leaves are Python scalars (weakly typed in JAX; NumPy scalars are not)."""
    return [isinstance(v, (bool, int, float)) and not isinstance(v, np.generic) for v in leaves]


def _fits(value: Any, dtype: tf.DType) -> bool:
    if isinstance(value, bool):
        return dtype == tf.bool
    if dtype == tf.bool:
        return False
    return isinstance(value, int) and dtype.is_integer or dtype.is_floating or dtype.is_complex


def retype(call: Callable[..., Any], raw: Sequence[Any], init: Sequence[tf.Tensor],
           extra: Sequence[tf.TensorSpec]) -> list[tf.Tensor] | None:
    """``init`` with its Python-scalar leaves in the dtypes the step gives them, or ``None``.

    ``call(*carry_leaves, *extra)`` returns the step's new carry (a pytree whose leaves
    line up with ``init``); ``raw`` are the leaves of ``init`` as the user passed them.
    """
    weak = python_scalars(raw)
    if not any(weak):
        return None
    base = [t.dtype for t in init]

    def trial(dtypes: list) -> list | None:
        specs = [tf.TensorSpec(t.shape, d) for t, d in zip(init, dtypes)] + list(extra)
        found: list = []

        def fn(*args):
            leaves = _tree.flatten(call(*args))[0]
            found.extend(getattr(v, "dtype", None) for v in leaves)
            return []

        try:
            with record.stop_recording():
                tf.function(fn, autograph=False).get_concrete_function(*specs)
        except Exception:  # noqa: BLE001 - this assignment does not trace: try the next
            return None
        return found if len(found) == len(dtypes) else None

    # The other inputs' dtypes first, then every dtype (JAX's defaults first): the step's
    # own constants may be what fixes the dtype (``c + tf.constant(1, tf.int8)``).
    others = list(dict.fromkeys([s.dtype for s in extra] + [d for d, w in zip(base, weak) if not w]
                                + list(_ALL)))
    candidates = [base] + [[d if w and _fits(v, d) else b for v, w, b in zip(raw, weak, base)] for d in others]
    seen = []
    for dtypes in candidates:
        for _ in range(2):  # the step's own dtypes for the weak leaves, then check them
            if dtypes in seen:
                break
            seen.append(dtypes)
            out = trial(dtypes)
            if out is None:
                break
            new = [tf.as_dtype(o) if w and o is not None and _fits(v, tf.as_dtype(o)) else d
                   for v, w, d, o in zip(raw, weak, dtypes, out)]
            if new == dtypes:
                if dtypes == base:
                    return None  # nothing to change: the original error stands
                return [tf.constant(v, d) if w else t for v, w, d, t in zip(raw, weak, dtypes, init)]
            dtypes = new
    return None
