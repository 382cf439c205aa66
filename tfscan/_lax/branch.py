"""``cond`` and ``switch``: ``jax.lax.cond`` / ``jax.lax.switch`` as one compiled XLA conditional.

Every branch is traced on the operands' specs (as JAX does), their outputs must agree
in pytree structure, dtype and shape, and only the selected branch runs. Eagerly without
a live forward accumulator, gradients are TensorFlow's own for its conditional. With one,
or a tape in a graph (``_with_jvp``), the conditional has derivatives of its own, as in
JAX: a JVP conditional whose branches are traced under a ``ForwardAccumulator``, and a VJP
conditional of the branches' VJPs (so a JVP of a gradient is right). In a ``tf.function``
the conditional is one ``XlaLaunch`` op (no memory kept per graph) whose outputs pass an
``IdentityN`` carrying that VJP conditional as their gradient (``_with_launch_gradient``),
for ``tf.gradients``, tapes outside the function and a SavedModel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence as SequenceABC
import weakref
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from tfscan import _tf
from tfscan._core import cache as _cache
from tfscan._core import checks as _checks
from tfscan._core import gradients as _gradients
from tfscan._core import context as _context
from tfscan._core import tree as _tree
from tfscan._core.flat import scatter
from tfscan._lax import control as _control
from tfscan._scan import forward as _forward
from tfscan._scan.plan import is_float
from tfscan._tf import record

__all__ = ["cond", "switch"]


def cond(pred: Any, true_fun: Callable[..., Any], false_fun: Callable[..., Any], *operands: Any) -> Any:
    """Apply ``true_fun`` or ``false_fun`` to ``operands``, as ``jax.lax.cond``.

    Semantically::

        def cond(pred, true_fun, false_fun, *operands):
            return true_fun(*operands) if pred else false_fun(*operands)

    but both branches are traced (so their outputs are checked against each other) and
    one XLA conditional runs only the selected one. Inside ``tfscan.disable_jit()`` with
    an eager ``pred`` only the selected branch is called, as plain Python.

    Args:
      pred: a boolean scalar; a number is accepted and means ``pred != 0`` (as in JAX).
        A Python bool, NumPy scalar or scalar tensor (its value may be known only at run time).
      true_fun: called as ``true_fun(*operands)`` when ``pred`` is true.
      false_fun: called as ``false_fun(*operands)`` otherwise. Both must return outputs of
        the same pytree structure, dtypes and shapes (``TypeError`` naming the first
        differing leaf otherwise).
      *operands: pytrees of tensors passed to the branch (Python numbers become
        ``tf.constant``s). Closed-over tensors and variables work too.

    Returns:
      The selected branch's output.

    Example:

    >>> import tensorflow as tf, tfscan
    >>> x = tf.constant([1.0, 2.0])
    >>> tfscan.cond(x[0] > 0, lambda v: v * 10, lambda v: -v, x).numpy().tolist()
    [10.0, 20.0]
    >>> tfscan.cond(False, lambda a, b: a + b, lambda a, b: a - b, 5, 3).numpy().item()
    2
    """
    if not (callable(true_fun) and callable(false_fun)):
        raise TypeError("cond: true_fun and false_fun arguments should be callable, got "
                        f"true_fun={true_fun!r:.60} and false_fun={false_fun!r:.60}.")
    pred = _predicate(pred)
    if _context.jit_disabled() and tf.executing_eagerly():
        return _as_compiled(true_fun(*operands) if bool(pred) else false_fun(*operands))
    return _select("cond", pred, [true_fun, false_fun], ["true_fun", "false_fun"], operands,
                   lambda p, fns: tf.cond(p, fns[0], fns[1]))


def switch(index: Any, branches: Sequence[Callable[..., Any]], *operands: Any) -> Any:
    """Apply ``branches[index]`` to ``operands``, as ``jax.lax.switch``.

    Semantically::

        def switch(index, branches, *operands):
            index = min(max(index, 0), len(branches) - 1)  # clamped, as in JAX
            return branches[index](*operands)

    run as one XLA conditional after tracing every branch (their outputs must have the
    same pytree structure, dtypes and shapes). An out-of-range ``index`` is clamped, so
    ``-1`` selects branch 0 and ``len(branches)`` the last one.

    Args:
      index: an integer scalar (Python int, NumPy integer or integer tensor; not bool).
      branches: a non-empty sequence of callables, each called as ``branch(*operands)``.
        With a single branch it is simply called (as in JAX).
      *operands: pytrees of tensors passed to the selected branch.

    Returns:
      The output of the selected branch.

    Example:

    >>> import tensorflow as tf, tfscan
    >>> fns = [lambda x: x + 1.0, lambda x: x * 2.0, lambda x: -x]
    >>> [float(tfscan.switch(i, fns, 3.0)) for i in (0, 1, 2, 7, -1)]
    [4.0, 6.0, -3.0, -3.0, 4.0]
    """
    if isinstance(branches, (str, bytes)) or not isinstance(branches, (SequenceABC, np.ndarray)) \
            or not all(callable(b) for b in branches):
        raise TypeError("switch: branches argument should be a sequence of callables, got "
                        f"{branches!r:.100}.")
    branches = list(branches)
    index = _index(index)
    if not branches:
        raise ValueError("switch: branches is an empty sequence; pass at least one branch.")
    if len(branches) == 1:
        return branches[0](*operands)
    hi = len(branches) - 1
    index = tf.cast(tf.clip_by_value(index, tf.cast(0, index.dtype), tf.cast(hi, index.dtype)), tf.int32)
    if _context.jit_disabled() and tf.executing_eagerly():
        return _as_compiled(branches[int(index)](*operands))
    names = [f"branches[{i}]" for i in range(len(branches))]
    return _select("switch", index, branches, names, operands, tf.switch_case)


def _as_compiled(out: Any) -> Any:
    """A branch's result run as Python (``disable_jit``) as the compiled conditional returns
    it: every leaf a tensor (a Python ``1.0`` comes back as a float32 tensor)."""
    leaves, treedef = _tree.flatten(out)
    return _tree.unflatten(treedef, [tf.convert_to_tensor(v) for v in leaves])


def _scalar(value: Any, api: str, arg: str, kind: str) -> tf.Tensor:
    """``value`` (a Python number, a tensor or a variable) as a scalar tensor."""
    if isinstance(value, (SequenceABC, str, bytes)):
        raise TypeError(f"{api}: {arg} must be {kind} scalar, got {value!r:.60} of type {type(value).__name__}.")
    try:
        t = tf.convert_to_tensor(value.value() if isinstance(value, tf.Variable) else value)
    except (TypeError, ValueError):
        raise TypeError(f"{api}: {arg} must be {kind} scalar, got {value!r:.60}.") from None
    if t.shape.rank != 0:
        raise TypeError(f"{api}: {arg} must be a scalar, got a tensor of shape {t.shape}.")
    return t


def _predicate(pred: Any) -> tf.Tensor:
    if pred is None:
        raise TypeError("cond: pred is None; pass a boolean scalar.")
    t = _scalar(pred, "cond", "pred", "a boolean or number")
    if t.dtype == tf.bool:
        return t
    if t.dtype.is_integer or t.dtype.is_floating:
        return tf.not_equal(t, tf.zeros([], t.dtype))
    raise TypeError(f"cond: pred must be a boolean or a number, got dtype {t.dtype.name}.")


def _index(index: Any) -> tf.Tensor:
    t = _scalar(index, "switch", "index", "an integer")
    if not t.dtype.is_integer or t.dtype == tf.bool:
        raise TypeError(f"switch: index must be an integer, got {index!r:.60} of dtype {t.dtype.name}.")
    return t


def _select(api: str, selector: tf.Tensor, fns: list, names: list, operands: tuple, choose,
            derivative: bool = False) -> Any:
    """Trace every branch on the operands, check their outputs agree, run the chosen one.

    ``derivative``: the conditional computes another one's VJP or JVP (its outputs are
    differentiated, if at all, by tapes or accumulators live now): it is then called with
    recording paused, and is a call under XLA too (see ``_control.run``)."""
    leaves, _, op_tree = _control.to_tensors(api, tuple(operands), "operands")
    op_specs = _control.specs(leaves)
    key = (op_tree, op_specs)

    def make_build(meta: dict):
        def build(sel, *args):
            seen: list = []

            def branch(k: int):
                def run():
                    out = fns[k](*_tree.unflatten(op_tree, list(args)))
                    # The trainable variables the branch read (for the own VJP, ``_with_jvp``).
                    meta.setdefault("variables", {}).update(
                        {id(v): weakref.ref(v) for v in _tf.graph_variables(_tf.default_graph()) if v.trainable})
                    out_leaves, out_paths, out_tree = _tree.flatten_with_paths(out, "output")
                    out_leaves = [_checks.output_tensor(v, p, api, names[k]) for v, p in zip(out_leaves, out_paths)]
                    # Leaves every branch returns unchanged are forwarded past the conditional
                    # (as JAX does): an unbatched operand stays unbatched under vmap.
                    same = [next((i for i, a in enumerate(args) if v is a), None) for v in out_leaves]
                    meta["forward"] = same if "forward" not in meta else [
                        a if a == b else None for a, b in zip(meta["forward"], same)]
                    mine = (out_tree, _control.specs(out_leaves))
                    if seen:
                        _control.check_same_outputs(api, names[seen[0][0]], names[k], seen[0][1], mine)
                    else:
                        seen.append((k, mine))
                    meta["tree"] = out_tree
                    return out_leaves
                return run

            outs = choose(sel, [branch(k) for k in range(len(fns))])
            return [] if outs is None else list(outs)

        return build

    # Any live accumulator (a busy one's tangents of an operand are not visible here): the
    # conditional then never reaches TensorFlow's own forward rule for it. A tape in a graph
    # outside XLA too: TensorFlow's gradient of the compiled call would save ``Optional``
    # intermediates, which XLA cannot compile.
    own_jvp = bool(leaves) and (bool(record.pack_tangents(leaves).indices) or (
        not tf.executing_eagerly() and not _context.in_xla_context() and record.could_possibly_record()))
    # An eager tensor the branches close over that an accumulator differentiates: the
    # conditional is traced on a fresh thread (TensorFlow's forward rule of the conditional
    # in a trace that captures it fails), with derivatives of its own, which see the tensor.
    alone = _traced_alone(fns)
    own_jvp = own_jvp or alone
    read: list = []  # what the program read in place of its captures (filled when called)
    try:
        if own_jvp:
            # Neither tapes nor accumulators see the operands reach TensorFlow's conditional:
            # they take the derivatives recorded by ``_with_jvp``. (The conditional is not
            # traced with recording paused: a JVP conditional's branches record inside.)
            with record.stop_recording():
                hidden = [tf.identity(t) for t in leaves]
            outs, meta = _control.run(api, fns, key, make_build, [selector] + hidden, run_time=[0],
                                      own_derivatives=True, alone=alone, read=read)
        else:
            # The selector is a run-time value of the program (the conditional's branch index).
            outs, meta = _control.run(api, fns, key, make_build, [selector] + leaves, run_time=[0],
                                      own_derivatives=derivative, read=read)
    except AttributeError as e:
        if "Tensor.graph is undefined" not in str(e):
            raise
        # TensorFlow's forward rule of the conditional, in its trace, met a tangent of a
        # tensor the branches read through an object the closure walk does not open.
        raise TypeError(
            f"{api}: forward mode (tf.autodiff.ForwardAccumulator) through {api} does not reach "
            f"a tensor that a branch ({', '.join(names)}) reads and that is being differentiated "
            f"(tfscan finds the tensors a branch closes over in its closure cells, defaults and "
            f"globals, not inside other objects). Pass that tensor to {api} as an operand "
            f"({api}(..., *operands)).") from None
    variables = [v for v in (r() for r in meta.get("variables", {}).values()) if v is not None]
    # Launched, or a call under XLA (which inlines it) with derivatives of its own: the
    # graph's gradient is the VJP conditional too (TensorFlow's gradient of the call's ``If``
    # would save ``Optional``s when built outside XLA's context: a Hessian-vector product).
    # Inline under XLA in a function of the user's (a held ``jit_compile`` function, a
    # ``tfscan.jit``) too: a tape outside it differentiates the function from outside XLA's
    # context, where TensorFlow's gradient of the inline ``If`` saves ``Optional``s that the
    # function, compiled by XLA, cannot hold (TensorFlow's own ``tf.cond`` fails there alike).
    # That ``IdentityN`` is recorded by a tape live inside (whose gradient it then gives).
    inline = _context.in_xla_context() and not (own_jvp or derivative)
    if tf.executing_eagerly() or not outs:
        called = False
    elif not _context.in_xla_context():
        called = outs[0].op.type == "XlaLaunch"
    else:
        called = not inline or not (_context.in_internal_trace() or _context.in_vmap_trace())
    if called and any(is_float(o.dtype) for o in outs):
        outs = _with_launch_gradient(api, selector, fns, names, hidden if own_jvp else leaves, outs, op_tree,
                                     choose, variables, read, recorded=inline)
    forward = meta.get("forward") or [None] * len(outs)
    outs = [leaves[i] if i is not None else o for o, i in zip(outs, forward)]
    if own_jvp:
        outs = _with_jvp(api, selector, fns, names, leaves, outs, op_tree, choose, variables, read)
    return _tree.unflatten(meta["tree"], outs)


def _with_jvp(api: str, selector, fns: list, names: list, leaves: list, outs: list, op_tree, choose,
              variables: list, read: list) -> list:
    """``outs`` recorded with derivatives of their own, as JAX differentiates a conditional.

    Forward mode (accumulators): the conditional over ``(operands, their tangents, the
    tangents of what the branches close over)`` whose branches run under a
    ``ForwardAccumulator`` in their trace (each op by its own forward rule, a nested
    run-time-bounded loop too). Reverse mode (tapes): the conditional of the branches' VJPs,
    which recompute the taken branch. TensorFlow's own gradient of its conditional reads
    intermediates of the forward conditional that it adds after the accumulators recorded
    it, so they would have no tangents: a forward-over-reverse derivative (a JVP of a
    gradient) would silently miss their terms. Both are conditionals of this kind again (a
    JVP of a JVP, or of a VJP, nests).
    """
    held, closed = _closed_tensors(fns, read)
    in_place = list(zip(held, closed))  # what the derivative programs are fed for ``held``
    fl = tuple(i for i, t in enumerate(leaves) if is_float(t.dtype))
    fo = tuple(i for i, o in enumerate(outs) if is_float(o.dtype))
    for v in variables:
        _tf.mark_variable_accessed(v)  # so that the tapes watch it
    with record.stop_recording():
        shown = [tf.identity(o) for o in outs]
    # A variable's handle as an accumulator in this graph watches it (its capture here).
    graph = _tf.default_graph()
    inputs = list(leaves) + [_tf.in_graph(graph, c) for c in closed] + [_tf.in_graph(graph, v.handle) for v in variables]

    def backward(*d_outs):
        d = _forward.filled_cotangents(d_outs, outs, fo)
        vjp_fns = [_branch_vjp(f, op_tree, fl, fo, tuple(held), tuple(variables)) for f in fns]
        with _context.fed_in_place(in_place):
            grads = _select(api, selector, vjp_fns, [f"vjp of {n}" for n in names], (tuple(leaves), tuple(d)),
                            choose, derivative=True)
        return scatter(len(leaves), fl, grads[: len(fl)]) + list(grads[len(fl):])

    def forward(*tangents):
        t_leaves, t_closed, t_vars = _forward.filled_tangents(tangents, leaves, fl, closed, variables)
        jvp_fns = [_branch_jvp(f, op_tree, len(leaves), fl, tuple(held), tuple(variables)) for f in fns]
        with _forward.computing(), _context.fed_in_place(in_place):
            _, t = _select(api, selector, jvp_fns, [f"jvp of {n}" for n in names],
                           (tuple(leaves), tuple(t_leaves), tuple(t_closed), tuple(t_vars)), choose, derivative=True)
        return scatter(len(outs), fo, t)

    record.record_operation(f"tfscan_{api}", shown, inputs, backward, forward)
    return shown


def _with_launch_gradient(api: str, selector, fns: list, names: list, ins: list, outs: list, op_tree, choose,
                          variables: list, read: list, recorded: bool = False) -> list:
    """``outs`` of the conditional launched as one ``XlaLaunch`` op, through an ``IdentityN``
    whose gradient is the conditional of the branches' VJPs (as ``_with_jvp``'s backward).

    ``tf.gradients`` and a tape outside the ``tf.function`` differentiate the graph op by op:
    the ``IdentityN`` gives them this VJP (itself such a conditional, so derivatives of any
    order nest), and gives the ``XlaLaunch`` op no cotangent. TensorFlow's own gradient of
    the launched function would differentiate its ``If``, whose second derivative saves
    ``Optional`` intermediates XLA cannot compile. The gradient function is set on the op
    (it lives and dies with the graph); a name is registered too (removed with the graph),
    under which ``tf.saved_model`` saves it, so a loaded model keeps the gradient.
    ``recorded``: live tapes and accumulators record the ``IdentityN`` (a conditional emitted
    inline, which they recorded too), instead of seeing none of it.
    """
    held, closed = _closed_tensors(fns, read)
    fl = tuple(i for i, t in enumerate(ins) if is_float(t.dtype))
    fo = tuple(i for i, o in enumerate(outs) if is_float(o.dtype))
    n_out, n_in = len(outs), len(ins)
    xla = _context.in_xla_context()

    def grad(op, *d_all):
        inputs = list(op.inputs)
        sel, ins_ = inputs[n_out], inputs[n_out + 1: n_out + 1 + n_in]
        # the outputs as this op passes them on (see ``autodiff._register_gradient``)
        d = _forward.filled_cotangents(d_all[:n_out], list(op.outputs[:n_out]), fo)
        vjp_fns = [_branch_vjp(f, op_tree, fl, fo, tuple(held), tuple(variables)) for f in fns]
        # Launched too, with a gradient of its own (and recorded on live tapes): TensorFlow's
        # JVP of a tf.function transposes this gradient, which then differentiates that one.
        # Under XLA's context when the conditional was (TensorFlow compiles the gradient of a
        # jit_compile function too): a call XLA inlines, never an XlaLaunch op it cannot hold.
        # This op may be a copy (a step's ops imported into a loop or a VJP graph): the
        # branches close over the original's tensors, and the copy's inputs stand for them.
        copied = inputs[n_out + 1 + n_in: n_out + 1 + n_in + len(closed)]
        with _tf.xla_trace() if xla and not _context.in_xla_context() else contextlib.nullcontext(), \
                _context.fed_in_place(list(zip(held, copied))):
            grads = _select(api, sel, vjp_fns, [f"vjp of {n}" for n in names], (tuple(ins_), tuple(d)), choose,
                            derivative=True)
        return [None] * (n_out + 1) + scatter(n_in, fl, grads[: len(fl)]) + list(grads[len(fl):])

    with contextlib.nullcontext() if recorded else record.stop_recording():
        # A variable's gradient reaches it through a read of it (a resource input would not
        # load: a SavedModel's gradient function takes one float cotangent per output).
        reads = [tf.convert_to_tensor(v) for v in variables]
        return _gradients.graph_owned_identity(f"Tfscan{api.capitalize()}Grad", grad,
                                               list(outs) + [selector] + list(ins) + closed + reads)[:n_out]


def _traced_alone(fns: list) -> bool:
    """Whether the conditional of ``fns`` is traced on a fresh thread, unseen by the live
    accumulators (:func:`tfscan._core.context.traced_alone`): called eagerly while one is
    live (the branches may read, through any object, an eager tensor or a variable it
    differentiates), or in a graph when they close over a tensor one differentiates or
    read objects the closure walk does not open (which may hold one)."""
    if not record.accumulators():
        return False
    if tf.executing_eagerly():
        return True
    closures = [_cache.closure(f) for f in fns]
    return not all(c.exact for c in closures) or bool(record.tangent_indices([t for c in closures for t in c.tensors]))


def _closed_tensors(fns: list, read: Sequence = ()) -> tuple[list, list]:
    """The float tensors the branches close over, then the other float tensors in ``read``
    (what their program read), each once: as the branches' Python closures hold them, and
    as this graph feeds them (the same, except inside a copied op's gradient,
    :func:`tfscan._core.context.fed_in_place`)."""
    held = [t for f in fns for t in _cache.closure(f).tensors]
    seen: dict = {}
    for h, t in zip(held + list(read), _context.in_place_of(held) + list(read)):
        if isinstance(t, tf.Tensor) and is_float(t.dtype):
            seen.setdefault(id(t), (h, t))
    return [h for h, _ in seen.values()], [t for _, t in seen.values()]


def _flat_call(fn: Callable, op_tree: _tree.TreeDef) -> Callable:
    def flat(*args):
        out = fn(*_tree.unflatten(op_tree, list(args)))
        return [tf.convert_to_tensor(v) for v in _tree.flatten(out)[0]]
    return flat


def _branch_vjp(fn: Callable, op_tree: _tree.TreeDef, fl: tuple, fo: tuple, closed: tuple,
                variables: tuple) -> Callable:
    """``fn``'s VJP as a branch over ``(operands, float output cotangents)``: the gradients of
    the float operands, then of ``closed`` and ``variables`` (zeros where not reached)."""
    def vjp_branch(leaves, d_outs):
        graph = _tf.default_graph()
        # A closed-over tensor from outside this graph (eager, or an outer graph's) is watched
        # as itself: the tape takes its gradient through its capture (the branch's ops, captured
        # while it records) and as the tensor a nested loop takes as an input (watching the
        # capture alone missed that term).
        sources = [leaves[i] for i in fl] + [c if _forward.outside(c, graph) else _tf.in_graph(graph, c)
                                             for c in closed] + list(variables)
        with record.forwardprop_state(), tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(sources)
            outs = _flat_call(fn, op_tree)(*leaves)
        grads = tape.gradient([outs[i] for i in fo], sources, output_gradients=list(d_outs),
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tuple(tf.convert_to_tensor(g) for g in grads)
    return vjp_branch


def _branch_jvp(fn: Callable, op_tree: _tree.TreeDef, n: int, fl: tuple, closed: tuple = (),
                variables: tuple = ()) -> Callable:
    """``fn``'s JVP as a branch over ``(operands, float operand tangents, tangents of
    ``closed``, tangents of ``variables``)`` (flat tuples); closes over hashable values and
    the tensors ``fn`` closes over, so the JVP conditional is cached (tfscan._core.cache)."""
    def jvp_branch(leaves, t_leaves, t_closed=(), t_vars=()):
        watched = list(zip(closed, t_closed)) + list(zip(variables, t_vars))
        outs, t_outs = _forward.jvp_call(_flat_call(fn, op_tree), list(leaves), scatter(n, fl, t_leaves), watched)
        return tuple(outs), tuple(t for t in t_outs if t is not None)
    return jvp_branch
