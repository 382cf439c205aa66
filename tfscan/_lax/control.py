"""What the control-flow family shares: compile-or-inline, leaf conversion, output checks.

``while_loop``, ``cond``, ``switch`` and ``associative_scan`` each build one TensorFlow
function of flat tensors. :func:`compiled` caches it under a key made from the user's
functions (:func:`tfscan._core.context.function_key`), the argument structure and specs, and
runs it as ``tf.function(jit_compile=True)`` — or emits it inline when the caller is
already being compiled by XLA (as ``tfscan._scan.program.Programs`` does for scan).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import tensorflow as tf

from tfscan import _tf
from tfscan._core import cache as _cache
from tfscan._core import checks as _checks
from tfscan._core import context as _context
from tfscan._core import tree as _tree

__all__ = []  # private module

class Compiled:
    """``build(*tensors) -> list of tensors`` run compiled by XLA, traced once per key.

    ``meta`` is a dict that ``build`` fills while it is traced (for example the output
    structure); it is valid after the first call.
    """

    graph_bound = True  # keyed on its functions' closed-over tensors by identity: one graph's own

    def __init__(self, make_build: Callable[[dict], Callable]):
        self.meta: dict = {}
        self.build = make_build(self.meta)
        self._fn = None
        self._lock = threading.Lock()

    def __call__(self, *args: tf.Tensor) -> list:
        if _context.in_xla_context():
            return list(self.build(*args))
        with self._lock:
            if self._fn is None:
                # one tf.function per key, traced once per signature: TF's "frequent retracing"
                # warning (it counts every function made from this code) does not apply
                self._fn = _tf.quiet_retracing(tf.function(self.build, jit_compile=True, autograph=False,
                                                           reduce_retracing=False))
        return list(self._fn(*args))


def compiled(key: tuple, make_build: Callable[[dict], Callable]) -> Compiled:
    """The cached :class:`Compiled` for ``key``: eager calls share a bounded LRU; one made
    while a graph is built belongs to that graph and is freed with it (:mod:`tfscan._core.cache`)."""
    return _cache.lookup("control", key, lambda: Compiled(make_build))[0]


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
                f"{api}: branch outputs must have equal types, but the {ref_name} output {path} "
                f"has type {_checks._typestr(a)} and the {name} output {path} has type "
                f"{_checks._typestr(b)}, so the {what} do not match. {fix}")


def _same_shape(a: tf.TensorShape, b: tf.TensorShape) -> bool:
    if a.rank is None or b.rank is None:
        return a.rank == b.rank
    return a.as_list() == b.as_list()
