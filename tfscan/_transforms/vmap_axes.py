"""``vmap``'s axis specifications: ``in_axes``/``out_axes`` checked and broadcast over nests.

``jax.vmap`` accepts an int, ``None`` or a nest that is a tree prefix of the argument
(or output); this module checks such a specification when ``vmap`` is called
(:func:`check_axes_spec`), gives every leaf its axis when the function is called
(:func:`broadcast_axes`, with the leaf's path for errors), turns each input leaf into a
:class:`Leaf` (mapped tensor, shared tensor or static Python value, :func:`make_leaf`)
and finds the one batch size of the mapped axes (:func:`batch_size`). Every error names
``vmap``, the argument's path and the fix, as JAX's messages do. It also holds the two
transposes that move a mapped axis to the front and back.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from tfscan._core import tree as _tree

__all__ = []  # private module


def is_axis(a: Any) -> bool:
    return a is None or (isinstance(a, numbers.Integral) and not isinstance(a, (bool, np.bool_)))


def check_axes_spec(spec: Any, what: str, path: str = "") -> None:
    if is_axis(spec):
        return
    node = _tree._children(spec)
    if node is None:
        raise TypeError(
            f"vmap: {what} must be an int, None, or a tuple/list/dict of them matching the "
            f"{'arguments' if what == 'in_axes' else 'outputs'}, got {type(spec).__name__} "
            f"{spec!r:.80}{' at ' + what + path if path else ''}.")
    for suffix, child in node[2]:
        check_axes_spec(child, what, path + suffix)


def broadcast_axes(spec: Any, value: Any, what: str, spec_path: str, value_path: str) -> list:
    """One axis per leaf of ``value`` (in flattening order) from the prefix tree ``spec``."""
    if is_axis(spec):
        return [spec] * len(_tree.flatten(value)[0])
    s_kind, s_aux, s_items = _tree._children(spec)
    v_node = _tree._children(value)
    if v_node is None or v_node[0] != s_kind or v_node[1] != s_aux or len(v_node[2]) != len(s_items):
        v_desc = str(_tree.flatten(value)[1]) if v_node is not None else f"a leaf ({describe(value)})"
        raise ValueError(
            f"vmap: {what} specification must be a tree prefix of the corresponding value: "
            f"{spec_path} is {short(spec)} but {value_path} has structure {v_desc}. Give {spec_path} "
            "an int or None for the whole value, or a nest with the value's structure.")
    out: list = []
    for (suffix, s_child), (_, v_child) in zip(s_items, v_node[2]):
        out.extend(broadcast_axes(s_child, v_child, what, spec_path + suffix, value_path + suffix))
    return out


def short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(x: Any) -> str:
    if isinstance(x, (tf.Tensor, tf.Variable, np.ndarray)):
        return f"{tf.as_dtype(x.dtype).name}{list(x.shape)}"
    return f"{type(x).__name__} {short(x)}"


def arg_names(fun: Callable) -> list[str] | None:
    try:
        params = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):
        return None
    names = []
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            names.append(None)  # *args: positional index from here on
            break
    return names


def arg_label(names: list[str] | None, i: int) -> str:
    if names and i < len(names) and names[i] is not None:
        return names[i]
    return f"args[{i}]"


class Leaf:
    """One input leaf: its path, its mapped axis (or None), and what is passed."""

    __slots__ = ("path", "axis", "value", "kind")

    def __init__(self, path: str, axis: int | None, value: Any, kind: str):
        self.path, self.axis, self.value, self.kind = path, axis, value, kind  # kind: mapped/tensor/static


def make_leaf(path: str, axis: int | None, value: Any) -> Leaf:
    if axis is None:
        if isinstance(value, (tf.Tensor, tf.Variable, np.ndarray)) or _is_tensor_like(value):
            if isinstance(value, tf.Variable):
                return Leaf(path, None, value, "static")  # read inside, like a closed-over variable
            return Leaf(path, None, tf.convert_to_tensor(value), "tensor")
        return Leaf(path, None, value, "static")
    try:
        t = tf.convert_to_tensor(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"vmap: argument {path} is mapped (axis {axis}) but is {type(value).__name__} "
            f"{short(value)}, not a tensor. Pass a tensor or NumPy array, or use None in in_axes for "
            "it.") from None
    if t.dtype in (tf.string, tf.resource, tf.variant):
        raise TypeError(f"vmap: argument {path} is mapped (axis {axis}) but is a {t.dtype.name} tensor; only "
                        "numeric and bool tensors can be mapped. Use None in in_axes for it.")
    rank = t.shape.rank
    if rank is None:
        raise ValueError(f"vmap: argument {path} has unknown rank; vmap needs the rank to place the "
                         "mapped axis.")
    if not -rank <= axis < rank:
        raise ValueError(
            f"vmap was requested to map argument {path} along axis {axis}, which implies that its rank "
            f"should be at least {axis + 1 if axis >= 0 else -axis}, but it is only {rank} (its type is "
            f"{describe(t)}). Fix in_axes for {path}.")
    return Leaf(path, axis % rank, t, "mapped")


def _is_tensor_like(x: Any) -> bool:
    return hasattr(x, "__tf_tensor__")


def batch_size(leaves: Sequence[Leaf], axis_size: int | None) -> Any:
    mapped = [lf for lf in leaves if lf.kind == "mapped"]
    if not mapped:
        if axis_size is None:
            raise ValueError(
                "vmap must have at least one non-None value in in_axes (or be given axis_size): no "
                "argument is mapped, so the batch size is unknown.")
        return axis_size
    sizes = [(lf, lf.value.shape[lf.axis]) for lf in mapped]
    known = [(lf, n) for lf, n in sizes if n is not None]
    if axis_size is not None:
        known = [(None, axis_size)] + known
    if len({n for _, n in known}) > 1:
        lines = [f"  * axis_size={n}" if lf is None else
                 f"  * axis {lf.axis} of argument {lf.path} of type {describe(lf.value)} has size {n}"
                 for lf, n in known]
        raise ValueError("vmap got inconsistent sizes for the array axes to be mapped:\n" + "\n".join(lines)
                         + "\nEvery mapped axis must have the same size.")
    if known:
        return int(known[0][1])
    first = mapped[0]
    return tf.shape(first.value, out_type=tf.int32)[first.axis]


def move_to_front(t: tf.Tensor, axis: int) -> tf.Tensor:
    if axis == 0:
        return t
    rank = t.shape.rank
    return tf.transpose(t, [axis] + [d for d in range(rank) if d != axis])


def move_from_front(t: tf.Tensor, axis: int) -> tf.Tensor:
    if axis == 0:
        return t
    rank = t.shape.rank
    perm = list(range(1, rank))
    perm.insert(axis, 0)
    return tf.transpose(t, perm)


def drop_axis(shape: tf.TensorShape, axis: int) -> tf.TensorShape:
    dims = shape.as_list()
    return tf.TensorShape(dims[:axis] + dims[axis + 1:])
