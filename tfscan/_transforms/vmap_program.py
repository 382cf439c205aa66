"""``vmap``'s batched program: the function traced per example and batched by ``pfor``.

:class:`Batched` is one cache entry of :func:`tfscan.vmap`: the function traced once on
one example's slices (``pe``, a concrete function whose captured inputs are what the
function closes over), and ``run``, ``pe`` mapped over the batch by TensorFlow's
``pfor`` converter with tfscan's batching rules active (:mod:`batching`, and
:mod:`scan_batching` for a scan, which stays one tfscan scan) and compiled as one XLA
computation. :func:`pfor` runs the converter on a loop body and keeps track of which
outputs are batched (for ``out_axes=None``); an op without a batching rule becomes a
short ``vmap`` error instead of pfor's log. The entry registers its graph gradient
(:mod:`vmap_gradient`) for the ``IdentityN`` that carries a call.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import weakref
from typing import Any, Callable

import tensorflow as tf

from tfscan import _tf
from tfscan._core import cache as _cache
from tfscan._core import checks as _checks
from tfscan._core import context as _context
from tfscan._core import gradients as _gradients
from tfscan._core import tree as _tree
from tfscan._transforms import batching as _batching
from tfscan._transforms import vmap_axes as _axes
from tfscan._transforms import vmap_gradient as _gradient

__all__ = []  # private module


# ``tfscan.grad(tfscan.grad(f))`` traced per example: TensorFlow builds the gradient of the
# inner jitted gradient's call in a backward graph that cannot read the tensors tfscan's
# recorded backward pass of a scan reads there (not yet supported; other spellings work).
SECOND_ORDER_ERROR = (
    "vmap: the batched function reads a tensor of the per-example trace that is out of its "
    "scope ({cause}). The known case is a second derivative written tfscan.grad(tfscan.grad(f)) "
    "(a gradient of a jitted gradient) inside vmap, not supported yet. Write it inside the "
    "vmapped function with nested tf.GradientTape()s or a tf.autodiff.ForwardAccumulator over "
    "tfscan.grad(f) (a Hessian-vector product), both batched by vmap; or take "
    "tfscan.grad(tfscan.grad(...)) of the batch's sum outside vmap when examples are independent.")


def _in_scope(t: tf.Tensor) -> bool:
    """Whether ``t`` can be read here: an eager tensor, or one of this graph or of a graph
    enclosing it."""
    if not tf.is_symbolic_tensor(t):
        return True
    graph = None if tf.executing_eagerly() else _tf.default_graph()
    while graph is not None:
        if t.graph is graph:
            return True
        graph = getattr(graph, "outer_graph", None)
    return False


class Batched:
    """``fun`` on one example (a concrete function), and batched and compiled by XLA.

    ``pe`` is ``fun`` on the flat per-example inputs (mapped slices, then shared tensors),
    traced once; its captured inputs are what ``fun`` closes over. ``run`` maps ``pe`` over
    the batch with ``pfor`` and is compiled as one XLA computation. The gradient calls
    ``pe`` with explicit captured inputs, so it stays right when the graph that holds
    this call is copied elsewhere (as a scan step is).
    """

    def __init__(self, fun, args_tree, templates, size, out_axes, mapped, shared, slots=()):
        self.templates, self.out_axes_spec, self.args_tree = templates, out_axes, args_tree
        # A per-example VJP (``_gradient.backward``) reads the residuals of the scans it differentiates.
        self.whole_scans = not _context.in_per_example_vjp()
        self.size = size if isinstance(size, int) else None
        self.mapped_axes = [lf.axis for lf in templates if lf.kind == "mapped"]

        n_mapped = len(self.mapped_axes)

        def per_example(*flat, example: bool = True):  # mapped slices first, then shared tensors
            # ``example``: the trace pfor batches (its scans save no residuals); else the one a
            # per-example VJP differentiates (:meth:`vjp_pe`).
            with _context.vmap_example(_tf.default_graph() if example else None):
                out = example_call(fun, args_tree, templates, flat[:n_mapped], flat[n_mapped:])
            out_leaves, self.out_paths, self.out_tree = _tree.flatten_with_paths(out, "output")
            self.out_axes = _axes.broadcast_axes(out_axes, out, "out_axes", "out_axes", "output")
            return [_checks.output_tensor(v, p, "vmap", "the function") for v, p in zip(out_leaves, self.out_paths)]

        example_specs = [tf.TensorSpec(_axes.drop_axis(t.shape, ax), t.dtype) for t, ax in zip(mapped, self.mapped_axes)] + \
            [tf.TensorSpec(t.shape, t.dtype) for t in shared]
        with _context.internal_trace(), _context.vmap_trace():
            self.pe = tf.function(per_example, autograph=False).get_concrete_function(*example_specs)
        self._retrace = (per_example, example_specs)
        self._vjp_pe = None
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
        # A capture no slot feeds is read as traced: one out of this call's scope (a tensor of a
        # graph the trace left) would fail at every call. Checked once, here, not per call.
        leaked = next((c for c, s in zip(self.run.captured_inputs, self.feed_run.slots)
                       if s is None and isinstance(c, tf.Tensor) and not _in_scope(c)), None)
        if leaked is not None:
            raise ValueError(SECOND_ORDER_ERROR.format(cause=f"{leaked!r:.120}"))
        self.owner = _cache.Owner(fun)
        self.graph_bound = self.feed_run.graph_bound(self.run.captured_inputs) or \
            self.feed_pe.graph_bound(list(self.pe.captured_inputs))
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

    def inline(self, flat: list, captured: list) -> list:
        """The batched computation emitted into the graph being built (``captured``: what ``pe``'s
        captures are fed), for a program XLA compiles whole. Not a call of ``run``: TensorFlow's
        gradient of a function call makes the forward call return the constants its backward
        reads (a transpose's permutation), and XLA's constant analysis, which cannot see they
        are constants, then makes every input of the call a compile-time constant — the data
        included, so each new batch compiled the whole program again."""
        with _context.inline_batching():
            return self._batched(*flat, captured=captured)

    def _batched(self, *flat, captured=None):
        """The batched computation: flat mapped tensors (with their axes), then shared ones."""
        n_mapped = len(self.mapped_axes)
        mapped = [_axes.move_to_front(t, ax) for t, ax in zip(flat[:n_mapped], self.mapped_axes)]
        shared = list(flat[n_mapped:])
        size = self.size if self.size is not None else tf.shape(mapped[0], out_type=tf.int32)[0]
        captured = list(self.pe.captured_inputs) if captured is None else list(captured)

        def loop_fn(i):
            slices = [tf.gather(m, i) for m in mapped]
            return _tf.call_concrete(self.pe, slices + shared, captured)

        outs = []
        for w, axis, path in zip(pfor(loop_fn, size, self.whole_scans), self.out_axes, self.out_paths):
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
            outs.append(_axes.move_from_front(t, axis % rank))
        return outs

    def vjp_pe(self):
        """The per-example function for a per-example VJP to differentiate: traced again (once)
        so that its scans save residuals (``pe``'s do not, :func:`_context.vmap_example`); ``pe``
        itself when the new trace would feed other captured inputs."""
        if self._vjp_pe is None:
            per_example, specs = self._retrace
            with _context.internal_trace(), _context.vmap_trace():
                pe = tf.function(functools.partial(per_example, example=False),
                                 autograph=False).get_concrete_function(*specs)
            same = len(pe.captured_inputs) == len(self.pe.captured_inputs) and all(
                a is b for a, b in zip(pe.captured_inputs, self.pe.captured_inputs))
            self._vjp_pe = pe if same else self.pe
        return self._vjp_pe

    def _graph_gradient(self, op, *d_outs):
        """The registered gradient of the ``IdentityN`` that carries this call (graph mode)."""
        n_out, n_m = len(self.out_dtypes), len(self.mapped_axes)
        inputs = list(op.inputs)[n_out:]
        n_s = len(inputs) - n_m - len(self.variables)
        m, s, c = inputs[:n_m], inputs[n_m: n_m + n_s], inputs[n_m + n_s:]
        return [None] * n_out + _gradient.backward(self, m, s, c, list(d_outs[:n_out]), list(op.outputs[:n_out]))


def example_call(fun: Callable, args_tree: _tree.TreeDef, templates: tuple, mapped, shared) -> Any:
    """``fun`` called on one example: the flat ``mapped`` slices and ``shared`` tensors put
    back in the leaves of ``templates`` (static leaves keep their values), as ``args_tree``."""
    it_m, it_s = iter(mapped), iter(shared)
    values = [next(it_m) if lf.kind == "mapped" else next(it_s) if lf.kind == "tensor" else lf.value
              for lf in templates]
    a, kw = _tree.unflatten(args_tree, values)
    return fun(*a, **kw)


def pfor(loop_fn: Callable[[tf.Tensor], list], size: Any, whole_scans: bool = False) -> list:
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
