"""The step's VJP split into three pieces, so the backward loop never recomputes the step.

Trace ``joint(carry, x, consts, cotangents) = (step outputs, tf.gradients(...))`` once,
then cut its graph: ops that depend on a cotangent form the *backward* piece; every
forward tensor they read is a *residual*. A residual that depends on the carry or x is
saved per step by the forward loop (into a preallocated buffer, like the ys); one that
depends only on the constants (a transposed weight, say) is computed once, before the
backward loop; pure constants are copied into the backward piece. This is what
TensorFlow's own while-loop gradient does with TensorList accumulators — the cause of its
quadratic time under XLA — done with plain tensors.
"""

from __future__ import annotations

import collections
from typing import Sequence

import tensorflow as tf
from tensorflow.python.eager import record

from tfscan._graph_piece import GraphPiece
from tfscan._plan import Plan, float_indices

__all__ = []  # private module


class NotSplittable(Exception):
    """The step cannot be split (it uses resources or captures); recompute it instead."""


class ResidualSplit:
    """Forward-with-residuals, invariant and backward pieces of one step's VJP.

    Attributes:
      saved_carry: indices of the carry leaves the backward piece reads directly.
      residual_specs: specs of the per-step residuals the forward piece also returns.
    """

    def __init__(self, plan: Plan, const_specs: Sequence[tf.TensorSpec], wanted: tuple | None = None):
        if plan.step.has_resources:
            raise NotSplittable("the step uses resources")
        nc, nx, nk = len(plan.carry_specs), len(plan.x_specs), len(const_specs)
        self.fc, self.fx, self.fy, self.fk = float_indices(plan, const_specs, wanted)
        fc, fx, fy, fk = self.fc, self.fx, self.fy, self.fk
        n_out = nc + len(plan.y_specs)

        def joint(*args):
            c, x, k = args[:nc], args[nc: nc + nx], args[nc + nx: nc + nx + nk]
            cts = list(args[nc + nx + nk:])
            outs = plan.apply(c, x, k)
            outs = list(outs[0]) + list(outs[1])
            targets = [outs[i] for i in fc] + [outs[nc + i] for i in fy]
            sources = [c[i] for i in fc] + [x[i] for i in fx] + [k[i] for i in fk]
            grads = tf.gradients(targets, sources, grad_ys=cts,
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO) if targets else []
            return outs + [tf.convert_to_tensor(g) for g in grads]

        specs = (list(plan.carry_specs) + list(plan.x_specs) + list(const_specs)
                 + [plan.carry_specs[i] for i in fc] + [plan.y_specs[i] for i in fy])
        with record.stop_recording():
            self._cf = tf.function(joint, autograph=False).get_concrete_function(*specs)
        graph = self._cf.graph
        if graph.captures:
            raise NotSplittable("the VJP captures tensors")
        placeholders = [t.op.name for t in graph.inputs]
        step_in = set(placeholders[: nc + nx])
        const_in = set(placeholders[nc + nx: nc + nx + nk])
        ct_in = set(placeholders[nc + nx + nk:])
        fwd_outs = [t.name for t in graph.outputs[:n_out]]
        grad_outs = list(graph.outputs[n_out:])

        ops_ = {op.name: op for op in graph.get_operations()}
        order = _topological(graph)
        dep_ct, dep_step, dep_k = {}, {}, {}
        for op in order:
            ins = [t.op.name for t in op.inputs]
            dep_ct[op.name] = op.name in ct_in or any(dep_ct[i] for i in ins)
            dep_step[op.name] = op.name in step_in or any(dep_step[i] for i in ins)
            dep_k[op.name] = op.name in const_in or any(dep_k[i] for i in ins)
        backward = {n for n, d in dep_ct.items() if d}

        boundary: dict[str, tf.Tensor] = {}
        for op in order:
            if op.name in backward:
                for t in op.inputs:
                    if t.op.name not in backward:
                        boundary[t.name] = t
        for t in grad_outs:
            if t.op.name not in backward:
                boundary[t.name] = t

        # Feeds of the backward piece, by kind.
        self._inputs: list[tuple[str, int]] = []  # (tensor, index into carry+x+consts)
        self._per_step: list[str] = []
        self._invariant: list[str] = []
        copied: set[str] = set()
        for name, t in boundary.items():
            op = t.op.name
            if op in step_in or op in const_in:
                self._inputs.append((name, placeholders.index(op)))
            elif dep_step[op]:
                self._per_step.append(name)
            elif dep_k[op]:
                self._invariant.append(name)
            else:
                copied |= _ancestors([ops_[op]])
        self.saved_carry = sorted({i for _, i in self._inputs if i < nc})
        self.residual_specs = [tf.TensorSpec(boundary[n].shape, boundary[n].dtype) for n in self._per_step]
        self._nc, self._nx = nc, nx

        try:
            self._build_pieces(graph, placeholders, nc, nx, nk, fwd_outs, grad_outs, ops_, backward, copied)
        except ValueError as e:  # a piece would need an op it does not hold
            raise NotSplittable(str(e)) from e

    def _build_pieces(self, graph, placeholders, nc, nx, nk, fwd_outs, grad_outs, ops_, backward, copied):
        step_in, const_in = set(placeholders[: nc + nx]), set(placeholders[nc + nx: nc + nx + nk])
        gd = graph.as_graph_def()
        fed_step = [f"{p}:0" for p in placeholders[: nc + nx + nk]]
        fwd_keep = _ancestors([ops_[n.split(":")[0]] for n in fwd_outs + self._per_step], stop=step_in | const_in)
        self.forward = GraphPiece(gd, fed_step, fwd_outs + self._per_step,
                                  keep=fwd_keep | step_in | const_in, name="fwd")
        inv_keep = _ancestors([ops_[n.split(":")[0]] for n in self._invariant], stop=const_in)
        self.invariant = GraphPiece(gd, [f"{p}:0" for p in placeholders[nc + nx: nc + nx + nk]],
                                    self._invariant, keep=inv_keep | const_in, name="inv")
        bwd_fed = [f"{p}:0" for p in placeholders[nc + nx + nk:]] + [n for n, _ in self._inputs] + \
            self._per_step + self._invariant
        self.backward = GraphPiece(gd, bwd_fed, [t.name for t in grad_outs], keep=backward | copied, name="bwd")

    def invariants(self, consts: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return self.invariant.apply(consts)

    def step_forward(self, carry, x, consts):
        """``(new_carry, ys, residuals)`` of one step."""
        outs = self.forward.apply(list(carry) + list(x) + list(consts))
        n = len(outs) - len(self._per_step)
        return outs[: self._nc], outs[self._nc: n], outs[n:]

    def step_backward(self, carry, x, consts, residuals, invariants, d_carry, d_y):
        """Gradients for the float carry, x and constant leaves of one step."""
        step_args = list(carry) + list(x) + list(consts)
        feeds = list(d_carry) + list(d_y) + [step_args[i] for _, i in self._inputs] + \
            list(residuals) + list(invariants)
        grads = self.backward.apply(feeds)
        a, b = len(self.fc), len(self.fc) + len(self.fx)
        return grads[:a], grads[a:b], grads[b:]


def _topological(graph) -> list:
    """Operations in data-dependency order (Kahn's algorithm; control edges ignored)."""
    ops_ = graph.get_operations()
    indeg = {op.name: len({t.op.name for t in op.inputs}) for op in ops_}
    users = collections.defaultdict(set)
    for op in ops_:
        for t in op.inputs:
            users[t.op.name].add(op)
    ready = collections.deque(op for op in ops_ if indeg[op.name] == 0)
    order = []
    while ready:
        op = ready.popleft()
        order.append(op)
        for u in users[op.name]:
            indeg[u.name] -= 1
            if indeg[u.name] == 0:
                ready.append(u)
    if len(order) != len(ops_):
        raise NotSplittable("the step graph has a cycle")
    return order


def _ancestors(roots, stop: set[str] = frozenset()) -> set[str]:
    """Names of ``roots`` and every op they depend on through data edges, up to ``stop``.

    Control edges are not followed (a piece drops those that leave it): the function's
    output ``NoOp`` would otherwise pull every op of the joint graph into every piece.
    """
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.name in stop:
            continue
        stack.extend(t.op for t in op.inputs)
    return seen
