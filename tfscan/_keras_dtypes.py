"""The dtype a :mod:`tfscan.keras` layer's time loop computes in (its ``loop_dtype``).

Keras' own recurrent layers under a ``mixed_bfloat16``/``mixed_float16`` policy run every op
in the 16-bit dtype (TensorFlow's kernels round after each op). XLA:CPU has no 16-bit
arithmetic: it emits each 16-bit op as float32 math between converts, which adds fusions
(each compiled as its own LLVM module) and per-step work, and its results are no nearer
Keras' than a float32 loop's. So on CPU a mixed layer's loop computes in float32 and its
outputs are rounded once to the policy's dtype; on a GPU or TPU it stays in 16 bits.

The dtype is switched by swapping the cells' public ``dtype_policy`` for the duration of
one step trace (:class:`ComputingIn`): Keras then reads the float32 weights directly and
casts the step's inputs to the loop dtype, for any cell, stacked cells included. The swap
is not thread-safe: one layer must not be traced from two threads at once
(``MirroredStrategy`` runs its replica functions one at a time: ``run_concurrently = False``
in TensorFlow 2.21's ``mirrored_run``).

>>> import keras
>>> cell = keras.layers.GRUCell(3, dtype="mixed_bfloat16")
>>> loop_dtype_for(cell, None)  # no GPU or TPU here
'float32'
>>> with ComputingIn(cell, "float32"):
...     cell.compute_dtype
'float32'
>>> cell.compute_dtype
'bfloat16'
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

HALF = ("float16", "bfloat16")
LOOP_DTYPES = ("float32", *HALF)


def cells(cell: Any) -> list:
    """``cell`` and, for a ``StackedRNNCells``, every cell inside it (recursively)."""
    inner = getattr(cell, "cells", None) if isinstance(cell, keras.layers.StackedRNNCells) else None
    return [cell] + [c for sub in (inner or []) for c in cells(sub)]


def on_cpu_only() -> bool:
    """Whether XLA compiles for CPU here: no GPU or TPU device is visible."""
    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def plain_f32_variables(layer: Any) -> bool:
    """Whether ``layer``'s policy is a plain ``DTypePolicy`` with float32 variables (no
    quantization, no per-layer policy map): one whose compute dtype can be swapped."""
    policy = getattr(layer, "dtype_policy", None)
    return type(policy) is keras.DTypePolicy and policy.variable_dtype == "float32"


def mixed_half(layer: Any) -> bool:
    """Whether ``layer``'s policy is a plain ``mixed_float16``/``mixed_bfloat16`` one."""
    return plain_f32_variables(layer) and layer.compute_dtype in HALF


def loop_dtype_for(cell: Any, requested: str | None) -> str:
    """The dtype of the loop's arithmetic for ``cell`` given a layer's ``loop_dtype``.

    ``None``: ``"float32"`` for a mixed 16-bit cell with no GPU or TPU visible, else the
    cell's compute dtype. A requested dtype other than the cell's needs float32 variables.
    """
    cell_dtype = cell.compute_dtype
    if requested is None:
        return "float32" if mixed_half(cell) and on_cpu_only() else cell_dtype
    if requested != cell_dtype and not all(plain_f32_variables(c) for c in cells(cell)):
        raise ValueError(f"tfscan.keras.Scan: loop_dtype={requested!r} needs cells with float32 "
                         f"variables under a plain Keras dtype policy; the cell "
                         f"{type(cell).__name__} has policy {cell.dtype_policy!r}.")
    return requested


class ComputingIn:
    """Within it, the cells (with float32 variables) compute in ``dtype``: their
    ``dtype_policy`` is swapped to ``"float32"`` or ``"mixed_<dtype>"``, then restored."""

    def __init__(self, cell: Any, dtype: str):
        self.cells = [c for c in cells(cell) if plain_f32_variables(c) and c.compute_dtype != dtype]
        self.policy = "float32" if dtype == "float32" else f"mixed_{dtype}"

    def __enter__(self) -> None:
        self.saved = [c.dtype_policy for c in self.cells]
        for c in self.cells:
            c.dtype_policy = self.policy

    def __exit__(self, *exc) -> None:
        for c, policy in zip(self.cells, self.saved):
            c.dtype_policy = policy
