"""Input validation for scan: every error names the argument, the leaf path and the fix.

The checks mirror ``jax.lax.scan`` (``jax/_src/lax/control_flow/loops.py``): they run
on the Python side, before anything is traced, wherever the information is there.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfscan import _tf
from tfscan._core import tree as _tree
from tfscan._core.tree import TreeDef

__all__ = []  # private module


def check_callable(f: Any, name: str = "f") -> None:
    if not callable(f):
        raise TypeError(f"scan: {name} must be callable as {name}(carry, x) -> (carry, y), got {f!r}")


def check_unroll(unroll: Any) -> int | bool:
    """``unroll`` as a positive int, or ``True`` for a fully unrolled loop."""
    if isinstance(unroll, (bool, np.bool_)):
        return True if unroll else 1
    if isinstance(unroll, numbers.Integral):
        if unroll < 0:
            raise ValueError(
                f"scan: unroll must be a bool or a non-negative int, got unroll={unroll}. "
                "Use unroll=1 for a rolled loop or unroll=True (or 0, as in JAX) to unroll it fully.")
        return True if unroll == 0 else int(unroll)  # JAX: 0 unrolls fully, as True
    raise TypeError(
        f"scan: unroll must be a bool or a non-negative int, got {type(unroll).__name__} {unroll!r}.")


def check_reverse(reverse: Any, api: str = "scan") -> bool:
    if isinstance(reverse, (bool, np.bool_)):
        return bool(reverse)
    raise TypeError(f"{api}: reverse must be a Python bool, got {type(reverse).__name__} {reverse!r}.")


_NOT_NUMERIC = frozenset({tf.string, tf.resource, tf.variant})


def to_tensors(leaves: Sequence[Any], paths: Sequence[str], arg: str, api: str = "scan") -> list[tf.Tensor]:
    """Convert every leaf like ``tf.constant`` (Python float -> float32, int -> int32).

    A tensor of an enclosing graph is captured into the one being traced, as a TensorFlow op
    reading it would: the live tapes and accumulators then see the tensor every op here
    reads (an accumulator made in this trace watches the capture, not the outer tensor).
    """
    out = []
    graph = None if tf.executing_eagerly() else _tf.default_graph()
    for leaf, path in zip(leaves, paths):
        if isinstance(leaf, tf.Tensor) and leaf.dtype not in _NOT_NUMERIC:
            # already a tensor: nothing to convert or check
            out.append(_tf.in_graph(graph, leaf) if graph is not None and tf.is_symbolic_tensor(leaf) else leaf)
            continue
        if isinstance(leaf, tf.Variable):
            leaf = leaf.value()
        try:
            t = tf.convert_to_tensor(leaf)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"{api}: {arg} leaf {path} is {type(leaf).__name__} {leaf!r:.80}, which is not a "
                f"tensor or convertible to one ({e}). Pass tensors, NumPy arrays or Python numbers.") from None
        if t.dtype in (tf.string, tf.resource, tf.variant):
            raise TypeError(
                f"{api}: {arg} leaf {path} has dtype {t.dtype.name}; {api} takes numeric "
                "and bool tensors only.")
        out.append(t)
    return out


def output_tensor(value: Any, path: str, api: str = "scan", fn: str = "f",
                  dtype: tf.DType | None = None) -> tf.Tensor:
    """A leaf a user function returned, as a tensor; a Python scalar takes ``dtype`` if given.

    (A Python number returned for a float32 carry stays float32, as a weak type does in JAX;
    as there, a Python bool is a bool, and a float for an integer or bool leaf stays a float,
    so that the carry check rejects it instead of converting it.)
    """
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.convert_to_tensor(value)
    try:
        if dtype is not None and isinstance(value, (bool, int, float)) and _weakly_fits(value, dtype):
            return tf.constant(value, dtype)
        return tf.convert_to_tensor(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{api}: {fn} returned {type(value).__name__} {value!r:.80} at {path}, which is "
                        f"not a tensor ({e}). Return tensors, NumPy arrays or Python numbers.") from None


def _weakly_fits(value: bool | int | float, dtype: tf.DType) -> bool:
    """Whether a Python scalar may take ``dtype`` (JAX's weak types: no bool <-> number,
    no float -> integer)."""
    if isinstance(value, bool) or dtype == tf.bool:
        return isinstance(value, bool) and dtype == tf.bool
    return isinstance(value, int) or dtype.is_floating or dtype.is_complex


def scan_length(xs: Sequence[tf.Tensor], paths: Sequence[str], length: Any) -> tuple[int | None, Any]:
    """The number of steps: ``(static, value)`` where ``value`` is an int or a scalar int32 tensor.

    ``static`` is the Python int when it is known now, else ``None`` (a length known only
    at run time, as with a ``None`` time axis in a ``tf.function`` signature).
    """
    if length is not None:
        length = _check_length_arg(length)
    for x, path in zip(xs, paths):
        if x.shape.rank == 0:
            raise ValueError(
                f"scan: xs leaf {path} is a scalar (shape ()), but scan slices every leaf of xs along "
                "its leading axis. Give it a leading axis of size length, or close over it in f instead.")
    static_sizes = [(p, x.shape[0]) for x, p in zip(xs, paths) if x.shape.rank is not None]
    known = [(p, n) for p, n in static_sizes if n is not None]
    if len({n for _, n in known}) > 1:
        listing = ", ".join(f"{p} has leading size {n}" for p, n in known)
        raise ValueError(
            "scan: every leaf of xs must have the same leading axis size (the number of steps), "
            f"but {listing}. Slice or pad them to one length.")
    if isinstance(length, int):
        if known and known[0][1] != length:
            listing = ", ".join(f"{p} has leading size {n}" for p, n in known)
            raise ValueError(
                f"scan: length={length} does not match the leading axis of xs: {listing}. "
                "Pass length equal to that size, or leave length=None.")
        return length, length
    if known:
        return known[0][1], known[0][1]
    if length is not None:  # a tensor
        static = tf.get_static_value(length)
        return (int(static), int(static)) if static is not None else (None, length)
    if xs:
        return None, tf.shape(xs[0], out_type=tf.int32)[0]
    raise ValueError(
        "scan: xs is None (or has no leaves) and length is None, so the number of steps is "
        "unknown. Pass length=<number of steps>.")


def _check_length_arg(length: Any) -> Any:
    if isinstance(length, (bool, np.bool_)):
        raise TypeError(f"scan: length must be a non-negative int, got bool {length!r}.")
    if isinstance(length, numbers.Integral):
        if length < 0:
            raise ValueError(f"scan: length must be a non-negative int, got length={length}.")
        return int(length)
    if isinstance(length, (tf.Tensor, tf.Variable, np.ndarray)):
        t = tf.convert_to_tensor(length)
        if t.shape.rank not in (0, None) or not t.dtype.is_integer:
            raise TypeError(
                f"scan: length must be an int or a scalar integer tensor, got a {t.dtype.name} "
                f"tensor of shape {t.shape}.")
        static = tf.get_static_value(t)
        if static is not None:
            return _check_length_arg(int(static))
        return tf.cast(t, tf.int32)
    raise TypeError(f"scan: length must be a non-negative int, got {type(length).__name__} {length!r}.")


def check_carry(init_tree: TreeDef, out_tree: TreeDef, init: Sequence[tf.TensorSpec],
                out: Sequence[tf.TensorSpec], paths: Sequence[str], what: str = "scan",
                fn: str = "f", init_name: str = "init") -> None:
    """``fn``'s new carry must match ``init_name`` in structure, dtype and shape (``TypeError``)."""
    fix = (f"Fix: return a carry with exactly the structure, dtypes and shapes of {init_name} "
           f"(cast with tf.cast, reshape, or change {init_name}).")
    if init_tree != out_tree:
        raise TypeError(
            f"{what}: {fn} must return a carry with the same structure as {init_name}, but {init_name} "
            f"has structure {init_tree} and {fn} returned a carry with structure {out_tree}. {fix}")
    bad = []  # every mismatched leaf, as JAX lists them
    for path, a, b in zip(paths, init, out):
        what_differs = "dtypes" if a.dtype != b.dtype else None if _shapes_match(a.shape, b.shape) else "shapes"
        if what_differs:
            bad.append(f"the carry leaf {path} of {init_name} has type {_typestr(a)} but {fn} returned "
                       f"{_typestr(b)} for it, so the {what_differs} do not match")
    if len(bad) == 1:
        raise TypeError(f"{what}: {bad[0]}. {fix}")
    if bad:
        listing = "".join(f"\n  * {b}" for b in bad)
        raise TypeError(f"{what}: {fn} returned a carry whose types differ from {init_name} at "
                        f"{len(bad)} leaves:{listing}\n{fix}")


def _shapes_match(a: tf.TensorShape, b: tf.TensorShape) -> bool:
    if a.rank is None or b.rank is None:
        return True
    if a.rank != b.rank:
        return False
    # A dimension known on both sides must agree; unknown dimensions are resolved at run time.
    return all(x is None or y is None or x == y for x, y in zip(a.as_list(), b.as_list()))


def _typestr(spec: tf.TensorSpec) -> str:
    dims = "?" if spec.shape.rank is None else ",".join("?" if d is None else str(d) for d in spec.shape.as_list())
    return f"{spec.dtype.name}[{dims}]"


def check_remat(remat: Any, api: str = "scan") -> bool | int | str | tuple:
    """``False``, ``True`` (``"full"``), ``"sqrt"``, a positive int checkpoint interval, or
    ``("binomial", k)`` (``k`` snapshots, ``None`` when ``"binomial"`` picks it from the length)."""
    if isinstance(remat, (bool, np.bool_)):
        return bool(remat)
    if isinstance(remat, str) and remat == "full":
        return True
    if isinstance(remat, str) and remat in ("sqrt", "binomial"):
        return "sqrt" if remat == "sqrt" else ("binomial", None)
    if isinstance(remat, numbers.Integral) and remat > 0:
        return int(remat)
    if isinstance(remat, tuple) and len(remat) == 2 and remat[0] == "binomial":
        k = remat[1]
        if isinstance(k, numbers.Integral) and not isinstance(k, (bool, np.bool_)) and k >= 1:
            return ("binomial", int(k))
        raise ValueError(f"{api}: remat=('binomial', k) needs k, the number of snapshots, a positive "
                         f"int; got k={k!r}.")
    raise ValueError(
        f"{api}: remat must be False (save each step's residuals), True or 'full' (save only the "
        f"carries and recompute each step), 'sqrt' or a positive int k (save the carry every k "
        f"steps), 'binomial' or ('binomial', k) (k snapshots, binomial checkpointing), got {remat!r}.")


def new_carry(out: Any, carry_tree: TreeDef, carry_specs: Sequence[tf.TensorSpec], api: str = "scan",
              fn: str = "f", root: str = "carry", init_name: str = "init") -> list[tf.Tensor]:
    """What ``fn`` returned as the next carry, as tensors, checked against the carry's
    structure, dtypes and shapes (a Python number takes its leaf's dtype)."""
    leaves, paths, treedef = _tree.flatten_with_paths(out, root)
    if treedef == carry_tree:
        leaves = [output_tensor(v, p, api, fn, s.dtype) for v, p, s in zip(leaves, paths, carry_specs)]
    else:
        leaves = [output_tensor(v, p, api, fn) for v, p in zip(leaves, paths)]
    check_carry(carry_tree, treedef, list(carry_specs), [tf.TensorSpec(t.shape, t.dtype) for t in leaves],
                _tree.leaf_paths(carry_tree, root), api, fn=fn, init_name=init_name)
    return leaves


def step_pair(out: Any, api: str = "scan") -> tuple[Any, Any]:
    """``f``'s result as ``(new_carry, y)``."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(
            f"{api}: f must return a pair (new_carry, y), got {type(out).__name__} {out!r:.100}. "
            "Return `carry, y` (use y=None for no per-step output).")
    return out[0], out[1]
