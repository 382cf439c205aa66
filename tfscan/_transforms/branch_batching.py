"""The batching rule of a conditional: ``vmap`` of ``cond``/``switch`` as ``jax.vmap`` does it.

``pfor``'s own rule for ``If``/``Case`` looks the branches up as ``FuncGraph``s (a
conditional nested in a scan step that tfscan re-emits from its ``GraphDef`` has none:
the conversion failed) and, for a batched predicate, partitions the batch and runs each
branch on its part (``dynamic_partition``/``dynamic_stitch``). Inside ``tfscan.vmap``
conditionals are batched with JAX's rule instead (``_cond_batching_rule``):

* an unbatched predicate or index: one conditional whose branches are the branches
  batched by ``pfor``; an output batched in any branch is batched in all (tiled where a
  branch leaves it unbatched), found by tracing each batched branch once;
* a batched predicate or index: every branch runs on the whole batch and each output is
  a ``select`` by the predicate (an index out of range selects the last branch, as the
  ``Case`` op does; ``tfscan.switch`` clamps it before), so every output is batched. As in
  JAX, each branch reads its operands through ``select(taken, x, stop_gradient(x))``
  (:func:`_guard`), so a branch's NaN derivative at an example it does not give never
  reaches a gradient.

The result is made of ordinary ``If``/``Case``/``Select`` ops: TensorFlow differentiates
it (inside a scan step, the step's traced VJP saves its residuals as plain tensors).
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from tfscan import _tf
from tfscan._tf import pfor as pfor_lib
from tfscan._transforms import batching as _batching

__all__ = []  # private module


def convert(pfor_input) -> list | None:
    """The batched conditional (``None``: leave it to ``pfor``'s own rule)."""
    op = pfor_input.op
    if op.type in ("If", "StatelessIf"):
        names = [pfor_input.get_attr("then_branch").name, pfor_input.get_attr("else_branch").name]
    else:
        names = [f.name for f in pfor_input.get_attr("branches")]
    graphs = [_tf.function_graph(op.graph, name) for name in names]
    operands = list(pfor_input.inputs[1:])
    if any(g is None for g in graphs) or any(w.is_sparse_stacked for w in pfor_input.inputs) \
            or any(t.dtype == tf.variant for t in list(op.inputs) + list(op.outputs)):
        return None  # TensorLists and the like keep pfor's own rule
    n_out = len(op.outputs)
    pfor = pfor_input.pfor
    n = pfor.loop_len_vector

    def batched_branch(k: int, inputs: list = operands) -> list:
        return pfor_lib.convert_graph_call(graphs[k], _batching.sub_converter(pfor, graphs[k]), inputs, n_out)

    selector = pfor_input.input(0)
    if selector.is_stacked:
        picks = _picks(op.type, selector.t, len(graphs))
        outs = [[w.t if w.is_stacked else _batching.tile(w.t, n)
                 for w in batched_branch(k, [_guard(w, picks[k], n) for w in operands])]
                for k in range(len(graphs))]
        return [pfor_lib.wrap(t, True) for t in _select(picks, outs)]
    stacked = _stacked_outputs(batched_branch, len(graphs), n_out)

    def branch(k: int) -> Callable[[], list]:
        def run() -> list:
            return [w.t if w.is_stacked or not s else _batching.tile(w.t, n)
                    for w, s in zip(batched_branch(k), stacked)]
        return run

    fns = [branch(k) for k in range(len(graphs))]
    if op.type in ("If", "StatelessIf"):
        outs = tf.cond(_truth(selector.t), fns[0], fns[1])
    else:
        outs = tf.switch_case(selector.t, fns)
    outs = [outs] if isinstance(outs, tf.Tensor) else list(outs)
    return [pfor_lib.wrap(t, s) for t, s in zip(outs, stacked)]


def _stacked_outputs(batched_branch: Callable[[int], list], n_branches: int, n_out: int) -> list[bool]:
    """Which outputs some branch batches (each batched branch traced once, then dropped)."""
    stacked = [False] * n_out

    def trial():
        for k in range(n_branches):
            for j, w in enumerate(batched_branch(k)):
                stacked[j] = stacked[j] or w.is_stacked
        return []

    tf.function(trial, autograph=False).get_concrete_function()
    return stacked


def _truth(pred: tf.Tensor) -> tf.Tensor:
    """An ``If`` predicate as a boolean (a number means ``!= 0``, as the op reads it)."""
    return pred if pred.dtype == tf.bool else tf.not_equal(pred, tf.zeros([], pred.dtype))


def _picks(op_type: str, selector: tf.Tensor, n_branches: int) -> list[tf.Tensor]:
    """Per branch, the examples (a ``[batch]`` boolean) whose outputs it gives: branch 0 where
    an ``If``'s predicate is true; a ``Case``'s index ``k``, and the last branch for any index
    no earlier branch has (out of range, as the op reads it)."""
    if op_type in ("If", "StatelessIf"):
        taken = _truth(selector)
        return [taken, tf.logical_not(taken)]
    picks = [tf.equal(selector, tf.cast(k, selector.dtype)) for k in range(n_branches - 1)]
    return picks + [tf.logical_not(tf.reduce_any(tf.stack(picks), 0)) if picks else tf.ones_like(selector, tf.bool)]


def _guard(operand, pick: tf.Tensor, n: tf.Tensor):
    """``operand`` as one branch reads it, batched, with no gradient through the examples the
    branch does not give (JAX's ``select(pred, x, stop_gradient(x))``, its issue 1052): every
    branch runs on every example, and a branch's derivative at an example it does not take
    (``sqrt`` at a negative, ``log`` at 0) is NaN or infinite; times the zero cotangent the
    output ``select`` gives it, that would still be NaN, in the gradient of the example's
    inputs and, summed over the batch, of an unbatched operand's (which is why unbatched
    ones are tiled here too, as JAX broadcasts every operand; in the forward pass XLA folds
    the ``select`` of equal values away). Integer operands have no gradient: unchanged."""
    if not (operand.t.dtype.is_floating or operand.t.dtype.is_complex):
        return operand
    t = operand.t if operand.is_stacked else _batching.tile(operand.t, n)
    return pfor_lib.wrap(tf.where(_batching.along(pick, t), t, tf.stop_gradient(t)), True)


def _select(picks: list[tf.Tensor], outs: list[list[tf.Tensor]]) -> list[tf.Tensor]:
    """Per example, the outputs of the branch that ``picks`` it (all outputs batched)."""
    result = []
    for j in range(len(outs[0])):
        value = outs[-1][j]
        for k in reversed(range(len(picks) - 1)):
            value = tf.where(_batching.along(picks[k], value), outs[k][j], value)
        result.append(value)
    return result

