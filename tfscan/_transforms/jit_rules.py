"""The derivatives of an eager :func:`tfscan.jit` call, as JAX differentiates a ``jit``.

A ``tf.function`` call seen by a ``tf.autodiff.ForwardAccumulator`` is differentiated by
TensorFlow's forward function for the call, which transposes the call's *gradient*: a
function holding a run-time-bounded ``while_loop``/``fori_loop`` (no VJP, the same in
JAX) then fails with the reverse-mode error, though JAX linearizes it. So an eager call
under a live accumulator records derivatives of its own (:func:`record_call`), as
:mod:`tfscan._lax.branch` does for a conditional:

* forward mode: the JVP of the traced function as one compiled program (a ``jit`` of
  :func:`tfscan._scan.forward.jvp_call`: every op by its own forward rule), over the flat
  arguments, the float tensors the function closes over and the variables it reads, and
  their tangents;
* reverse mode (a tape live too, a JVP of a gradient): the compiled VJP of the traced
  function.

Both are ``tfscan.jit`` calls again, so a JVP of a JVP (or of the VJP) nests the same way,
and their traces are cached by code and closure like any jitted function. A function holding
a TensorFlow conditional takes them under one accumulator only, its VJP function never
(:func:`own_rules`); called in a graph, it carries its compiled VJP as the graph's gradient
(:func:`with_graph_gradient`), never TensorFlow's gradient of its ``If``, whose intermediates
built outside XLA's context are ``Optional``s XLA cannot compile.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import tensorflow as tf

from tfscan import _tf
from tfscan._core import cache as _cache
from tfscan._core import gradients as _gradients
from tfscan._core import tree as _tree
from tfscan._core.flat import scatter
from tfscan._lax.control import INLINE_SCOPE
from tfscan._scan import forward as _forward
from tfscan._scan.plan import is_float
from tfscan._tf import record

__all__: list = []  # private module


def call_flat(fun: Callable, tree: _tree.TreeDef, static: tuple, leaves: Sequence[Any]) -> Any:
    """``fun`` called on the dynamic ``leaves`` (structure ``tree``: ``(args, kwargs)``)
    and the ``static`` arguments ``((kind, where, value), ...)``; its output pytree."""
    dyn_args, dyn_kwargs = _tree.unflatten(tree, list(leaves))
    statics = {(kind, where): value for kind, where, value in static}
    args = [statics[("pos", i)] if ("pos", i) in statics else a for i, a in enumerate(dyn_args)]
    kwargs = dict(dyn_kwargs)
    kwargs.update({where: value for (kind, where), value in statics.items() if kind == "kw"})
    return fun(*args, **kwargs)


def watched_inputs(fun: Callable, concrete: Any) -> tuple[list, list]:
    """``(closed, variables)``: the float tensors ``fun`` closes over now and the float
    variables its trace ``concrete`` reads — the inputs besides its arguments that an
    accumulator or tape may differentiate."""
    closed = list({id(t): t for t in _cache.closure(fun).tensors if is_float(t.dtype)}.values())
    variables = [v for v in concrete.variables if is_float(v.dtype)]
    return closed, variables


def holds_conditional(concrete: Any) -> bool:
    """Whether the traced function ``concrete`` holds a TensorFlow conditional
    (``tf.cond``, ``tf.switch_case``), not one emitted by ``tfscan.cond``/``switch`` (inline
    under their name scope, :data:`tfscan._lax.control.INLINE_SCOPE`, or in their compiled
    program), which have forward rules of their own. A call of a jitted function that holds
    one counts, and so does TensorFlow's forward function of one (its forward rule of a
    ``tf.cond`` in a JVP or VJP program): the conditional is differentiated with the call."""
    return _graph_holds_conditional(concrete.graph, concrete.function_def.signature.name)


def _graph_holds_conditional(graph: Any, name: str) -> bool:
    if graph is None:
        return False
    for op in graph.get_operations():
        if any(part.startswith(INLINE_SCOPE) for part in op.name.split("/")):
            continue
        called = op.node_def.attr["f"].func.name if op.type in _tf.CALL_OPS else ""
        if op.type in _tf.CONDITIONAL_OPS or called in _HOLDING or (
                called.startswith(_TF_FORWARD) and _graph_holds_conditional(_tf.function_graph(graph, called), called)):
            _HOLDING.add(name)
            return True
    return False


_TF_FORWARD = "__forward_"  # how TensorFlow names the forward functions it builds for a derivative
_HOLDING: set = set()  # names of the traced functions found to hold a TensorFlow conditional


def accumulating(inputs: Sequence[Any]) -> bool:
    """Whether a ``ForwardAccumulator`` is live (one busy computing a tangent may not show
    its tangents of ``inputs``, yet it takes the call's: the call records its own rules)."""
    return bool(record.pack_tangents(list(inputs)).indices)


def own_rules(holds_conditional: bool, fun: Callable) -> bool:
    """Whether an eager call of ``fun`` under a live accumulator records its own compiled
    JVP and VJP (:func:`record_call`). Always, unless it holds a TensorFlow conditional:
    then under one accumulator only (a tape may watch too: a Hessian-vector product), and
    not for the VJP function :func:`record_call` made (it holds the conditional's gradient):
    in a JVP program's trace TensorFlow's forward rule of ``tf.cond`` fails under nested
    accumulators, and so does its gradient's (``cond_v2``'s gradient captures a tangent
    of a graph two levels out). TensorFlow's forward mode of the whole call (its gradient
    transposed, built in XLA's context) serves those."""
    if not holds_conditional:
        return True
    return record.accumulators() == 1 and not getattr(fun, _VJP_MARK, False)


_VJP_MARK, _JVP_MARK = "_tfscan_jit_vjp", "_tfscan_jit_jvp"  # set on the functions record_call makes



def nested_forward_error(name: str) -> str:
    """The error of nested forward mode through a jitted function holding a ``tf.cond`` and
    a run-time-bounded loop."""
    return (f"jit: forward mode (tf.autodiff.ForwardAccumulator) through {name}, which holds a "
            "tf.cond (or tf.switch_case) and a tfscan.while_loop/fori_loop with run-time bounds, works "
            "to first order only (one accumulator): under nested accumulators TensorFlow's forward "
            "rule of tf.cond fails inside tfscan's JVP program, and TensorFlow's forward mode of the "
            "whole call needs the loop's reverse mode, which a run-time-bounded loop does not have. "
            "Use tfscan.cond/tfscan.switch instead of tf.cond (they have forward rules of their own), "
            "or give the loop static bounds (Python ints) or while_loop(..., max_steps=N).")


def reverse_of_forward_error(name: str) -> str:
    """The error of reverse mode over forward mode (a tape around an accumulator) through a
    jitted function holding a ``tf.cond``."""
    return (f"jit: reverse mode (tf.GradientTape) of forward mode (a tf.autodiff.ForwardAccumulator "
            f"opened inside the tape) through {name}, which holds a tf.cond (or tf.switch_case), does "
            "not work: TensorFlow's gradient of tf.cond's forward rule fails (and TensorFlow's own "
            "forward mode of the call is not seen by the tape). Use tfscan.cond/tfscan.switch instead "
            "of tf.cond (they have derivatives of their own, to any order), or open the accumulator "
            "outside the tape (a Hessian-vector product works).")


def record_call(make_jit: Callable, fun: Callable, tree: _tree.TreeDef, static: tuple,
                flat: list, outs: list, closed: list, variables: list, holds_conditional: bool = False) -> list:
    """``outs`` (the call's outputs, computed unrecorded) recorded on the live tapes and
    accumulators with the compiled JVP and VJP of ``fun`` (``make_jit``: ``tfscan.jit``).
    ``holds_conditional``: ``fun``'s trace holds a TensorFlow conditional."""
    fl = tuple(i for i, t in enumerate(flat) if is_float(t.dtype))
    fo = tuple(i for i, o in enumerate(outs) if is_float(o.dtype))
    closed_t, variables_t = tuple(closed), tuple(variables)
    for v in variables:
        _tf.mark_variable_accessed(v)  # so that the tapes watch it
    inputs = list(flat) + list(closed) + [v.handle for v in variables]

    def backward(*d_outs):
        if holds_conditional and getattr(fun, _JVP_MARK, None):
            raise ValueError(reverse_of_forward_error(getattr(fun, _JVP_MARK)))
        d = _forward.filled_cotangents(d_outs, outs, fo)
        grads = make_jit(_vjp_fn(fun, tree, static, fl, fo, closed_t, variables_t))(tuple(flat), tuple(d))
        return scatter(len(flat), fl, grads[: len(fl)]) + list(grads[len(fl):])

    def forward(*tangents):
        t_flat, t_closed, t_vars = _forward.filled_tangents(tangents, flat, fl, closed, variables)
        jvp = make_jit(_jvp_fn(fun, tree, static, len(flat), fl, closed_t, variables_t))
        with _forward.computing():
            _, t = jvp(tuple(flat), tuple(t_flat), tuple(t_closed), tuple(t_vars))
        return scatter(len(outs), fo, t)

    record.record_operation("tfscan_jit", outs, inputs, backward, forward)
    return outs


def with_graph_gradient(make_jit: Callable, fun: Callable, tree: _tree.TreeDef, static: tuple,
                        flat: list, outs: list, closed: list, variables: list) -> list:
    """``outs`` of a call in a graph through an ``IdentityN`` whose gradient is the compiled
    VJP of ``fun`` (a ``tfscan.jit`` call again, so derivatives of any order nest), as
    :func:`tfscan._lax.branch._with_launch_gradient` does for a conditional. For a function
    holding a TensorFlow conditional: TensorFlow's gradient of the call, built outside XLA's
    context (a tape or accumulator outside a ``tf.function``, a Hessian-vector product),
    saves ``Optional`` intermediates of its ``If`` that XLA cannot compile. Built with
    recording paused (tapes in the graph take :func:`record_call`'s derivatives)."""
    fl = tuple(i for i, t in enumerate(flat) if is_float(t.dtype))
    fo = tuple(i for i, o in enumerate(outs) if is_float(o.dtype))
    n_out, n_in, closed_t, variables_t = len(outs), len(flat), tuple(closed), tuple(variables)
    xla = _tf.in_xla_context()

    def grad(op, *d_all):
        inputs = list(op.inputs)
        flat_ = inputs[n_out: n_out + n_in]
        d = _forward.filled_cotangents(d_all[:n_out], inputs[:n_out], fo)
        # Under XLA's context when the call was (its gradient is compiled whole too).
        with _tf.xla_trace() if xla and not _tf.in_xla_context() else contextlib.nullcontext():
            grads = make_jit(_vjp_fn(fun, tree, static, fl, fo, closed_t, variables_t))(tuple(flat_), tuple(d))
        return [None] * n_out + scatter(n_in, fl, grads[: len(fl)]) + list(grads[len(fl):])

    with record.stop_recording():
        reads = [tf.convert_to_tensor(v) for v in variables]  # a variable's gradient through its read
        return _gradients.graph_owned_identity("TfscanJitGrad", grad, list(outs) + list(flat) + list(closed)
                                               + reads)[:n_out]


def _jvp_fn(fun: Callable, tree: _tree.TreeDef, static: tuple, n: int, fl: tuple, closed: tuple,
            variables: tuple) -> Callable:
    """``fun``'s JVP over ``(leaves, float leaves' tangents, tangents of closed, of
    variables)``: ``(outputs, float outputs' tangents)`` (flat tuples)."""
    def jvp(leaves, t_leaves, t_closed, t_vars):
        watched = list(zip(closed, t_closed)) + list(zip(variables, t_vars))
        outs, t_outs = _forward.jvp_call(lambda *a: _flat_outputs(fun, tree, static, a), list(leaves),
                                         scatter(n, fl, t_leaves), watched)
        return tuple(outs), tuple(t for t in t_outs if t is not None)
    setattr(jvp, _JVP_MARK, getattr(fun, "__name__", None) or repr(fun))
    return jvp


def _vjp_fn(fun: Callable, tree: _tree.TreeDef, static: tuple, fl: tuple, fo: tuple, closed: tuple,
            variables: tuple) -> Callable:
    """``fun``'s VJP over ``(leaves, float outputs' cotangents)``: the gradients of the
    float leaves, then of ``closed`` and ``variables`` (zeros where not reached)."""
    def vjp(leaves, d_outs):
        graph = _tf.default_graph()
        # An eager closed-over tensor is watched as itself: a tape in a trace takes its
        # gradient through its capture (the function's ops) and as the eager tensor that a
        # nested loop's compiled call takes as an input.
        sources = [leaves[i] for i in fl] + [c if _forward.is_eager(c) else _tf.in_graph(graph, c)
                                              for c in closed] + list(variables)
        # Recording even inside a busy accumulator (TensorFlow's JVP of a tf.function call
        # transposes this VJP as it builds it): otherwise the tape sees nothing (zeros).
        with record.forwardprop_state(), tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(sources)
            outs = _flat_outputs(fun, tree, static, leaves)
        grads = tape.gradient([outs[i] for i in fo], sources, output_gradients=list(d_outs),
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tuple(tf.convert_to_tensor(g) for g in grads)
    setattr(vjp, _VJP_MARK, True)
    return vjp


def _flat_outputs(fun: Callable, tree: _tree.TreeDef, static: tuple, leaves: Sequence[Any]) -> list:
    return [tf.convert_to_tensor(v) for v in _tree.flatten(call_flat(fun, tree, static, leaves))[0]]
