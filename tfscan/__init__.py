"""tfscan: ``jax.lax.scan``'s contract for TensorFlow, always compiled, with a linear-time gradient.

>>> import tensorflow as tf, tfscan
>>> carry, ys = tfscan.scan(lambda c, x: (c + x, c + x), 0.0, tf.range(1.0, 6.0))
>>> float(carry), ys.numpy().tolist()
(15.0, [1.0, 3.0, 6.0, 10.0, 15.0])

The public API: :func:`scan`; the transformations :func:`grad`, :func:`value_and_grad`,
:func:`jit`, :func:`vmap`; scan's siblings :func:`fori_loop`, :func:`while_loop`,
:func:`map`, :func:`associative_scan`, :func:`cond`, :func:`switch`; :func:`disable_jit`;
and Keras layers in ``tfscan.keras`` (loaded on first use).
"""

import importlib as _importlib

import tensorflow as _tensorflow

from tfscan._assoc import associative_scan
from tfscan._branch import cond, switch
from tfscan._context import disable_jit
from tfscan._grad import grad, value_and_grad
from tfscan._jit import jit
from tfscan._loops import fori_loop, map, while_loop
from tfscan._scan import scan
from tfscan._vmap import vmap

# Called inside a tf.function (AutoGraph on, the default), tfscan's own code must run as
# written: AutoGraph would otherwise convert every tfscan function it reaches, each trace.
(scan, grad, value_and_grad, jit, vmap, fori_loop, while_loop, map, associative_scan, cond, switch) = (
    _tensorflow.autograph.experimental.do_not_convert(f) for f in
    (scan, grad, value_and_grad, jit, vmap, fori_loop, while_loop, map, associative_scan, cond, switch))

__all__ = [
    "scan",
    "grad", "value_and_grad", "jit", "vmap",
    "fori_loop", "while_loop", "map", "associative_scan", "cond", "switch",
    "disable_jit",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "keras":  # Keras layers load on first use
        return _importlib.import_module("tfscan.keras")
    raise AttributeError(f"module 'tfscan' has no attribute {name!r}")
