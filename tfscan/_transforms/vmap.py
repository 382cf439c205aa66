"""``vmap``: JAX's vectorizing map, by ``pfor`` with tfscan's batching rules, compiled by XLA.

The function is traced once per example (on slices without the batch axis), and
TensorFlow's ``pfor`` converter rewrites that graph into one on the whole batch; a
scan inside becomes one tfscan scan of the batched step (the scan's batching rule,
``scan_batching``), other loops one ``While`` over the batched carry (``batching``).
The result runs as one XLA computation. Its gradient, when every loop in it is such a
scan, is TensorFlow's gradient of the batched program (in a graph): one batched
backward loop reading the residuals the batched forward loop saved, as in JAX.
Otherwise (an eager tape, a variable read inside, another loop) it is the vmapped
per-example gradient (``grad(vmap(f)) == vmap(vjp(f))`` summed where an input is
shared), which recomputes each example's forward pass.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import numbers
import re
import threading
import weakref
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from tfscan import _tf
from tfscan._core import cache as _cache
from tfscan._core import checks as _checks
from tfscan._core import context as _context
from tfscan._core import gradients as _gradients
from tfscan._core import tree as _tree
from tfscan._scan.plan import is_float
from tfscan._tf import record
from tfscan._transforms import batching as _batching

__all__ = ["vmap"]



def vmap(fun: Callable[..., Any], in_axes: Any = 0, out_axes: Any = 0,
         axis_size: int | None = None) -> Callable[..., Any]:
    """Vectorize ``fun`` over an axis of its inputs, as ``jax.vmap``.

    ``vmap(f)(xs)`` equals stacking ``f(x)`` over the slices ``x`` of ``xs``, computed
    as one batched XLA program: every op of ``f`` is rewritten to work on the whole
    batch, and a :func:`tfscan.scan` inside ``f`` becomes a single loop over a batched
    carry (it is not run once per example).

    Args:
      fun: the function to vectorize; it takes and returns nests (tuples, lists,
        dicts, namedtuples; ``None`` is an empty subtree) of tensors.
      in_axes: which axis of each positional argument is mapped: an int (negative
        counts from the end), ``None`` (the argument is shared by every example and
        passed as is), or a tuple with one entry per positional argument whose
        entries may be nests that are tree prefixes of the argument. Keyword
        arguments are always mapped over their axis 0.
      out_axes: where the batch axis goes in each output: an int, ``None`` (the
        output must not depend on the mapped inputs) or a nest that is a tree prefix
        of the output.
      axis_size: the batch size; needed only when no input is mapped.

    Returns:
      The batched function, taking the same arguments as ``fun``.

    Raises:
      ValueError: (when called) mapped axes of different sizes, an axis out of range,
        or ``in_axes``/``out_axes`` that do not match the arguments' structure; the
        message names the argument.

    Example:

    >>> import tensorflow as tf, tfscan
    >>> def cumsum(x):
    ...     return tfscan.scan(lambda c, v: (c + v, c + v), 0.0, x)[1]
    >>> tfscan.vmap(cumsum)(tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])).numpy().tolist()
    [[1.0, 3.0, 6.0], [4.0, 9.0, 15.0]]
    >>> tfscan.vmap(lambda x, w: x * w, in_axes=(1, None))(tf.ones([2, 3]), 2.0).shape
    TensorShape([3, 2])
    """
    if not callable(fun):
        raise TypeError(f"vmap: fun must be callable, got {fun!r:.80}.")
    if isinstance(in_axes, list):
        in_axes = tuple(in_axes)  # as jax.vmap: a list at the top level means a tuple
    if not (_is_axis(in_axes) or type(in_axes) is tuple):
        raise TypeError(
            "vmap: in_axes must be an int, None, or a tuple with one entry per positional argument "
            f"(entries may be nests matching the arguments), got {type(in_axes).__name__} {_short(in_axes)}. "
            f"For one argument, write in_axes=({_short(in_axes)},).")
    _check_axes_spec(in_axes, "in_axes")
    _check_axes_spec(out_axes, "out_axes")
    if axis_size is not None:
        if isinstance(axis_size, (bool, np.bool_)) or not isinstance(axis_size, numbers.Integral) \
                or axis_size < 0:
            raise TypeError(f"vmap: axis_size must be None or a non-negative int, got {axis_size!r}.")
        axis_size = int(axis_size)
    names = _arg_names(fun)

    @functools.wraps(fun, updated=())
    def batched(*args: Any, **kwargs: Any) -> Any:
        return _call(fun, names, in_axes, out_axes, axis_size, args, kwargs)

    return batched


# ------------------------------------------------------------------------------------------
# Axis specifications.

def _is_axis(a: Any) -> bool:
    return a is None or (isinstance(a, numbers.Integral) and not isinstance(a, (bool, np.bool_)))


def _check_axes_spec(spec: Any, what: str, path: str = "") -> None:
    if _is_axis(spec):
        return
    node = _tree._children(spec)
    if node is None:
        raise TypeError(
            f"vmap: {what} must be an int, None, or a tuple/list/dict of them matching the "
            f"{'arguments' if what == 'in_axes' else 'outputs'}, got {type(spec).__name__} "
            f"{spec!r:.80}{' at ' + what + path if path else ''}.")
    for suffix, child in node[2]:
        _check_axes_spec(child, what, path + suffix)


def _broadcast_axes(spec: Any, value: Any, what: str, spec_path: str, value_path: str) -> list:
    """One axis per leaf of ``value`` (in flattening order) from the prefix tree ``spec``."""
    if _is_axis(spec):
        return [spec] * len(_tree.flatten(value)[0])
    s_kind, s_aux, s_items = _tree._children(spec)
    v_node = _tree._children(value)
    if v_node is None or v_node[0] != s_kind or v_node[1] != s_aux or len(v_node[2]) != len(s_items):
        v_desc = str(_tree.flatten(value)[1]) if v_node is not None else f"a leaf ({_describe(value)})"
        raise ValueError(
            f"vmap: {what} specification must be a tree prefix of the corresponding value: "
            f"{spec_path} is {_short(spec)} but {value_path} has structure {v_desc}. Give {spec_path} "
            "an int or None for the whole value, or a nest with the value's structure.")
    out: list = []
    for (suffix, s_child), (_, v_child) in zip(s_items, v_node[2]):
        out.extend(_broadcast_axes(s_child, v_child, what, spec_path + suffix, value_path + suffix))
    return out


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(x: Any) -> str:
    if isinstance(x, (tf.Tensor, tf.Variable, np.ndarray)):
        return f"{tf.as_dtype(x.dtype).name}{list(x.shape)}"
    return f"{type(x).__name__} {_short(x)}"


def _arg_names(fun: Callable) -> list[str] | None:
    try:
        params = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):
        return None
    names = []
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            names.append(None)  # *args: positional index from here on
            break
    return names


def _arg_label(names: list[str] | None, i: int) -> str:
    if names and i < len(names) and names[i] is not None:
        return names[i]
    return f"args[{i}]"


# ------------------------------------------------------------------------------------------
# The call.

class _Leaf:
    """One input leaf: its path, its mapped axis (or None), and what is passed."""

    __slots__ = ("path", "axis", "value", "kind")

    def __init__(self, path: str, axis: int | None, value: Any, kind: str):
        self.path, self.axis, self.value, self.kind = path, axis, value, kind  # kind: mapped/tensor/static


def _call(fun, names, in_axes, out_axes, axis_size, args, kwargs):
    if isinstance(in_axes, tuple) and len(in_axes) != len(args):
        raise ValueError(
            f"vmap: in_axes is a tuple of length {len(in_axes)} but the function was called with "
            f"{len(args)} positional argument{'s' if len(args) != 1 else ''}. in_axes must be an int, "
            "None, or a tuple with one entry per positional argument (keyword arguments are always "
            "mapped over axis 0).")
    # Flatten (args, kwargs) together; compute every leaf's axis with its path for errors.
    leaves: list[_Leaf] = []
    for i, arg in enumerate(args):
        label = _arg_label(names, i)
        spec = in_axes[i] if isinstance(in_axes, tuple) else in_axes
        spec_path = f"in_axes[{i}]" if isinstance(in_axes, tuple) else "in_axes"
        axes = _broadcast_axes(spec, arg, "in_axes", spec_path, label)
        values, paths, _ = _tree.flatten_with_paths(arg, label)
        leaves.extend(_make_leaf(p, a, v) for p, a, v in zip(paths, axes, values))
    for key in sorted(kwargs):
        values, paths, _ = _tree.flatten_with_paths(kwargs[key], key)
        leaves.extend(_make_leaf(p, 0, v) for p, v in zip(paths, values))
    args_tree = _tree.flatten((tuple(args), dict(kwargs)))[1]
    size = _batch_size(leaves, axis_size)
    if _context.jit_disabled() and isinstance(size, int) and size > 0:
        return _python_loop(fun, args_tree, leaves, size, out_axes)

    mapped = [lf.value for lf in leaves if lf.kind == "mapped"]
    shared = [lf.value for lf in leaves if lf.kind == "tensor"]
    # What the traced functions need from this call: no tensor values (they are inputs).
    templates = tuple(_Leaf(lf.path, lf.axis, lf.value if lf.kind == "static" else None, lf.kind) for lf in leaves)
    static_key = tuple((j, _cache.static_key(lf.value)) for j, lf in enumerate(leaves) if lf.kind == "static")
    closure = _cache.closure(fun)
    key = (closure.pinned_key, args_tree, tuple((lf.kind, lf.axis) for lf in leaves), static_key,
           _spec_key(out_axes), axis_size, tuple(_spec(t) for t in mapped + shared))
    make = lambda: _Batched(fun, args_tree, templates, size, out_axes, mapped, shared, closure.tensors)  # noqa: E731
    entry, created = _cache.lookup("vmap", key, make)
    if not created and not entry.feed_run.complete and not entry.owner.owns(fun):
        entry = make()  # it read tensors the key cannot see: reuse it only for the same function
        _cache.put("vmap", key, entry)
    # This call's closed-over tensors replace those the traces captured.
    captured = entry.feed_run.values(entry.run.captured_inputs, closure.tensors)
    if _needs_gradient(mapped + shared + captured, entry) and not _native_gradient(entry, mapped + shared + captured):
        with record.stop_recording():
            outs = _tf.call_concrete(entry.run, mapped + shared, captured, xla=True)
        outs = _with_gradient(entry, outs, mapped, shared,
                              entry.feed_pe.values(entry.pe.captured_inputs, closure.tensors))
    else:
        outs = _tf.call_concrete(entry.run, mapped + shared, captured, xla=True)
    return _tree.unflatten(entry.out_tree, outs)


def _python_loop(fun, args_tree, leaves, size, out_axes):
    """``disable_jit``: call ``fun`` once per example, eagerly, and stack the results."""
    results = []
    for i in range(size):
        values = [tf.gather(lf.value, i, axis=lf.axis) if lf.kind == "mapped" else lf.value for lf in leaves]
        a, kw = _tree.unflatten(args_tree, values)
        results.append(fun(*a, **kw))
    out_leaves, out_paths, out_tree = _tree.flatten_with_paths(results[0], "output")
    axes = _broadcast_axes(out_axes, results[0], "out_axes", "out_axes", "output")
    per_example = [_tree.flatten(r)[0] for r in results]
    outs = []
    for j, (axis, path) in enumerate(zip(axes, out_paths)):
        column = [_checks.output_tensor(r[j], path, "vmap", "the function") for r in per_example]
        if axis is None:
            outs.append(column[0])
            continue
        rank = column[0].shape.rank + 1
        if not -rank <= axis < rank:
            raise ValueError(f"vmap: out_axes={axis} is out of range for output {path}, which has rank "
                             f"{rank - 1} (so the batch axis can go in [{-rank}, {rank - 1}]).")
        outs.append(tf.stack(column, axis=axis % rank))
    return _tree.unflatten(out_tree, outs)


def _make_leaf(path: str, axis: int | None, value: Any) -> _Leaf:
    if axis is None:
        if isinstance(value, (tf.Tensor, tf.Variable, np.ndarray)) or _is_tensor_like(value):
            if isinstance(value, tf.Variable):
                return _Leaf(path, None, value, "static")  # read inside, like a closed-over variable
            return _Leaf(path, None, tf.convert_to_tensor(value), "tensor")
        return _Leaf(path, None, value, "static")
    try:
        t = tf.convert_to_tensor(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"vmap: argument {path} is mapped (axis {axis}) but is {type(value).__name__} "
            f"{_short(value)}, not a tensor. Pass a tensor or NumPy array, or use None in in_axes for "
            "it.") from None
    if t.dtype in (tf.string, tf.resource, tf.variant):
        raise TypeError(f"vmap: argument {path} is mapped (axis {axis}) but is a {t.dtype.name} tensor; only "
                        "numeric and bool tensors can be mapped. Use None in in_axes for it.")
    rank = t.shape.rank
    if rank is None:
        raise ValueError(f"vmap: argument {path} has unknown rank; vmap needs the rank to place the "
                         "mapped axis.")
    if not -rank <= axis < rank:
        raise ValueError(
            f"vmap was requested to map argument {path} along axis {axis}, which implies that its rank "
            f"should be at least {axis + 1 if axis >= 0 else -axis}, but it is only {rank} (its type is "
            f"{_describe(t)}). Fix in_axes for {path}.")
    return _Leaf(path, axis % rank, t, "mapped")


def _is_tensor_like(x: Any) -> bool:
    return hasattr(x, "__tf_tensor__")


def _batch_size(leaves: Sequence[_Leaf], axis_size: int | None) -> Any:
    mapped = [lf for lf in leaves if lf.kind == "mapped"]
    if not mapped:
        if axis_size is None:
            raise ValueError(
                "vmap must have at least one non-None value in in_axes (or be given axis_size): no "
                "argument is mapped, so the batch size is unknown.")
        return axis_size
    sizes = [(lf, lf.value.shape[lf.axis]) for lf in mapped]
    known = [(lf, n) for lf, n in sizes if n is not None]
    if axis_size is not None:
        known = [(None, axis_size)] + known
    if len({n for _, n in known}) > 1:
        lines = [f"  * axis_size={n}" if lf is None else
                 f"  * axis {lf.axis} of argument {lf.path} of type {_describe(lf.value)} has size {n}"
                 for lf, n in known]
        raise ValueError("vmap got inconsistent sizes for the array axes to be mapped:\n" + "\n".join(lines)
                         + "\nEvery mapped axis must have the same size.")
    if known:
        return int(known[0][1])
    first = mapped[0]
    return tf.shape(first.value, out_type=tf.int32)[first.axis]


def _spec(t: tf.Tensor) -> tuple:
    return (tuple(t.shape.as_list()) if t.shape.rank is not None else None, t.dtype)


def _spec_key(spec: Any) -> Any:
    leaves, treedef = _tree.flatten(spec) if not _is_axis(spec) else ([spec], _tree.LEAF)
    return (treedef, tuple(leaves))


def _move_to_front(t: tf.Tensor, axis: int) -> tf.Tensor:
    if axis == 0:
        return t
    rank = t.shape.rank
    return tf.transpose(t, [axis] + [d for d in range(rank) if d != axis])


def _move_from_front(t: tf.Tensor, axis: int) -> tf.Tensor:
    if axis == 0:
        return t
    rank = t.shape.rank
    perm = list(range(1, rank))
    perm.insert(axis, 0)
    return tf.transpose(t, perm)


class _Batched:
    """``fun`` on one example (a concrete function), and batched and compiled by XLA.

    ``pe`` is ``fun`` on the flat per-example inputs (mapped slices, then shared tensors),
    traced once; its captured inputs are what ``fun`` closes over. ``run`` maps ``pe`` over
    the batch with ``pfor`` and is compiled as one XLA computation. The gradient calls
    ``pe`` with explicit captured inputs, so it stays right when the graph that holds
    this call is copied elsewhere (as a scan step is).
    """

    def __init__(self, fun, args_tree, templates, size, out_axes, mapped, shared, slots=()):
        self.templates, self.out_axes_spec = templates, out_axes
        # A per-example VJP (``_backward``) reads the residuals of the scans it differentiates.
        self.whole_scans = not getattr(_vjp_state, "depth", 0)
        self.size = size if isinstance(size, int) else None
        self.mapped_axes = [lf.axis for lf in templates if lf.kind == "mapped"]

        n_mapped = len(self.mapped_axes)

        def per_example(*flat):  # mapped slices first, then shared tensors
            it_m, it_s = iter(flat[:n_mapped]), iter(flat[n_mapped:])
            values = [next(it_m) if lf.kind == "mapped" else next(it_s) if lf.kind == "tensor" else lf.value
                      for lf in templates]
            a, kw = _tree.unflatten(args_tree, values)
            out = fun(*a, **kw)
            out_leaves, self.out_paths, self.out_tree = _tree.flatten_with_paths(out, "output")
            self.out_axes = _broadcast_axes(out_axes, out, "out_axes", "out_axes", "output")
            return [_checks.output_tensor(v, p, "vmap", "the function") for v, p in zip(out_leaves, self.out_paths)]

        example_specs = [tf.TensorSpec(_drop(t.shape, ax), t.dtype) for t, ax in zip(mapped, self.mapped_axes)] + \
            [tf.TensorSpec(t.shape, t.dtype) for t in shared]
        with _context.internal_trace(), _context.vmap_trace():
            self.pe = tf.function(per_example, autograph=False).get_concrete_function(*example_specs)
        self.out_dtypes = [t.dtype for t in self.pe.outputs]
        self.function = _tf.quiet_retracing(
            tf.function(self._batched, jit_compile=True, autograph=False, reduce_retracing=False))
        loops = _batching.loops_batched()
        with _tf.xla_trace():  # a scan traced here is compiled inline, as in the function's call
            self.run = self.function.get_concrete_function(
                *[tf.TensorSpec(t.shape, t.dtype) for t in list(mapped) + list(shared)])
        captured = list(self.pe.captured_inputs)
        by_handle = {id(v.handle): v for v in self.pe.graph.variables}
        self.variables = [by_handle.get(id(c)) for c in captured]  # the variable of each resource capture
        # Every loop in the batched program is a tfscan scan (batched whole by its rule, with its
        # own VJP) and no variable is read: TensorFlow differentiates ``run`` itself, so the
        # gradient is one batched backward pass reading the batched forward's residuals.
        self.native = _batching.loops_batched() == loops and all(v is None for v in self.variables)
        self.feed_pe = _cache.Feed(captured, slots)
        self.feed_run = _cache.Feed(self.run.captured_inputs, slots)
        self.owner = _cache.Owner(fun)
        self.graph_bound = any(tf.is_symbolic_tensor(t) for t in self.run.captured_inputs)
        # TF's gradient registry lives as long as the process: it holds this entry weakly
        # (the graphs that use it keep it alive, :mod:`tfscan._core.cache`).
        ref = weakref.ref(self)

        def graph_gradient(op, *grads):
            entry = ref()
            if entry is None:
                raise RuntimeError("tfscan: this vmap's gradient was freed with the function graph that "
                                   "traced it. Differentiate inside the tf.function that calls vmap.")
            return entry._graph_gradient(op, *grads)

        self.grad_name = _gradients.register("TfscanVmap", graph_gradient)

    def _batched(self, *flat):
        """The batched computation: flat mapped tensors (with their axes), then shared ones."""
        n_mapped = len(self.mapped_axes)
        mapped = [_move_to_front(t, ax) for t, ax in zip(flat[:n_mapped], self.mapped_axes)]
        shared = list(flat[n_mapped:])
        size = self.size if self.size is not None else tf.shape(mapped[0], out_type=tf.int32)[0]
        captured = list(self.pe.captured_inputs)

        def loop_fn(i):
            slices = [tf.gather(m, i) for m in mapped]
            return _tf.call_concrete(self.pe, slices + shared, captured)

        outs = []
        for w, axis, path in zip(_pfor(loop_fn, size, self.whole_scans), self.out_axes, self.out_paths):
            t, stacked = w.t, w.is_stacked
            if axis is None:
                if stacked:
                    raise ValueError(
                        f"vmap has mapped output but out_axes is None: {path} depends on a mapped input. "
                        "Use an int out_axes for it, or make it independent of the mapped inputs.")
                outs.append(t)
                continue
            if not stacked:
                t = _tf.pfor.stack(t, tf.reshape(size, [1]))
            rank = t.shape.rank
            if not -rank <= axis < rank:
                raise ValueError(
                    f"vmap: out_axes={axis} is out of range for output {path}, which has rank {rank - 1} "
                    f"(so the batch axis can go in [{-rank}, {rank - 1}]).")
            outs.append(_move_from_front(t, axis % rank))
        return outs

    def _graph_gradient(self, op, *d_outs):
        """The registered gradient of the ``IdentityN`` that carries this call (graph mode)."""
        n_out, n_m = len(self.out_dtypes), len(self.mapped_axes)
        inputs = list(op.inputs)[n_out:]
        n_s = len(inputs) - n_m - len(self.variables)
        m, s, c = inputs[:n_m], inputs[n_m: n_m + n_s], inputs[n_m + n_s:]
        return [None] * n_out + _backward(self, m, s, c, list(d_outs[:n_out]), list(op.outputs[:n_out]))


def _drop(shape: tf.TensorShape, axis: int) -> tf.TensorShape:
    dims = shape.as_list()
    return tf.TensorShape(dims[:axis] + dims[axis + 1:])




def _pfor(loop_fn: Callable[[tf.Tensor], list], size: Any, whole_scans: bool = False) -> list:
    """``pfor`` that keeps track of which outputs are batched (``WrappedTensor``s)."""
    graph = _tf.default_graph()
    existing = set(graph.get_operations())
    with tf.name_scope("vmap_body"):
        loop_var = tf.compat.v1.placeholder_with_default(0, shape=[])
        outputs = loop_fn(loop_var)
    new_ops = set(graph.get_operations()) - existing
    with tf.name_scope("vmap"), _batching.batching(whole_scans), _quiet_pfor_errors():
        converter = _tf.pfor.PFor(loop_var, size, new_ops, fallback_to_while_loop=False)
        try:
            return [_tf.pfor.convert(converter, t) for t in outputs]
        except ValueError as e:
            text = str(e)
            found = re.search(r"No pfor vectorization defined for (\S+)\s+name: \"([^\"]+)\"", text)
            if found is None:
                raise
            raise NotImplementedError(
                f"vmap: the function uses the op {found.group(2)!r} of type {found.group(1)}, which has no "
                "batching rule (no pfor converter), so it cannot be vectorized. Rewrite that part with "
                "batchable ops, or map it with tfscan.map / tfscan.scan over the batch.") from None


class _PforErrorFilter(logging.Filter):
    """Drops pfor's own log of a failed conversion (we raise a short error instead)."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.get_ident() != self.thread or record.levelno != logging.ERROR:
            return True
        msg = str(record.msg)
        return not (msg.startswith("Got error while pfor was converting op") or "created at:" in msg
                    or msg.startswith("%s\ncreated at:"))


@contextlib.contextmanager
def _quiet_pfor_errors():
    logger = tf.get_logger()
    f = _PforErrorFilter()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


# ------------------------------------------------------------------------------------------
# Gradients: grad(vmap(f)) = vmap(vjp(f)), summed over the batch for shared inputs.



def _needs_gradient(inputs: Sequence[tf.Tensor], entry: _Batched) -> bool:
    """Whether a gradient could be asked for: a graph being built, or a live tape."""
    if not any(is_float(d) for d in entry.out_dtypes):
        return False
    if tf.executing_eagerly() and not record.could_possibly_record():
        return False
    return any(is_float(t.dtype) or t.dtype == tf.resource for t in inputs)


def _native_gradient(entry: _Batched, inputs: Sequence[tf.Tensor]) -> bool:
    """Whether TensorFlow's own gradient of the batched program serves this call: not inside
    a step tfscan traces and copies, nor under a forward accumulator (see ``_Batched.native``)."""
    return entry.native and not tf.executing_eagerly() and not _context.in_internal_trace() and \
        not record.tangent_indices(list(inputs))


def _with_gradient(entry: _Batched, outs, mapped, shared, captured) -> list:
    """Attach the vmapped per-example gradient to ``outs`` (eager tape, graph tape, tf.gradients)."""
    inputs = list(mapped) + list(shared) + list(captured)
    for v in entry.variables:
        if v is not None:
            _tf.mark_variable_accessed(v)  # so that tapes watch it

    def tape_gradient(*d_outs):
        return _backward(entry, mapped, shared, captured, list(d_outs), outs)

    if not tf.executing_eagerly():
        outs = _gradients.identity(entry.grad_name, list(outs) + inputs)[: len(outs)]
    record.record_operation("tfscan_vmap", outs, inputs, tape_gradient)
    return outs


def _backward(entry: _Batched, mapped, shared, captured, d_outs, outs) -> list:
    """Gradients for ``mapped + shared + captured`` (``None`` where there is none)."""
    mapped_axes = entry.mapped_axes
    size = entry.size
    if size is None:
        size = tf.shape(mapped[0], out_type=tf.int32)[mapped_axes[0]]
    # The cotangent of an output that is not mapped (out_axes None) belongs to the whole
    # batch once: example 0 gets it, the others zeros.
    float_outs = [i for i, d in enumerate(entry.out_dtypes) if is_float(d)]
    dys, dy_axes = [], []
    for i in float_outs:
        d, axis = d_outs[i], entry.out_axes[i]
        d = tf.zeros_like(outs[i]) if d is None else tf.convert_to_tensor(d)
        if axis is None:
            rest = tf.zeros(tf.concat([tf.reshape(size - 1, [1]), tf.shape(d)], 0), d.dtype)
            d = tf.concat([d[None], rest], 0)
            axis = 0
        dys.append(d)
        dy_axes.append(axis)
    m_f = [j for j, t in enumerate(mapped) if is_float(t.dtype)]
    s_f = [j for j, t in enumerate(shared) if is_float(t.dtype)]
    c_f = [j for j, t in enumerate(captured) if is_float(t.dtype)]
    c_v = [j for j, v in enumerate(entry.variables) if v is not None and v.trainable]
    pe = entry.pe

    def per_example(m, s, c, dy):
        # Symbolic gradients (this is always traced): unlike a tape they also work where
        # recording is paused, as when a scan traces its step's VJP.
        sources = [m[j] for j in m_f] + [s[j] for j in s_f] + [c[j] for j in c_f] + [c[j] for j in c_v]
        outs = _tf.call_concrete(pe, list(m) + list(s), list(c))
        targets = [outs[i] for i in float_outs]
        grads = tf.gradients(targets, sources, grad_ys=list(dy),
                             unconnected_gradients=tf.UnconnectedGradients.ZERO) if targets else \
            [None] * len(sources)
        out = []
        for k, (g, src) in enumerate(zip(grads, sources)):
            if src.dtype == tf.resource:
                v = entry.variables[c_v[k - (len(sources) - len(c_v))]]
                g = tf.zeros(v.shape, v.dtype) if g is None else g
            elif g is None:
                g = tf.zeros_like(src)
            out.append(tf.convert_to_tensor(g))
        return out

    _vjp_state.depth = getattr(_vjp_state, "depth", 0) + 1
    try:
        grads = _vmapped_vjp(per_example, mapped_axes, mapped, shared, captured, dys, dy_axes, size)
    finally:
        _vjp_state.depth -= 1
    grads = iter(grads)
    result: list = []
    for j, ax in enumerate(mapped_axes):
        result.append(_move_from_front(next(grads), ax) if j in m_f else None)
    for j in range(len(shared)):
        result.append(tf.reduce_sum(next(grads), 0) if j in s_f else None)
    c_grads = [None] * len(captured)
    for j in c_f + c_v:
        c_grads[j] = tf.reduce_sum(next(grads), 0)
    return result + c_grads


_vjp_state = threading.local()


def _vmapped_vjp(per_example, mapped_axes, mapped, shared, captured, dys, dy_axes, size):
    return vmap(per_example, in_axes=(list(mapped_axes), [None] * len(shared), [None] * len(captured), dy_axes),
                out_axes=0, axis_size=None if mapped else size)(list(mapped), list(shared), list(captured), dys)
