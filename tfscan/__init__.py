"""tfscan: ``jax.lax.scan``'s contract for TensorFlow, always compiled, with a linear-time gradient.

>>> import tensorflow as tf, tfscan
>>> carry, ys = tfscan.scan(lambda c, x: (c + x, c + x), 0.0, tf.range(1.0, 6.0))
>>> float(carry), ys.numpy().tolist()
(15.0, [1.0, 3.0, 6.0, 10.0, 15.0])

The public API: :func:`scan`; the transformations :func:`grad`, :func:`value_and_grad`,
:func:`jit`, :func:`vmap`; scan's siblings :func:`fori_loop`, :func:`while_loop`,
:func:`map`, :func:`associative_scan`, :func:`cond`, :func:`switch`; :func:`disable_jit`;
and Keras layers in ``tfscan.keras``.

``import tfscan`` registers the Keras layers with Keras' serialization once Keras 3 is
loaded (TensorFlow loads it; otherwise on the first ``import keras``), so
``keras.models.load_model`` finds them without ``import tfscan.keras``: Keras only
imports the module a saved class names from its own packages.
"""

import importlib as _importlib
import os as _os
import sys as _sys


def _import_tensorflow(quiet: bool):
    """``import tensorflow``; ``quiet`` (the demo, ``python -m tfscan``) keeps the start-up
    probes TensorFlow's C++ prints before its logging is set up (cuInit on a machine with
    no GPU, oneDNN notes: ``TF_CPP_MIN_LOG_LEVEL`` does not reach them) off the terminal.
    An import error is still raised, with its message."""
    if not quiet:
        return _importlib.import_module("tensorflow")
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # and the messages after set-up
    saved, null = _os.dup(2), _os.open(_os.devnull, _os.O_WRONLY)
    _os.dup2(null, 2)
    try:
        return _importlib.import_module("tensorflow")
    finally:
        _os.dup2(saved, 2)
        _os.close(null)
        _os.close(saved)


_tensorflow = _import_tensorflow(getattr(_sys, "orig_argv", [])[1:3] == ["-m", "tfscan"])
import importlib.abc as _importlib_abc
import importlib.util as _importlib_util


from tfscan._core.context import disable_jit
from tfscan._lax.assoc import associative_scan
from tfscan._lax.branch import cond, switch
from tfscan._lax.fori import fori_loop
from tfscan._lax.loops import while_loop
from tfscan._lax.map import map
from tfscan._scan.scan import scan
from tfscan._transforms.grad import grad, value_and_grad
from tfscan._transforms.jit import jit
from tfscan._transforms.vmap import vmap

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


def _register_keras_layers() -> None:
    try:
        _importlib.import_module("tfscan.keras")  # ~3 ms with Keras loaded; registers the layers
    except ImportError:  # Keras without layers we can register (e.g. Keras 2): nothing to load
        pass


class _OnKerasImport(_importlib_abc.MetaPathFinder):
    """Registers the layers right after the first ``import keras`` (if Keras is not loaded yet)."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        _sys.meta_path.remove(self)
        spec = _importlib_util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _register_keras_layers()
            spec.loader.exec_module = exec_module
        return spec


if "keras.src.saving" in _sys.modules:
    _register_keras_layers()
elif "keras" not in _sys.modules:
    _sys.meta_path.insert(0, _OnKerasImport())
