"""The step's VJP as explicit ops, split so the backward loop never recomputes the step.

``joint(carry, x, cotangents) = (f(carry, x), tf.gradients(...))`` is traced once by
calling the user's step again, so gradients (including a user's ``tf.custom_gradient``
or a nested scan) are built in the graph where the step's ops live. A plain step (pure ops,
:attr:`tfscan._scan.step.Traced.plain`) is not called again: the plan's trace is emitted
into the joint graph, as JAX linearizes a traced step without running its Python again. The result is then
only ever *imported* (fed through ``input_map``), never differentiated again:

* the whole VJP (``vjp``) serves the recompute policies (``remat=True``);
* cut in three, it serves the default policy: ops that depend on a cotangent form the
  *backward* piece, and every forward tensor they read is a *residual*. A residual that
  depends on the carry or x is saved per step by the forward loop (into a preallocated
  buffer, like the ys); one that depends only on the constants (a transposed weight) is
  computed once before the backward loop; pure constants are copied into the backward
  piece. This is what TensorFlow's own while-loop gradient does with TensorList
  accumulators — the cause of its quadratic time under XLA — done with plain tensors.
"""

from __future__ import annotations

import collections
import warnings
from typing import Any, Sequence

import tensorflow as tf

from tfscan import _tf
from tfscan._core import context as _context
from tfscan._core.cache import ByIdentity
from tfscan._core import step_errors as _step_errors
from tfscan._core.flat import split_list
from tfscan._scan import step_gradient as _step_gradient
from tfscan._scan.graph_piece import GraphPiece
from tfscan._scan.graph_piece import ancestors as _ancestors
from tfscan._scan.graph_piece import ancestors_of as _ancestors_of
from tfscan._scan.plan import Plan, float_indices
from tfscan._scan.step import _writes

__all__ = []  # private module


_LEAN_NAME = "tfscan_step_vjp"


class NotSplittable(Exception):
    """The VJP cannot be cut into pieces (recompute the step instead).

    ``quiet``: the cause is an error tfscan itself will raise again, with its own message,
    when the gradient is computed (reverse mode through a run-time-bounded loop): no
    warning about recomputing then.
    """

    def __init__(self, reason: str, quiet: bool = False):
        super().__init__(reason)
        self.quiet = quiet


class RecomputeWarning(UserWarning):
    """A scan's gradient recomputes each step instead of reading saved residuals.

    Values are the same; the backward pass runs the step again (about 2x its cost).
    Emitted once per step and reason; filter it with ``warnings.filterwarnings``.
    """


def warn_recompute(step: str, reason: str) -> None:
    warnings.warn(f"tfscan: the gradient of scan step {step!r} recomputes every step instead of reading "
                  f"saved residuals, because {reason}. Values are the same; the backward pass costs about "
                  "twice as much.", RecomputeWarning, stacklevel=3)


class StepVJP(ByIdentity):
    """One step's vector-Jacobian product, traced once, emitted inline on demand.

    ``const_sources`` of the plan's step say what each constant is (a tensor or a
    variable); here every place the re-traced step reads it is fed with its value.

    The traced joint graph (``graph_def``), by name: ``step_names`` its carry and x inputs,
    ``ct_names`` its cotangent inputs, ``const_feeds`` ``(tensor, const index)`` where it
    reads a constant, ``handle_feeds`` ``(placeholder, resource)`` of other resource uses,
    ``fwd_outs`` the step's outputs (``n_carry`` carry leaves, then ys) and ``grad_outs``
    the gradients (float carry, float x, float constants: :meth:`split_grads`).
    """

    def __init__(self, plan: Plan, const_specs: Sequence[tf.TensorSpec], wanted: tuple | None = None):
        nc, nx = len(plan.carry_specs), len(plan.x_specs)
        self.fc, self.fx, self.fy, self.fk = float_indices(plan, const_specs, wanted)
        fc, fx, fy, fk = self.fc, self.fx, self.fy, self.fk
        sources = plan.step.const_sources
        by_tensor = {id(s): i for i, s in enumerate(sources) if not isinstance(s, tf.Variable)}
        by_handle = {}
        for i, s in enumerate(sources):
            if isinstance(s, tf.Variable):
                for handle in _tf.variable_handles(s):  # a distributed one's: each replica's
                    by_handle.setdefault(id(handle), i)
        handles = {id(e): e for _, e in plan.step.handles}
        const_feeds: list[tuple[str, int]] = []  # (tensor name in the joint graph, const index)
        handle_feeds: list[tuple[str, Any]] = []  # (placeholder name, external resource)
        n_out = nc + len(plan.y_specs)

        def joint(*args):
            c, x, cts = split_list(args, [nc, nx])
            graph = _tf.default_graph()
            if plan.step.plain:  # the plan's trace emitted again: the user's step is traced once
                outs = plan.step.apply(list(c) + list(x), [_tf.in_graph(graph, s) for s in sources])
            else:
                outs = list(plan.flat_step(*c, *x))
            by_index = collections.defaultdict(list)
            for external, internal in graph.captures:
                consumers = internal.consumers() if internal.dtype == tf.resource else []
                if id(external) in by_handle and not any(_writes(op) for op in consumers):
                    # Each read is fed (and differentiated) as the plan's step feeds it; other
                    # users of the handle (a forward accumulator's JVP of the read) get it too.
                    for op in consumers:
                        if op.type == "ReadVariableOp":
                            by_index[by_handle[id(external)]].append(op.outputs[0])
                    if id(external) in handles and any(op.type != "ReadVariableOp" for op in consumers):
                        handle_feeds.append((internal.name, external))
                elif internal.dtype == tf.resource and id(external) in handles:
                    handle_feeds.append((internal.name, external))
                elif id(external) in by_tensor:
                    by_index[by_tensor[id(external)]].append(internal)
                else:
                    raise NotSplittable(f"the step captured {external!r:.60} on a second trace")
            const_feeds.extend((t.name, i) for i, ts in by_index.items() for t in ts)
            k_sources = [by_index[i] for i in fk]
            targets = [outs[i] for i in fc] + [outs[nc + i] for i in fy]
            srcs = [c[i] for i in fc] + [x[i] for i in fx] + [t for ts in k_sources for t in ts]
            if not targets:
                grads = [tf.zeros_like(s) for s in srcs]
            elif lean:  # a plain step: its few ops walked in reverse (_step_gradient)
                grads = _step_gradient.vjp(targets, srcs, cts)
            else:
                grads = tf.gradients(targets, srcs, grad_ys=cts, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            grads = [tf.convert_to_tensor(g) for g in grads]
            head, rest = grads[: len(fc) + len(fx)], grads[len(fc) + len(fx):]
            summed = []
            for ts, spec in zip(k_sources, [const_specs[i] for i in fk]):
                part, rest = rest[: len(ts)], rest[len(ts):]
                summed.append(tf.add_n(part) if part else tf.zeros(spec.shape, spec.dtype))
            return outs + head + summed

        specs = (list(plan.carry_specs) + list(plan.x_specs)
                 + [plan.carry_specs[i] for i in fc] + [plan.y_specs[i] for i in fy])
        # A plain step's joint graph is built directly (no tf.function: its ops are pure and
        # the plan's, so no automatic control dependencies or concrete function are needed)
        # and differentiated by a reverse walk; any other step, or a plain one the walk does
        # not handle, is traced by tf.function and differentiated by tf.gradients.
        # A conditional in the step is differentiated in an XLA context (the pieces only
        # ever run compiled): its gradient intermediates are then plain tensors, not
        # TensorFlow's ``variant`` optionals, which no loop can save per step.
        graph = None
        if plan.step.plain:
            lean = True
            graph = self._lean(joint, specs)
            if graph is None:
                const_feeds.clear()
                handle_feeds.clear()
        if graph is None:
            lean = False
            # A conditional's gradient (TensorFlow's, in the joint graph) is built differently
            # while a tape or accumulator is live on this thread (``cond_v2`` wraps it for them):
            # emitted later under an accumulator (forward over reverse), that form misses terms.
            # Traced on a thread of its own, it is the same whatever records now; so is a step
            # whose constants an accumulator watches (each capture would take the tangent).
            closed = [s for s in sources if not isinstance(s, tf.Variable)]
            alone = not tf.distribute.has_strategy() and (
                plan.step.has_conditional and _tf.record.could_possibly_record()
                or bool(closed) and _context.watched(closed))
            graph = self._trace(joint, specs, xla=plan.step.has_conditional, alone=alone)
        self.n_carry = nc
        self.graph_def = graph.as_graph_def()
        args = [t.name for t in graph.inputs[: nc + nx + len(fc) + len(fy)]]
        self.step_names, self.ct_names = split_list(args, [nc + nx])
        self.const_feeds, self.handle_feeds = const_feeds, handle_feeds
        outputs = list(graph.outputs)
        self.fwd_outs, self.grad_outs = ([t.name for t in group] for group in split_list(outputs, [n_out]))
        fed = self.fed_names(self.ct_names)
        self.vjp_piece = GraphPiece(self.graph_def, fed, self.grad_outs, keep=_ancestors_of(graph, self.grad_outs, fed),
                                    stub=self.stubs(graph), name="vjp", source=graph)
        self.unsplit = None  # why the backward loop recomputes the step (told when it runs)
        try:
            self.split = _Split(self, graph, outputs[n_out:])
        except NotSplittable as e:
            self.split, self.unsplit = None, str(e)

    def _lean(self, joint, specs):
        """The joint graph of a plain step built directly, or ``None`` (then traced)."""
        self._cf = None
        try:
            # Unrecorded: its ops are pure and differentiated by the walk alone, and a capture of
            # a tensor an accumulator watches would capture the tangent too (TensorFlow's
            # capture records on accumulators), a tensor no slot feeds.
            with _context.internal_trace(), _tf.record.stop_recording():
                return _tf.lean_graph(_LEAN_NAME, joint, specs)
        except NotSplittable:
            raise
        except Exception:  # noqa: BLE001 - the walk's Unsupported, or any other failure: tf.gradients decides
            return None

    def _trace(self, joint, specs, xla: bool, alone: bool):
        def trace():
            with _context.internal_trace():
                return tf.function(joint, autograph=False, jit_compile=xla).get_concrete_function(*specs)
        try:  # with tapes live: a GradientTape inside the step must record
            self._cf = _context.traced_alone(trace) if alone else trace()
        except NotSplittable:
            raise
        except Exception as e:  # noqa: BLE001 - any failure: fall back to recomputing (warned)
            raise NotSplittable(f"its VJP could not be traced ({type(e).__name__}: {str(e)[:200]})",
                                quiet=_step_errors.is_own(e)) from e
        return self._cf.graph

    def fed_names(self, extra: Sequence[str]) -> list[str]:
        return self.step_names + [n for n, _ in self.const_feeds] + [n for n, _ in self.handle_feeds] + list(extra)

    def fed_values(self, carry, x, consts, extra) -> list:
        return (list(carry) + list(x) + [consts[i] for _, i in self.const_feeds]
                + [h for _, h in self.handle_feeds] + list(extra))

    @staticmethod
    def stubs(graph) -> list[str]:
        return [t.name for _, t in graph.captures if t.dtype == tf.resource]

    def split_grads(self, grads: list):
        return split_list(grads, [len(self.fc), len(self.fx)])

    def vjp(self, carry, x, consts, d_carry, d_y):
        """Gradients for the float carry, x and constant leaves of one step (recomputed)."""
        return self.split_grads(self.vjp_piece.apply(self.fed_values(carry, x, consts, list(d_carry) + list(d_y))))


class _Split:
    """The forward-with-residuals, invariant and backward pieces of a :class:`StepVJP`."""

    def __init__(self, vjp: StepVJP, graph, grad_outs: list):
        nc = vjp.n_carry
        step_in = {n.split(":")[0] for n in vjp.step_names}
        const_in = {n.split(":")[0] for n, _ in vjp.const_feeds}
        const_in |= {n.split(":")[0] for n, _ in vjp.handle_feeds}  # resources: never copied
        ct_in = {n.split(":")[0] for n in vjp.ct_names}
        ops_ = {op.name: op for op in graph.get_operations()}
        order = _topological(graph)
        dep_ct, dep_step, dep_k = {}, {}, {}
        for op in order:
            ins = [t.op.name for t in op.inputs]
            dep_ct[op.name] = op.name in ct_in or any(dep_ct[i] for i in ins)
            # A stateful op (a random draw) runs once per step in the forward loop: what the
            # backward pass needs from it is saved per step, never recomputed.
            stateful = op.op_def is not None and op.op_def.is_stateful and op.name not in const_in \
                and op.type != "Placeholder"
            dep_step[op.name] = op.name in step_in or stateful or any(dep_step[i] for i in ins)
            dep_k[op.name] = op.name in const_in or any(dep_k[i] for i in ins)
        # Only what the gradients read: a gradient nobody asked for (TensorFlow's gradient of
        # ``x ** 2`` w.r.t. the constant exponent, its ``log(x)``) saves nothing per step.
        backward = {n for n, d in dep_ct.items() if d} & _ancestors([t.op for t in grad_outs])
        # An integer the backward piece reads from a function call (TensorFlow's gradient of a
        # call reads the forward call's outputs: a slice's strides, which XLA must know when
        # compiling) is computed again there, by the call: saved per step or computed before
        # the loop, it would be a run-time value of the backward loop.
        while True:
            boundary = _boundary(order, backward, grad_outs)
            again = {t.op.name for t in boundary.values()
                     if t.op.type == "PartitionedCall" and t.dtype.is_integer and (dep_step[t.op.name] or dep_k[t.op.name])}
            if not again:
                break
            backward |= again

        step_index = {n: i for i, n in enumerate(vjp.step_names)}
        const_index = dict(vjp.const_feeds)
        # A residual that is a view of another tensor (an Identity, Squeeze, ExpandDims or
        # Reshape of fixed shape: pfor's batched matvec reads each operand that way) is
        # computed again by the backward piece from what it views: a view of x is read from
        # xs, of the carry from the saved carries, and two views of one tensor save it once.
        views = {}
        for name, t in list(boundary.items()):
            if name in step_index or not dep_step[t.op.name]:
                continue
            origin, chain = _view_origin(t, step_index, dep_step, dep_k)
            if chain:
                del boundary[name]
                boundary.setdefault(origin.name, origin)
                views[name] = chain
        self.inputs: list[tuple[str, str, int]] = []  # (name, "step" | "const", index)
        per_step, invariant, copied = [], [], set()
        for chain in views.values():
            backward |= {op.name for op in chain}
            copied |= _ancestors([u.op for op in chain for u in op.inputs[1:]])
        for name, t in boundary.items():
            op = t.op.name
            if name in step_index:
                self.inputs.append((name, "step", step_index[name]))
            elif name in const_index:
                self.inputs.append((name, "const", const_index[name]))
            elif t.dtype == tf.resource:
                raise NotSplittable("the backward pass reads a resource")
            elif dep_step[op]:
                if t.dtype == tf.variant:
                    raise NotSplittable(f"the backward pass reads {name}, a variant (no loop saves it per step)")
                if t.dtype.is_integer and any(ops_[a].type in _SHAPE_OPS for a in _ancestors([t.op], step_in)):
                    # A shape known only at run time, read by the backward pass: saved per step it
                    # would hide from XLA a value it must know when compiling (recompute instead).
                    raise NotSplittable(f"the backward pass reads the run-time shape {name}")
                per_step.append(name)
            elif dep_k[op]:
                invariant.append(name)
            else:
                copied |= _ancestors([ops_[op]])
        self.per_step, self.invariant = per_step, invariant
        # A residual that is one of the step's ys (an RNN's new hidden state) is not saved
        # twice: the backward loop reads it from the ys buffer.
        # (Any tensor along the y's chain of Identity ops: a plain step's trace, emitted
        # again, adds its own output Identity.)
        y_names: dict[str, int] = {}
        for j, n in enumerate(vjp.fwd_outs[nc:]):
            t = graph.get_tensor_by_name(n)
            y_names.setdefault(t.name, j)
            while t.op.type == "Identity" and t.op.inputs:
                t = t.op.inputs[0]
                y_names.setdefault(t.name, j)
        self.y_alias = {k: y_names[n] for k, n in enumerate(per_step) if n in y_names}
        self.saved_carry = sorted({i for _, kind, i in self.inputs if kind == "step" and i < nc})
        self.residual_specs = [tf.TensorSpec(boundary[n].shape, boundary[n].dtype) for n in per_step]
        self.vjp = vjp
        try:
            self._make_pieces(vjp, graph, per_step, invariant, backward | copied)
        except ValueError as e:  # a piece that is not self-contained (GraphPiece's check)
            raise NotSplittable(f"a piece of its VJP is not self-contained ({e})") from e

    def _make_pieces(self, vjp, graph, per_step: list, invariant: list, backward_ops: set) -> None:
        """The forward-with-residuals, invariant and backward :class:`GraphPiece`s."""
        stubs = vjp.stubs(graph)
        fed_step = vjp.fed_names([])
        self.forward = GraphPiece(vjp.graph_def, fed_step, vjp.fwd_outs + per_step,
                                  keep=_ancestors_of(graph, vjp.fwd_outs + per_step, fed_step),
                                  stub=stubs, name="fwd", source=graph)
        inv_fed = [n for n, _ in vjp.const_feeds] + [n for n, _ in vjp.handle_feeds]
        self.invariant_piece = GraphPiece(vjp.graph_def, inv_fed, invariant,
                                          keep=_ancestors_of(graph, invariant, inv_fed), stub=stubs, name="inv", source=graph)
        bwd_fed = list(vjp.ct_names) + [n for n, _, _ in self.inputs] + per_step + invariant
        self.backward = GraphPiece(vjp.graph_def, bwd_fed, vjp.grad_outs, keep=backward_ops, stub=stubs,
                                   name="bwd", source=graph)

    def invariants(self, consts: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        vjp = self.vjp
        return self.invariant_piece.apply([consts[i] for _, i in vjp.const_feeds] +
                                          [h for _, h in vjp.handle_feeds])

    def step_forward(self, carry, x, consts):
        """``(new_carry, ys, residuals)`` of one step."""
        vjp = self.vjp
        outs = self.forward.apply(vjp.fed_values(carry, x, consts, []))
        return split_list(outs, [vjp.n_carry, len(outs) - vjp.n_carry - len(self.per_step)])

    def step_backward(self, carry, x, consts, residuals, invariants, d_carry, d_y):
        """Gradients for the float carry, x and constant leaves of one step."""
        step_args = list(carry) + list(x)
        inputs = [step_args[i] if kind == "step" else consts[i] for _, kind, i in self.inputs]
        feeds = list(d_carry) + list(d_y) + inputs + list(residuals) + list(invariants)
        return self.vjp.split_grads(self.backward.apply(feeds))


_SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank", "BroadcastGradientArgs"})
_VIEW_OPS = frozenset({"Identity", "Snapshot", "Squeeze", "ExpandDims", "Reshape"})


def _boundary(order: list, backward: set, grad_outs: list) -> dict:
    """The tensors the ops ``backward`` read from outside it, and the gradients it does not
    compute, by name."""
    boundary = {}
    for op in order:
        if op.name in backward:
            for t in op.inputs:
                if t.op.name not in backward:
                    boundary[t.name] = t
    for t in grad_outs:
        if t.op.name not in backward:
            boundary[t.name] = t
    return boundary


def _view_origin(t, step_index: dict, dep_step: dict, dep_k: dict) -> tuple[Any, list]:
    """``(origin, ops)``: the tensor ``t`` views through a chain ``ops`` of view ops whose
    other inputs (an axis, a shape) are constants of the graph, stopping at a step input."""
    chain = []
    while (t.name not in step_index and t.op.type in _VIEW_OPS and t.op.inputs
           and t.dtype != tf.resource and t.shape.is_fully_defined()
           and not any(dep_step[u.op.name] or dep_k[u.op.name] for u in t.op.inputs[1:])):
        chain.append(t.op)
        t = t.op.inputs[0]
    return t, chain


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
