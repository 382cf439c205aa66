"""``grad`` and ``value_and_grad`` with JAX's signatures over pytrees, compiled by default."""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, Sequence

import tensorflow as tf

from tfscan._core import checks as _checks
from tfscan._core import tree as _tree
from tfscan._scan.plan import is_float
from tfscan._transforms import jit as _jit

__all__ = ["grad", "value_and_grad"]


def value_and_grad(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
                   *, jit: bool = True) -> Callable:
    """``fun``'s value and its gradient w.r.t. the arguments ``argnums``, like ``jax.value_and_grad``.

    Args:
      fun: a function of pytrees of tensors returning a scalar float (or
        ``(scalar, aux)`` with ``has_aux=True``).
      argnums: an int, or a tuple of ints; the gradient has the structure of that
        argument (or a tuple of them).
      has_aux: ``fun`` returns ``(value, aux)``; ``aux`` is returned unchanged.
      jit: compile the whole computation with XLA (``tf.function(jit_compile=True)``);
        ``False`` runs it eagerly.

    Returns:
      A function returning ``(value, grads)`` or ``((value, aux), grads)``. It takes
      ``fun``'s arguments; keyword arguments are passed on, not differentiated (as in JAX).
      For a complex input the gradient is JAX's, the conjugate of a ``GradientTape``'s.

    Example:

    >>> import tensorflow as tf, tfscan
    >>> def loss(w, xs):
    ...     carry, _ = tfscan.scan(lambda c, x: (c * w + x, None), 0.0, xs)
    ...     return carry
    >>> value, g = tfscan.value_and_grad(loss)(2.0, tf.constant([1.0, 1.0, 1.0]))
    >>> float(value), float(g)  # c = w^2 + w + 1 -> dc/dw = 2w + 1
    (7.0, 5.0)
    """
    return _differentiated(fun, argnums, has_aux, jit, with_value=True)


def _differentiated(fun: Callable, argnums: int | Sequence[int], has_aux: bool, jit: bool,
                    with_value: bool) -> Callable:
    """``value_and_grad`` (``with_value``) or ``grad``: a function returning ``(out, grads)``, where
    ``out`` is ``(value, aux)``, ``value`` or, without ``with_value``, ``(None, aux)`` / ``None``.
    Without the value the compiled program does not return it, so XLA never computes what
    only the value reads (as ``jax.grad`` never does): a loss's reduction, say."""
    single = isinstance(argnums, numbers.Integral)
    nums = (int(argnums),) if single else tuple(argnums)
    if not nums or not all(isinstance(i, numbers.Integral) for i in nums):
        raise TypeError(f"value_and_grad: argnums must be an int or a non-empty tuple of ints, got {argnums!r}.")

    def traced(*args, **kwargs):
        args = list(args)
        leaves_of = {}
        with tf.GradientTape() as tape:
            for i in nums:
                leaves, treedef = _tree.flatten(args[i])
                for leaf in leaves:
                    tape.watch(leaf)
                leaves_of[i] = (leaves, treedef)
            out = fun(*args, **kwargs)
            value, aux = _split_aux(out, has_aux)
        flat = [leaf for i in nums for leaf in leaves_of[i][0]]
        flat_grads = tape.gradient(value, flat, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads = []
        for i in nums:
            leaves, treedef = leaves_of[i]
            g, flat_grads = flat_grads[: len(leaves)], flat_grads[len(leaves):]
            grads.append(_tree.unflatten(treedef, [_jax_convention(tf.convert_to_tensor(t)) for t in g]))
        g = grads[0] if single else tuple(grads)
        value = value if with_value else None
        return ((value, aux) if has_aux else value), g

    compiled: dict = {}  # static argument positions -> jitted function

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        for i in nums:
            if not -len(args) <= i < len(args):
                raise ValueError(f"value_and_grad: argnums={argnums!r} refers to argument {i}, but "
                                 f"the function was called with {len(args)} positional arguments.")
        wrt = [i in nums or i - len(args) in nums for i in range(len(args))]
        args = [_as_tensors(a, f"args[{i}]", differentiable=d) for i, (a, d) in enumerate(zip(args, wrt))]
        if not jit:
            return traced(*args, **kwargs)
        # Arguments not differentiated (keyword arguments never are, as in JAX) that hold no
        # tensor and are hashable (a Python scale, a config tuple) stay Python values: static,
        # as they would be closed over. Others (a dict of numbers) are passed as tensors.
        static = tuple(i for i, a in enumerate(args) if not wrt[i] and _static(a))
        names = tuple(sorted(k for k, v in kwargs.items() if _static(v)))
        if (static, names) not in compiled:
            compiled[static, names] = _jit.jit(traced, static_argnums=static, static_argnames=names)
        return compiled[static, names](*args, **kwargs)

    return wrapper


def grad(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
         *, jit: bool = True) -> Callable:
    """The gradient of a scalar ``fun`` w.r.t. ``argnums``, like ``jax.grad``.

    Example:

    >>> import tensorflow as tf, tfscan
    >>> def loss(params, xs):
    ...     h, hs = tfscan.scan(lambda h, x: (tf.tanh(params["w"] * h + x), h), 0.0, xs)
    ...     return tf.reduce_sum(hs) + h
    >>> g = tfscan.grad(loss)({"w": 0.5}, tf.ones(4))
    >>> sorted(g), g["w"].dtype.name
    (['w'], 'float32')
    """
    vg = _differentiated(fun, argnums, has_aux, jit, with_value=False)

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        out, g = vg(*args, **kwargs)
        return (g, out[1]) if has_aux else g

    return wrapper


def _static(arg: Any) -> bool:
    """A Python value the compiled program bakes in: no tensor in it, and hashable."""
    if any(isinstance(v, (tf.Tensor, tf.Variable)) or hasattr(v, "__array__") for v in _tree.flatten(arg)[0]):
        return False
    try:
        hash(arg)
    except TypeError:
        return False
    return True


def _jax_convention(g: tf.Tensor) -> tf.Tensor:
    """A gradient as ``jax.grad`` gives it: for a complex input, the conjugate of TensorFlow's
    (TensorFlow's tape returns ``df/dx + i df/dy`` for ``z = x + iy``; JAX ``df/dx - i df/dy``)."""
    return tf.math.conj(g) if g.dtype.is_complex else g


def _split_aux(out: Any, has_aux: bool):
    if has_aux:
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError("value_and_grad: with has_aux=True, fun must return a pair (value, aux), "
                            f"got {type(out).__name__}.")
        value, aux = out
    else:
        value, aux = out, None
    value = tf.convert_to_tensor(value)
    if value.shape.rank != 0:
        raise TypeError(f"grad: fun must return a scalar, but its output has shape {value.shape}. "
                        "Reduce it (e.g. tf.reduce_sum) or use has_aux=True for extra outputs.")
    if value.dtype.is_complex:
        raise TypeError(f"grad requires real-valued outputs, but fun returned {value.dtype.name} (as "
                        "jax.grad). Differentiate tf.math.real or tf.abs of it, or each part apart.")
    if not is_float(value.dtype):
        raise TypeError(f"grad: fun must return a float scalar, got dtype {value.dtype.name}.")
    return value, aux


def _as_tensors(arg: Any, root: str, differentiable: bool) -> Any:
    leaves, paths, treedef = _tree.flatten_with_paths(arg, root)
    out = []
    for leaf, path in zip(leaves, paths):
        if isinstance(leaf, (tf.Tensor, tf.Variable)) or not differentiable:
            out.append(leaf)  # arguments not differentiated pass through (Python values stay static)
            continue
        out.append(_checks.to_tensors([leaf], [path], "grad")[0])
    if differentiable:
        for t, path in zip(out, paths):
            if not is_float(tf.as_dtype(t.dtype)):
                raise TypeError(
                    f"grad requires float or complex inputs, but {path} has dtype {t.dtype.name}. "
                    "Cast it to a float dtype, or leave it out of argnums.")
    return _tree.unflatten(treedef, out)

