"""tfscan: ``jax.lax.scan``'s contract for TensorFlow, always compiled, with a linear-time gradient."""

from tfscan._context import disable_jit
from tfscan._grad import grad, value_and_grad
from tfscan._scan import scan
from tfscan._assoc import associative_scan
from tfscan._branch import cond, switch
from tfscan._loops import fori_loop, map, while_loop
from tfscan._jit import jit
from tfscan._vmap import vmap

__all__ = ["scan", "disable_jit", "grad", "value_and_grad",
           "fori_loop", "while_loop", "map", "associative_scan", "cond", "switch"]
__all__ += ["vmap", "jit"]
__version__ = "0.1.0"


def __getattr__(name):  # ``tfscan.keras`` (Keras layers) loads on first use
    if name == "keras":
        import importlib
        return importlib.import_module("tfscan.keras")
    raise AttributeError(f"module 'tfscan' has no attribute {name!r}")
