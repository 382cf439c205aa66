"""The floors of a graph-mode gradient row (issue 14, item 2): what TensorFlow cannot go below.

Row 2c asks tfscan's tape gradient inside a plain ``tf.function`` to be within 1.5x JAX's
whole compiled gradient. Two floors stand next to it in the same run:

- ``tf.function.empty``: a ``tf.function`` (no XLA) that returns its first argument, called
  with the same arguments: the price of entering a ``tf.function`` at all;
- ``handwritten@xla``: the light step's value and gradient w.r.t. ``a`` written by hand as one
  XLA program (``tf.function(jit_compile=True)``: a forward ``tf.while_loop`` keeping each
  carry in a ``TensorArray``, a backward one applying the step's derivative) -- the cheapest
  compiled program TensorFlow can run for it, one ``XlaLaunch`` with no tape.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

__all__ = ["KEYS", "UNCHECKED", "build"]

KEYS = ("tf.function.empty", "handwritten@xla")
UNCHECKED = frozenset({"tf.function.empty"})  # returns its argument: no value to check


def build(key: str, problem: Any, data: dict) -> Callable[[], Any]:
    """A zero-argument callable for floor ``key`` on the light step's ``data``."""
    a = tf.constant(data["params"]["a"])
    init, xs = tf.constant(data["init"]), tf.constant(data["xs"])
    if key == "tf.function.empty":
        fn = tf.function(lambda params, init, xs: params["a"], autograph=False)
        params = {"a": a}
        return lambda: fn(params, init, xs)
    if key != "handwritten@xla" or problem.name != "light-params":
        raise KeyError(f"no floor {key!r} for workload problem {problem.name!r}")
    fn = tf.function(_light_value_and_grad_a, jit_compile=True, autograph=False)
    return lambda: (fn(a, init, xs),)


def _light_value_and_grad_a(a: tf.Tensor, init: tf.Tensor, xs: tf.Tensor) -> tf.Tensor:
    """``d sum(c_1..c_T) / da`` for ``c_t = tanh(a c_{t-1} + x_t)``, by hand (returns the gradient;
    the value, ``sum(c)``, is computed by the same forward loop and dropped by XLA when unread)."""
    n = xs.shape[0]
    cs = tf.TensorArray(xs.dtype, size=n + 1, element_shape=[]).write(0, init)

    def fwd(t, c, cs):
        c = tf.tanh(a * c + xs[t])
        return t + 1, c, cs.write(t + 1, c)
    _, _, cs = tf.while_loop(lambda t, c, cs: t < n, fwd, (0, init, cs), maximum_iterations=n)

    def bwd(t, dc, da):  # t = n-1 .. 0; dc: d loss / d c_{t+1} from the steps after it
        c_new, c_old = cs.read(t + 1), cs.read(t)
        dz = (dc + 1.0) * (1.0 - c_new * c_new)
        return t - 1, dz * a, da + dz * c_old
    _, _, da = tf.while_loop(lambda t, dc, da: t >= 0, bwd, (n - 1, tf.zeros_like(init), tf.zeros_like(a)),
                             maximum_iterations=n)
    return da
