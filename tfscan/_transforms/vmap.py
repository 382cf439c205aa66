"""``vmap``: JAX's vectorizing map, by ``pfor`` with tfscan's batching rules, compiled by XLA.

The function is traced once per example (on slices without the batch axis), and
TensorFlow's ``pfor`` converter rewrites that graph into one on the whole batch; a
scan inside becomes one tfscan scan of the batched step (the scan's batching rule,
``scan_batching``), other loops one ``While`` over the batched carry (``batching``).
The result runs as one XLA computation. Its gradient, when every loop in it is such a
scan, is TensorFlow's gradient of the batched program (in a graph): one batched
backward loop reading the residuals the batched forward loop saved, as in JAX.
Otherwise (an eager tape, a variable read inside, another loop) it is the vmapped
per-example gradient (``grad(vmap(f)) == vmap(vjp(f))`` summed where an input is
shared), which recomputes each example's forward pass.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from tfscan import _tf
from tfscan._core import cache as _cache
from tfscan._core import checks as _checks
from tfscan._core import context as _context
from tfscan._core import tree as _tree
from tfscan._tf import record
from tfscan._transforms import vmap_axes as _axes
from tfscan._transforms import vmap_gradient as _gradient
from tfscan._transforms import vmap_program as _program

__all__ = ["vmap"]


def vmap(fun: Callable[..., Any], in_axes: Any = 0, out_axes: Any = 0,
         axis_size: int | None = None) -> Callable[..., Any]:
    """Vectorize ``fun`` over an axis of its inputs, as ``jax.vmap``.

    ``vmap(f)(xs)`` equals stacking ``f(x)`` over the slices ``x`` of ``xs``, computed
    as one batched XLA program: every op of ``f`` is rewritten to work on the whole
    batch, and a :func:`tfscan.scan` inside ``f`` becomes a single loop over a batched
    carry (it is not run once per example).

    Args:
      fun: the function to vectorize; it takes and returns nests (tuples, lists,
        dicts, namedtuples; ``None`` is an empty subtree) of tensors.
      in_axes: which axis of each positional argument is mapped: an int (negative
        counts from the end), ``None`` (the argument is shared by every example and
        passed as is), or a tuple with one entry per positional argument whose
        entries may be nests that are tree prefixes of the argument. Keyword
        arguments are always mapped over their axis 0.
      out_axes: where the batch axis goes in each output: an int, ``None`` (the
        output must not depend on the mapped inputs) or a nest that is a tree prefix
        of the output.
      axis_size: the batch size; needed only when no input is mapped.

    Returns:
      The batched function, taking the same arguments as ``fun``.

    Raises:
      ValueError: (when called) mapped axes of different sizes, an axis out of range,
        or ``in_axes``/``out_axes`` that do not match the arguments' structure; the
        message names the argument.

    Example:

    >>> import tensorflow as tf, tfscan
    >>> def cumsum(x):
    ...     return tfscan.scan(lambda c, v: (c + v, c + v), 0.0, x)[1]
    >>> tfscan.vmap(cumsum)(tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])).numpy().tolist()
    [[1.0, 3.0, 6.0], [4.0, 9.0, 15.0]]
    >>> tfscan.vmap(lambda x, w: x * w, in_axes=(1, None))(tf.ones([2, 3]), 2.0).shape
    TensorShape([3, 2])
    """
    if not callable(fun):
        raise TypeError(f"vmap: fun must be callable, got {fun!r:.80}.")
    if isinstance(in_axes, list):
        in_axes = tuple(in_axes)  # as jax.vmap: a list at the top level means a tuple
    if not (_axes.is_axis(in_axes) or type(in_axes) is tuple):
        raise TypeError(
            "vmap: in_axes must be an int, None, or a tuple with one entry per positional argument "
            f"(entries may be nests matching the arguments), got {type(in_axes).__name__} {_axes.short(in_axes)}. "
            f"For one argument, write in_axes=({_axes.short(in_axes)},).")
    _axes.check_axes_spec(in_axes, "in_axes")
    _axes.check_axes_spec(out_axes, "out_axes")
    if axis_size is not None:
        if isinstance(axis_size, (bool, np.bool_)) or not isinstance(axis_size, numbers.Integral) \
                or axis_size < 0:
            raise TypeError(f"vmap: axis_size must be None or a non-negative int, got {axis_size!r}.")
        axis_size = int(axis_size)
    names = _axes.arg_names(fun)

    @functools.wraps(fun, updated=())
    def batched(*args: Any, **kwargs: Any) -> Any:
        return _call(fun, names, in_axes, out_axes, axis_size, args, kwargs)

    return batched


def _call(fun, names, in_axes, out_axes, axis_size, args, kwargs):
    if isinstance(in_axes, tuple) and len(in_axes) != len(args):
        raise ValueError(
            f"vmap: in_axes is a tuple of length {len(in_axes)} but the function was called with "
            f"{len(args)} positional argument{'s' if len(args) != 1 else ''}. in_axes must be an int, "
            "None, or a tuple with one entry per positional argument (keyword arguments are always "
            "mapped over axis 0).")
    # Flatten (args, kwargs) together; compute every leaf's axis with its path for errors.
    leaves: list[_axes.Leaf] = []
    for i, arg in enumerate(args):
        label = _axes.arg_label(names, i)
        spec = in_axes[i] if isinstance(in_axes, tuple) else in_axes
        spec_path = f"in_axes[{i}]" if isinstance(in_axes, tuple) else "in_axes"
        axes = _axes.broadcast_axes(spec, arg, "in_axes", spec_path, label)
        values, paths, _ = _tree.flatten_with_paths(arg, label)
        leaves.extend(_axes.make_leaf(p, a, v) for p, a, v in zip(paths, axes, values))
    for key in sorted(kwargs):
        values, paths, _ = _tree.flatten_with_paths(kwargs[key], key)
        leaves.extend(_axes.make_leaf(p, 0, v) for p, v in zip(paths, values))
    args_tree = _tree.flatten((tuple(args), dict(kwargs)))[1]
    size = _axes.batch_size(leaves, axis_size)
    if _context.jit_disabled() and isinstance(size, int) and size > 0:
        return _python_loop(fun, args_tree, leaves, size, out_axes)

    mapped = [lf.value for lf in leaves if lf.kind == "mapped"]
    shared = [lf.value for lf in leaves if lf.kind == "tensor"]
    # What the traced functions need from this call: no tensor values (they are inputs).
    templates = tuple(_axes.Leaf(lf.path, lf.axis, lf.value if lf.kind == "static" else None, lf.kind) for lf in leaves)
    static_key = tuple((j, _cache.static_key(lf.value)) for j, lf in enumerate(leaves) if lf.kind == "static")
    closure = _cache.closure(fun)
    key = (closure.pinned_key, args_tree, tuple((lf.kind, lf.axis) for lf in leaves), static_key,
           _spec_key(out_axes), axis_size, tuple(_spec(t) for t in mapped + shared))
    make = lambda: _program.Batched(fun, args_tree, templates, size, out_axes, mapped, shared, closure.tensors)  # noqa: E731
    entry, created = _cache.lookup("vmap", key, make)
    if not created and not entry.feed_run.complete and not entry.owner.owns(fun):
        entry = make()  # it read tensors the key cannot see: reuse it only for the same function
        _cache.put("vmap", key, entry)
    # This call's closed-over tensors replace those the traces captured.
    captured = entry.feed_run.values(entry.run.captured_inputs, closure.tensors)
    if _gradient.needs_gradient(mapped + shared + captured, entry) and not _gradient.native_gradient(entry, mapped + shared + captured):
        with record.stop_recording():
            outs = _tf.call_concrete(entry.run, mapped + shared, captured, xla=True)
        outs = _gradient.with_gradient(fun, entry, outs, mapped, shared,
                              entry.feed_pe.values(entry.pe.captured_inputs, closure.tensors))
    elif _context.in_xla_context() and entry.native:  # compiled whole: inline (``Batched.inline``)
        outs = entry.inline(mapped + shared, entry.feed_pe.values(entry.pe.captured_inputs, closure.tensors))
    else:
        outs = _tf.call_concrete(entry.run, mapped + shared, captured, xla=True)
    return _tree.unflatten(entry.out_tree, outs)


def _python_loop(fun, args_tree, leaves, size, out_axes):
    """``disable_jit``: call ``fun`` once per example, eagerly, and stack the results."""
    results = []
    for i in range(size):
        values = [tf.gather(lf.value, i, axis=lf.axis) if lf.kind == "mapped" else lf.value for lf in leaves]
        a, kw = _tree.unflatten(args_tree, values)
        results.append(fun(*a, **kw))
    out_leaves, out_paths, out_tree = _tree.flatten_with_paths(results[0], "output")
    axes = _axes.broadcast_axes(out_axes, results[0], "out_axes", "out_axes", "output")
    per_example = [_tree.flatten(r)[0] for r in results]
    outs = []
    for j, (axis, path) in enumerate(zip(axes, out_paths)):
        column = [_checks.output_tensor(r[j], path, "vmap", "the function") for r in per_example]
        if axis is None:
            outs.append(column[0])
            continue
        rank = column[0].shape.rank + 1
        if not -rank <= axis < rank:
            raise ValueError(f"vmap: out_axes={axis} is out of range for output {path}, which has rank "
                             f"{rank - 1} (so the batch axis can go in [{-rank}, {rank - 1}]).")
        outs.append(tf.stack(column, axis=axis % rank))
    return _tree.unflatten(out_tree, outs)


def _spec(t: tf.Tensor) -> tuple:
    return (tuple(t.shape.as_list()) if t.shape.rank is not None else None, t.dtype)


def _spec_key(spec: Any) -> Any:
    leaves, treedef = _tree.flatten(spec) if not _axes.is_axis(spec) else ([spec], _tree.LEAF)
    return (treedef, tuple(leaves))
