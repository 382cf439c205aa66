"""``associative_scan``: ``jax.lax.associative_scan`` on ``tfp.math.scan_associative``.

``tfp.math.scan_associative`` is the same odd/even recursion as JAX's implementation
(Blelloch 1990; ``2n`` applications of ``fn`` in ``O(log n)`` depth, ``fn`` applied to
whole half-length slices) with the same result ``[a, fn(a, b), fn(fn(a, b), c), ...]``.
tfscan builds on it and adds what JAX has and it lacks: JAX pytrees (``None`` is an empty
subtree, dicts sorted), ``reverse``, checks of ``fn``'s outputs, and XLA compilation.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, TypeVar

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfscan._core import checks as _checks
from tfscan._core import context as _context
from tfscan._core import tree as _tree
from tfscan._lax import control as _control

__all__ = ["associative_scan"]

Elems = TypeVar("Elems")


def associative_scan(fn: Callable[[Elems, Elems], Elems], elems: Elems, reverse: bool = False,
                     axis: int = 0) -> Elems:
    """A parallel prefix scan with an associative ``fn``, as ``jax.lax.associative_scan``.

    For ``elems = [a, b, c, ...]`` along ``axis`` the result is
    ``[a, fn(a, b), fn(fn(a, b), c), ...]`` — what ``tfscan.scan`` with carry
    ``fn(carry, x)`` gives — computed in ``O(log n)`` sequential depth with ``2n``
    applications of ``fn`` (the odd/even recursion of Blelloch 1990, via
    ``tfp.math.scan_associative``), compiled by XLA. ``fn`` must be associative:
    ``fn(a, fn(b, c)) == fn(fn(a, b), c)``. Differentiable (reverse and forward mode).

    With ``reverse=True`` the scan runs from the end: for ``elems = [..., x, y, z]`` the
    result is ``[..., fn(fn(z, y), x), fn(z, y), z]`` (JAX's definition: the later
    element is ``fn``'s first argument).

    Differences from ``tfp.math.scan_associative``: JAX pytree rules, ``reverse``, the
    length along ``axis`` must be known when traced (as in JAX; tfp also accepts a length
    known only at run time, which XLA cannot compile), and ``fn``'s output is checked.

    Args:
      fn: ``fn(a, b) -> c`` where ``a``, ``b`` and ``c`` have the structure of ``elems``
        and every leaf keeps its ``axis`` dimension (of any length): ``fn`` combines
        elementwise along it, for example ``lambda a, b: a + b`` or a batched matmul.
        ``c`` must have ``a``'s structure, dtypes and shapes.
      elems: a pytree of tensors with equal sizes along ``axis``.
      reverse: scan from the last element to the first.
      axis: the scanned axis (negative counts from the end).

    Returns:
      A pytree like ``elems``: element ``k`` along ``axis`` combines elements ``0..k``.

    Example:

    >>> import tensorflow as tf, tfscan
    >>> tfscan.associative_scan(lambda a, b: a + b, tf.range(5)).numpy().tolist()
    [0, 1, 3, 6, 10]
    >>> tfscan.associative_scan(lambda a, b: a + b, tf.range(4), reverse=True).numpy().tolist()
    [6, 6, 5, 3]
    >>> # h_t = a_t * h_{t-1} + b_t: compose affine maps (a1, b1) then (a2, b2).
    >>> compose = lambda p, q: (p[0] * q[0], q[0] * p[1] + q[1])
    >>> a, b = tf.constant([0.5, 2.0, 1.0]), tf.constant([1.0, 1.0, 3.0])
    >>> tfscan.associative_scan(compose, (a, b))[1].numpy().tolist()
    [1.0, 3.0, 6.0]
    """
    if not callable(fn):
        raise TypeError(f"associative_scan: fn argument should be callable as fn(a, b) -> c, got {fn!r:.60}.")
    reverse = _checks.check_reverse(reverse, "associative_scan")
    leaves, paths, tree = _control.to_tensors("associative_scan", elems, "elems")
    if not leaves:
        raise ValueError("associative_scan: elems has no leaves (it is None or an empty container); "
                         "pass at least one tensor.")
    axis = _canonical_axis(axis, leaves, paths)
    _check_lengths(leaves, paths, axis)
    if _context.jit_disabled():
        return _tree.unflatten(tree, _scan(fn, tree, paths, leaves, reverse, axis))
    key = (tree, _control.specs(leaves), reverse, axis)

    def make_build(meta: dict):
        return lambda *xs: _scan(fn, tree, paths, list(xs), reverse, axis)

    return _tree.unflatten(tree, _control.run("associative_scan", [fn], key, make_build, leaves)[0])


def _canonical_axis(axis: Any, leaves: list, paths: list) -> int:
    """``axis`` made non-negative with the first leaf's rank (as JAX), checked for every leaf."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"associative_scan: axis must be a Python int, got {type(axis).__name__} {axis!r:.40}.")
    for x, p in zip(leaves, paths):
        if x.shape.rank is None:
            raise ValueError(f"associative_scan: elems leaf {p} has unknown rank; its shape must be "
                             "known when associative_scan is traced.")
    canonical = int(axis) + leaves[0].shape.rank if axis < 0 else int(axis)
    for x, p in zip(leaves, paths):
        if not 0 <= canonical < x.shape.rank:
            raise ValueError(f"associative_scan: axis {axis} is out of bounds for elems leaf {p} of "
                             f"shape {x.shape} (rank {x.shape.rank}).")
    return canonical


def _check_lengths(leaves: list, paths: list, axis: int) -> None:
    sizes = [(p, x.shape[axis]) for x, p in zip(leaves, paths)]
    for p, n in sizes:
        if n is None:
            raise NotImplementedError(
                f"associative_scan: elems leaf {p} has a size along axis {axis} known only at run "
                "time; the recursion depth is fixed when traced (as in JAX), so give the "
                "tf.function input a static size along that axis.")
    if len({n for _, n in sizes}) > 1:
        listing = ", ".join(f"{p} has size {n}" for p, n in sizes)
        raise ValueError(f"associative_scan: every leaf of elems must have the same size along axis "
                         f"{axis}, but {listing}.")


def _scan(fn: Callable, tree: _tree.TreeDef, paths: list, leaves: list, reverse: bool, axis: int) -> list:
    specs = _control.specs(leaves)

    def flat_fn(a, b):
        out = fn(_tree.unflatten(tree, list(a)), _tree.unflatten(tree, list(b)))
        return _check_output(out, tree, paths, specs, list(a), axis)

    if reverse:
        leaves = [tf.reverse(x, [axis]) for x in leaves]
    out = tfp.math.scan_associative(flat_fn, list(leaves), axis=axis)
    if reverse:
        out = [tf.reverse(x, [axis]) for x in out]
    return list(out)


def _check_output(out: Any, tree: _tree.TreeDef, paths: list, specs: tuple, a: list, axis: int) -> list:
    leaves, out_paths, out_tree = _tree.flatten_with_paths(out, "elems")
    if out_tree != tree:
        path, want, got = _control.first_difference(tree, out_tree, "elems")
        raise TypeError(
            f"associative_scan: fn must return a pytree with the structure of elems ({tree}), but it "
            f"returned {out_tree}: at {path} elems has {want} and fn's output has {got}.")
    result = []
    for v, p, s, x in zip(leaves, paths, specs, a):
        t = _checks.output_tensor(v, p, "associative_scan", "fn", s.dtype)
        if t.dtype != s.dtype:
            raise TypeError(f"associative_scan: fn returned dtype {t.dtype.name} for {p}, but elems "
                            f"has dtype {s.dtype.name} there. fn must preserve dtypes (use tf.cast).")
        if t.shape.rank != x.shape.rank or not t.shape.is_compatible_with(x.shape):
            raise TypeError(f"associative_scan: fn returned shape {t.shape} for {p}, but its inputs "
                            f"there have shape {x.shape} (elems leaf shape {s.shape}, scanned along "
                            f"axis {axis}). fn must combine elementwise along axis {axis} and keep "
                            "the shapes of its inputs.")
        result.append(t)
    return result
