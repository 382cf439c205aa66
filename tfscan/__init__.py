"""tfscan: ``jax.lax.scan``'s contract for TensorFlow, always compiled, with a linear-time gradient."""

from tfscan._context import disable_jit
from tfscan._grad import grad, value_and_grad
from tfscan._scan import scan

__all__ = ["scan", "disable_jit", "grad", "value_and_grad"]
__version__ = "0.1.0"
