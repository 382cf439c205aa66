"""``map`` with ``jax.lax.map``'s signature and semantics.

``map`` is a ``tfscan.scan`` with no carry (one step per element, so memory stays that
of one call of ``f``); with ``batch_size`` each step maps a chunk of elements with
:func:`tfscan.vmap`, and the remainder (when the length is not a multiple) is one more
vectorized call, as in JAX.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from tfscan._core import checks as _checks
from tfscan._core import tree as _tree
from tfscan._lax import control as _control
from tfscan._scan.scan import scan

__all__ = ["map"]


def map(f: Callable[[Any], Any], xs: Any, *, batch_size: int | None = None) -> Any:  # noqa: A001
    """Map ``f`` over the leading axis of ``xs``, as ``jax.lax.map``.

    Semantically ``stack([f(x) for x in xs])`` for every leaf, run as a compiled
    ``tfscan.scan`` (one step per element, so memory stays that of one call of ``f``).
    With ``batch_size=b`` each scan step applies ``f`` to ``b`` elements at once,
    vectorized with :func:`tfscan.vmap`; when the length is not a multiple of ``b``
    the remainder is one more vectorized call. ``batch_size=0`` (or one at least the
    length) vectorizes everything in one call. Differentiable like scan.

    Args:
      f: ``f(x) -> y`` for one slice ``x`` of ``xs``; ``y`` may be any pytree (``None``
        leaves allowed).
      xs: a pytree of tensors with a common leading axis.
      batch_size: ``None`` (sequential), or a non-negative int.

    Returns:
      ``f``'s outputs stacked along a new leading axis.

    Differences from JAX: ``batch_size`` needs the leading size of ``xs`` known when traced.

    Example:

    >>> import tensorflow as tf, tfscan
    >>> xs = tf.reshape(tf.range(10.0), [5, 2])
    >>> tfscan.map(lambda x: tf.reduce_sum(x), xs).numpy().tolist()
    [1.0, 5.0, 9.0, 13.0, 17.0]
    >>> tfscan.map(lambda x: x[0] * x[1], xs, batch_size=2).numpy().tolist()
    [0.0, 6.0, 20.0, 42.0, 72.0]
    """
    if not callable(f):
        raise TypeError(f"map: f argument should be callable as f(x) -> y, got {f!r:.60}.")
    if batch_size is None:
        return scan(_map_step(f), (), xs)[1]
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"map: batch_size must be None or a non-negative int, got "
                        f"{type(batch_size).__name__} {batch_size!r:.40}.")
    if batch_size < 0:
        raise ValueError(f"map: batch_size must be None or a non-negative int, got {batch_size}.")
    leaves, paths, tree = _control.to_tensors("map", xs, "xs")
    if not leaves:
        return scan(_map_step(f), (), xs)[1]  # scan's error: nothing to map over
    length, _ = _checks.scan_length(leaves, paths, None)
    if length is None:
        raise ValueError(f"map: batch_size needs the leading axis of xs known when map is traced, but "
                         f"{paths[0]} has shape {leaves[0].shape}. Use batch_size=None, or give the "
                         "tf.function a static leading dimension.")
    if length == 0:
        return scan(_map_step(f), (), xs)[1]
    num_batches, remainder = divmod(length, batch_size) if batch_size else (0, length)
    step = _map_step(_vectorized(f, tree))
    parts = []
    if num_batches:
        chunks = [tf.reshape(x[: num_batches * batch_size], [num_batches, batch_size] + x.shape[1:].as_list()
                             if x.shape[1:].is_fully_defined() else
                             tf.concat([[num_batches, batch_size], tf.shape(x)[1:]], 0)) for x in leaves]
        parts.append(scan(step, (), chunks)[1])
    if remainder:
        rest = [x[num_batches * batch_size:][None] for x in leaves]
        parts.append(scan(step, (), rest)[1])
    out_leaves = [tf.concat([_merge_leading(p) for p in group], 0)
                  for group in zip(*[_tree.flatten(p)[0] for p in parts])]
    return _tree.unflatten(_tree.flatten(parts[0])[1], out_leaves)


def _merge_leading(t: tf.Tensor) -> tf.Tensor:
    """``[chunks, chunk, ...] -> [chunks * chunk, ...]``."""
    rest = t.shape[2:]
    return tf.reshape(t, [-1] + rest.as_list() if rest.is_fully_defined() else
                      tf.concat([[-1], tf.shape(t)[2:]], 0))


def _map_step(f: Callable) -> Callable:
    def step(_, x):
        return (), f(x)
    return step


def _vectorized(f: Callable, xs_tree: _tree.TreeDef) -> Callable:
    """``f`` on a chunk: the flat leaves of a batch of ``xs`` (any pytree) -> pytree of outputs,
    batched by :func:`tfscan.vmap` (as JAX's ``map`` uses ``vmap``: a scan, a conditional or
    a loop in ``f`` is batched by tfscan's own rules and keeps its gradient)."""
    from tfscan._transforms.vmap import vmap  # the transforms import the loops: late

    def vf(chunk):
        return vmap(lambda elems: f(_tree.unflatten(xs_tree, list(elems))))(list(chunk))
    return vf
