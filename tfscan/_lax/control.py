"""What the control-flow family shares: compile-or-inline, leaf conversion, output checks.

``cond``, ``switch`` and ``associative_scan`` each build one TensorFlow function of flat
tensors. :func:`run` caches it in tfscan's one cache (:mod:`tfscan._core.cache`) under a
key made from the user's functions (code and closed-over values; closed-over tensors by
shape and dtype, fed at each call), the argument structure and specs, and runs it as
``tf.function(jit_compile=True)`` — or emits it inline when the caller is already being
compiled by XLA (as ``tfscan._scan.program.Programs`` does for scan). ``while_loop``
keeps its own plan (:class:`Compiled` runs its loops).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Sequence

import tensorflow as tf

from tfscan import _tf
from tfscan._core import cache as _cache
from tfscan._core import checks as _checks
from tfscan._core import context as _context
from tfscan._core import tree as _tree
from tfscan._scan import program as _program

__all__ = []  # private module

INLINE_SCOPE = "tfscan_inline"  # the name scope of a program emitted inline


class Compiled:
    """``build(*tensors) -> list of tensors`` run compiled by XLA, traced once.

    ``meta`` is a dict that ``build`` fills while it is traced (for example the output
    structure); it is valid after the first call. ``build`` must take every tensor it
    depends on as an argument (it closes over nothing a later call could change).
    ``run_time``: indices of integer arguments the program never needs as compile-time
    constants (a loop variable the body changes), so that in a graph the call can be one
    ``XlaLaunch`` op (:func:`tfscan._scan.program.launch`).
    """

    def __init__(self, make_build: Callable[[dict], Callable], run_time: Sequence[int] = ()):
        self.meta: dict = {}
        self.build = make_build(self.meta)
        self.run_time = tuple(run_time)
        self._fn = None
        self._lock = threading.Lock()

    def __call__(self, *args: tf.Tensor) -> list:
        if _context.in_xla_context():
            return list(self.build(*args))
        fn = self._function()
        if not tf.executing_eagerly():
            outs = _program.launch(fn, args, run_time=self.run_time)
            if outs is not None:
                return outs
        return list(fn(*args))

    def concrete(self, args: Sequence[tf.Tensor]) -> Any:
        """The program's concrete function for ``args``, as a launch in a graph traces it."""
        with _tf.xla_trace():
            return self._function().get_concrete_function(*args)

    def _function(self) -> Any:
        with self._lock:
            if self._fn is None:
                # one tf.function per key, traced once per signature: TF's "frequent retracing"
                # warning (it counts every function made from this code) does not apply
                self._fn = _tf.quiet_retracing(tf.function(self.build, jit_compile=True, autograph=False,
                                                           reduce_retracing=False))
            return self._fn


class _Fed:
    """A user function's program traced once on ``specs``, compiled by XLA, and called with
    the tensors that this call's functions close over fed in place of the traced ones."""

    def __init__(self, build: Callable, meta: dict, specs: Sequence[tf.TensorSpec],
                 slots: Sequence[tf.Tensor], owner: Any, run_time: Sequence[int] = ()):
        self.meta = meta
        self.run_time = tuple(run_time)
        fn = tf.function(build, jit_compile=True, autograph=False, reduce_retracing=False)
        with _tf.xla_trace():  # a scan traced here is compiled inline, as in the function's call
            self.concrete = fn.get_concrete_function(*specs)
        captured = self.concrete.captured_inputs
        self.feed = _cache.Feed(captured, slots)
        self.owner = _cache.Owner(owner)

    @property
    def graph_bound(self) -> bool:
        """Whether the trace captured tensors of the graph it was made in that no slot feeds
        (:meth:`tfscan._core.cache.Feed.graph_bound`). Otherwise graphs share it (:func:`run`
        keeps graphs' entries apart from eager ones)."""
        return self.feed.graph_bound(self.concrete.captured_inputs)

    def __call__(self, args: Sequence[tf.Tensor], slots: Sequence[tf.Tensor], read: list | None = None) -> list:
        captured = self.feed.values(self.concrete.captured_inputs, slots)
        if read is not None:
            read.extend(captured)
        outs = _program.launch(self.concrete, list(args), captured, self.run_time)
        if outs is not None:
            return outs
        return _tf.call_concrete(self.concrete, list(args), captured, xla=True)


def run(api: str, fns: Sequence[Callable], key: tuple, make_build: Callable[[dict], Callable],
        args: Sequence[tf.Tensor], run_time: Sequence[int] = (), own_derivatives: bool = False,
        alone: bool = False, read: list | None = None) -> tuple[list, dict]:
    """``(outputs, meta)`` of ``make_build(meta)(*args)``, compiled once per program.

    ``fns`` are the user's functions the program calls; ``key`` the rest of what its trace
    depends on (structure, specs, static arguments). The functions count by their code and
    closed-over values, their closed-over tensors by shape and dtype only: each call feeds
    its own (:mod:`tfscan._core.cache`), so a new value never compiles again. Inside a
    function XLA compiles as a whole, the program is emitted inline instead.

    ``run_time``: indices of integer ``args`` the program never needs as compile-time
    constants. ``own_derivatives``: the caller records the outputs' derivatives itself,
    so the call runs with recording paused (after the trace, which may record inside): no
    tape or accumulator live here builds TensorFlow's derivative functions of the call.
    Under XLA too it is a call (XLA inlines it), not inline ops: TensorFlow's forward rule
    of an inline conditional under an accumulator fails. In a graph, a compiled
    program is one ``XlaLaunch`` op (:func:`tfscan._scan.program.launch`); a conditional's
    gradient for ``tf.gradients`` and tapes outside the function is its own (an ``IdentityN``,
    ``branch._with_launch_gradient``), any other's its VJP program (:mod:`tfscan._scan.launched`).
    ``alone``: trace the program on a fresh thread, unseen by this thread's tapes and
    accumulators (:func:`tfscan._core.context.traced_alone`). ``read``: a list that gets
    the tensors and resources this call feeds the program in place of its captures (what
    the functions read, found by tracing: also through objects the closure walk does not
    open); filled when the program is called or launched, not when emitted inline.
    """
    if _context.in_xla_context() and not own_derivatives:
        meta: dict = {}
        with tf.name_scope(INLINE_SCOPE):  # not a tf.cond of the user's (``jit_rules.holds_conditional``)
            return list(make_build(meta)(*args)), meta
    closures = [_cache.closure(f) for f in fns]
    slots = [t for c in closures for t in c.tensors]
    # A graph never reuses a program made eagerly: a function called eagerly keeps the
    # derivative functions TensorFlow made for it (an accumulator's, in XLA's form of a
    # conditional's gradient), and ``pfor`` cannot batch a call to those (``vmap`` of a
    # ``switch`` fails in ``dynamic_stitch``). Nor does a call that TensorFlow differentiates
    # reuse a program made for derivatives of its own (traced while an accumulator or tape
    # recorded inside): nested tapes, eagerly, through a scan in a ``cond`` branch built
    # TensorFlow's second-order gradient of such a program's ``If`` and failed ("Could not
    # find external tensor capture").
    full_key = (api, tuple(c.pinned_key for c in closures), key, tf.executing_eagerly(), own_derivatives)
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in args]

    def make() -> _Fed:
        meta: dict = {}
        if alone:
            return _context.traced_alone(lambda: _Fed(make_build(meta), meta, specs, slots, fns[0], run_time))
        return _Fed(make_build(meta), meta, specs, slots, fns[0], run_time)

    entry, created = _cache.lookup("control", full_key, make)
    if not created and not entry.feed.complete and not entry.owner.owns(fns[0]):
        entry = make()  # it reads tensors through objects the walk does not open: trace again
        _cache.put("control", full_key, entry)
    with _tf.record.stop_recording() if own_derivatives else contextlib.nullcontext():
        # (the trace captured ``slots``; a copied op's gradient feeds the copy's tensors)
        return entry(args, _context.in_place_of(slots), read), entry.meta


def specs(tensors: Sequence[tf.Tensor]) -> tuple:
    return tuple(tf.TensorSpec(t.shape, t.dtype) for t in tensors)


def to_tensors(api: str, tree: Any, root: str) -> tuple[list, list, _tree.TreeDef]:
    """Flatten an argument and convert its leaves as scan does; errors name ``api``."""
    leaves, paths, treedef = _tree.flatten_with_paths(tree, root)
    return _checks.to_tensors(leaves, paths, root, api), paths, treedef


def first_difference(a: _tree.TreeDef, b: _tree.TreeDef, path: str) -> tuple[str, str, str] | None:
    """The first path where two structures differ, with what each side has there."""
    if a == b:
        return None
    if a.kind != b.kind or a.aux != b.aux or len(a.children) != len(b.children):
        return path, _kind(a), _kind(b)
    for suffix, ca, cb in zip(_tree._suffixes(a), a.children, b.children):
        found = first_difference(ca, cb, path + suffix)
        if found:
            return found
    return path, _kind(a), _kind(b)


def _kind(t: _tree.TreeDef) -> str:
    if t.kind == "leaf":
        return "a leaf (a tensor)"
    if t.kind == "none":
        return "None"
    return f"{t.kind} {t}"


def check_same_outputs(api: str, ref_name: str, name: str, ref: tuple, other: tuple) -> None:
    """Two functions' outputs ``(tree, specs)`` must match in structure, dtype and shape."""
    (ref_tree, ref_specs), (tree, other_specs) = ref, other
    fix = (f"Revise {ref_name} and/or {name} so that their outputs have identical pytree "
           "structure, dtypes and shapes (tf.cast / tf.reshape / tf.broadcast_to).")
    if ref_tree != tree:
        path, a, b = first_difference(ref_tree, tree, "output")
        raise TypeError(
            f"{api}: branch outputs must have the same pytree structure, but they differ: "
            f"{ref_name} output at {path} is {a} but {name} output at {path} is {b} "
            f"({ref_name} returns {ref_tree}, {name} returns {tree}). {fix}")
    for path, a, b in zip(_tree.leaf_paths(ref_tree, "output"), ref_specs, other_specs):
        what = "dtypes" if a.dtype != b.dtype else "shapes" if not _same_shape(a.shape, b.shape) else None
        if what:
            raise TypeError(
                f"{api}: branch outputs must have equal types, but {ref_name}'s {path} "
                f"has type {_checks._typestr(a)} and {name}'s {path} has type "
                f"{_checks._typestr(b)}, so the {what} do not match. {fix}")


def _same_shape(a: tf.TensorShape, b: tf.TensorShape) -> bool:
    if a.rank is None or b.rank is None:
        return a.rank == b.rank
    return a.as_list() == b.as_list()
