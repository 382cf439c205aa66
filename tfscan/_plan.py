"""A scan's plan: the step traced once on the flat leaf specs, with its output structure.

Tracing ``f`` on specs (never running it) gives the ys' structure, shapes and dtypes —
so a length-0 scan knows what it would have produced — and checks the carry contract
before any loop is built.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf

from tfscan import _checks, _tree
from tfscan._step import Traced

__all__ = []  # private module


class Plan:
    """``f(carry, x) -> (carry, y)`` as a flat step ``(carry..., x...) -> (carry..., y...)``."""

    def __init__(self, f: Callable, carry_tree: _tree.TreeDef, carry_specs: Sequence[tf.TensorSpec],
                 x_tree: _tree.TreeDef, x_specs: Sequence[tf.TensorSpec], name: str = "scan"):
        self.carry_tree = carry_tree
        self.x_tree = x_tree
        self.carry_specs = list(carry_specs)
        self.x_specs = list(x_specs)
        self.n_carry = len(carry_specs)
        self.name = name
        self.y_tree: _tree.TreeDef | None = None
        carry_paths = _tree.leaf_paths(carry_tree, "carry")

        def flat_step(*args):
            carry = _tree.unflatten(carry_tree, args[: self.n_carry])
            x = _tree.unflatten(x_tree, args[self.n_carry:])
            out = f(carry, x)
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise TypeError(
                    f"{name}: f must return a pair (new_carry, y), got {type(out).__name__} "
                    f"{out!r:.100}. Return `carry, y` (use y=None for no per-step output).")
            new_carry, y = out
            c_leaves, c_paths, c_tree = _tree.flatten_with_paths(new_carry, "carry")
            if c_tree == carry_tree:
                c_leaves = [_checks.output_tensor(v, p, name, dtype=s.dtype) for v, p, s in zip(c_leaves, c_paths, self.carry_specs)]
            else:
                c_leaves = [_checks.output_tensor(v, p, name) for v, p in zip(c_leaves, c_paths)]
            _checks.check_carry(carry_tree, c_tree, self.carry_specs,
                                [tf.TensorSpec(t.shape, t.dtype) for t in c_leaves], carry_paths, name)
            y_leaves, y_paths, self.y_tree = _tree.flatten_with_paths(y, "y")
            y_leaves = [_checks.output_tensor(v, p, name) for v, p in zip(y_leaves, y_paths)]
            return c_leaves + y_leaves

        self.flat_step = flat_step  # traced again (with its gradient) by _residuals.StepVJP
        self.step = Traced(flat_step, self.carry_specs + self.x_specs, name=name)
        self.y_specs = self.step.out_specs[self.n_carry:]

    def apply(self, carry: Sequence[tf.Tensor], x: Sequence[tf.Tensor], consts: Sequence[tf.Tensor]):
        outs = self.step.apply(list(carry) + list(x), consts)
        return outs[: self.n_carry], outs[self.n_carry:]


def is_float(dtype: tf.DType) -> bool:
    """Whether leaves of ``dtype`` get gradients (floating or complex)."""
    return dtype.is_floating or dtype.is_complex


def float_indices(plan: Plan, consts: Sequence[Any], wanted: tuple | None = None):
    """Indices of the leaves of (carry, x, y, consts) that get gradients.

    ``wanted`` (a bool per x leaf then per constant, or ``None`` for all) drops the
    gradients no tape asked for; the carry's are always needed (they chain the steps).
    """
    nx = len(plan.x_specs)
    want = (lambda j: True) if wanted is None else (lambda j: wanted[j])
    fc = [i for i, s in enumerate(plan.carry_specs) if is_float(s.dtype)]
    fx = [i for i, s in enumerate(plan.x_specs) if is_float(s.dtype) and want(i)]
    fy = [i for i, s in enumerate(plan.y_specs) if is_float(s.dtype)]
    fk = [i for i, c in enumerate(consts) if is_float(c.dtype) and want(nx + i)]
    return fc, fx, fy, fk
