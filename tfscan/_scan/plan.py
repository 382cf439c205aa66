"""A scan's plan: the step traced once on the flat leaf specs, with its output structure.

Tracing ``f`` on specs (never running it) gives the ys' structure, shapes and dtypes —
so a length-0 scan knows what it would have produced — and checks the carry contract
before any loop is built.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import tensorflow as tf

from tfscan._core import checks as _checks
from tfscan._core.cache import ByIdentity
from tfscan._core import step_errors as _step_errors
from tfscan._core import tree as _tree
from tfscan._scan.step import Traced

__all__ = []  # private module


class Plan(ByIdentity):
    """``f(carry, x) -> (carry, y)`` as a flat step ``(carry..., x...) -> (carry..., y...)``."""

    def __init__(self, f: Callable, carry_tree: _tree.TreeDef, carry_specs: Sequence[tf.TensorSpec],
                 x_tree: _tree.TreeDef, x_specs: Sequence[tf.TensorSpec], name: str = "scan",
                 slots: Sequence[tf.Tensor] = ()):
        self.carry_tree = carry_tree
        self.x_tree = x_tree
        self.carry_specs = list(carry_specs)
        self.x_specs = list(x_specs)
        self.n_carry = len(carry_specs)
        self.name = name
        self.y_tree: _tree.TreeDef | None = None
        self.float_indices: dict = {}  # ``float_indices`` of this plan, by consts' dtypes and ``wanted``

        def traced_on() -> str:
            return _step_errors.describe([("carry", _tree.leaf_paths(carry_tree, "carry"), self.carry_specs),
                                          ("x", _tree.leaf_paths(x_tree, "x"), self.x_specs)])

        def flat_step(*args):
            carry = _tree.unflatten(carry_tree, args[: self.n_carry])
            x = _tree.unflatten(x_tree, args[self.n_carry:])
            new_carry, y = _checks.step_pair(_step_errors.call(f, (carry, x), name, "f", traced_on), name)
            c_leaves = _checks.new_carry(new_carry, carry_tree, self.carry_specs, name)
            y_leaves, y_paths, self.y_tree = _tree.flatten_with_paths(y, "y")
            y_leaves = [_checks.output_tensor(v, p, name) for v, p in zip(y_leaves, y_paths)]
            return c_leaves + y_leaves

        self.flat_step = flat_step  # traced again (with its gradient) by _residuals.StepVJP
        self.step = Traced(flat_step, self.carry_specs + self.x_specs, name=name, slots=slots)
        self.y_specs = self.step.out_specs[self.n_carry:]
        # ``{carry leaf i: y leaf j}`` when the step returns one tensor as both: step t's input
        # carry i is then ``ys[j]`` of the step before (or ``init``), and need not be saved.
        roots, n = self.step.out_roots, self.n_carry
        self.carry_is_y = {}
        for i in range(n):
            j = next((j for j in range(len(self.y_specs)) if roots[n + j] == roots[i]
                      and self.y_specs[j] == self.carry_specs[i]), None)
            if j is not None:
                self.carry_is_y[i] = j

    def apply(self, carry: Sequence[tf.Tensor], x: Sequence[tf.Tensor], consts: Sequence[tf.Tensor],
              batchable: bool = False):
        """The step emitted inline: ``(new carry leaves, y leaves)`` (``batchable``: its products
        kept ``dot``s, for ``pfor`` to batch, :meth:`Traced.batchable_piece`)."""
        outs = self.step.apply(list(carry) + list(x), consts, batchable=batchable)
        return outs[: self.n_carry], outs[self.n_carry:]


def is_float(dtype: tf.DType) -> bool:
    """Whether leaves of ``dtype`` get gradients (floating or complex)."""
    return dtype.is_floating or dtype.is_complex


class FloatIndices(NamedTuple):
    """Indices of the leaves of each group that get gradients (``fc, fx, fy, fk = ...``)."""

    carry: list[int]
    x: list[int]
    y: list[int]
    consts: list[int]


def float_indices(plan: Plan, consts: Sequence[Any], wanted: tuple | None = None) -> FloatIndices:
    """Indices of the leaves of (carry, x, y, consts) that get gradients.

    ``wanted`` (a bool per x leaf then per constant, or ``None`` for all) drops the
    gradients no tape asked for; the carry's are always needed (they chain the steps).
    Computed once per plan, constants' dtypes and ``wanted``; callers must not mutate it.
    """
    key = (tuple(c.dtype for c in consts), wanted)
    found = plan.float_indices.get(key)
    if found is None:
        nx = len(plan.x_specs)
        want = (lambda j: True) if wanted is None else (lambda j: wanted[j])
        found = plan.float_indices[key] = FloatIndices(
            [i for i, s in enumerate(plan.carry_specs) if is_float(s.dtype)],
            [i for i, s in enumerate(plan.x_specs) if is_float(s.dtype) and want(i)],
            [i for i, s in enumerate(plan.y_specs) if is_float(s.dtype)],
            [i for i, c in enumerate(consts) if is_float(c.dtype) and want(nx + i)])
    return found
