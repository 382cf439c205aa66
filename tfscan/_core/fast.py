"""The short-call fast path: a call the slow path already checked goes straight to XLA.

A scan or a ``jit`` function called eagerly does, on every call, the same work before its
compiled program runs: validate the static arguments, flatten the pytrees with leaf paths
(for error messages), convert and check every leaf, build the cache key (closure key,
tree definitions, shapes, dtypes, static arguments), look it up, gather the closed-over
constants. For a short scan that Python work costs more than running the program.

The slow path does all of that and then records what it resolved in a :class:`Table`
under the call's :func:`signature`: the exact structure, dtype and shape of every leaf
(after the conversion the slow path applies: Python numbers become ``tf.constant``s) and
the static arguments by type and value. A later call with the same signature, of the
same function object, whose closure is still the same memoized
:class:`tfscan._core.cache.Closure` (:func:`tfscan._core.cache.closure` returns the same
object while every cell, default and global it read holds the same object), calls the
recorded compiled function directly. Everything the slow path's checks and its key depend
on is in the signature, so the fast path can only meet inputs those checks passed; any
other call (a new shape, a changed closure, a live tape, a graph, ``disable_jit``) takes
the slow path, which checks everything and raises the same errors as before.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Hashable

import tensorflow as tf

__all__ = []  # private module

_EAGER_TENSOR = type(tf.constant(0.0))  # TensorFlow's eager tensor class, without an internal import
_SCALARS = (bool, int, float)


class _Unsupported(Exception):
    """A leaf or container the fast signature does not describe (the slow path handles it)."""


def _sig(node: Any, leaves: list) -> Hashable:
    kind = type(node)
    if kind is _EAGER_TENSOR:
        leaves.append(node)
        return (node.dtype, node.shape)
    if kind is tuple or kind is list:
        return (kind, tuple([_sig(c, leaves) for c in node]))
    if kind is dict:
        try:
            keys = tuple(sorted(node))
        except TypeError:
            raise _Unsupported from None
        return (dict, keys, tuple([_sig(node[k], leaves) for k in keys]))
    if node is None:
        return None
    if kind in _SCALARS:  # as the slow path converts it (tf.constant's dtypes)
        t = tf.convert_to_tensor(node)
        leaves.append(t)
        return (kind, t.dtype)
    raise _Unsupported  # a namedtuple, a variable, an array, an object: the slow path


def signature(trees: tuple) -> tuple[Hashable, list] | tuple[None, None]:
    """``(signature, flat leaves as tensors)`` of ``trees``, or ``(None, None)`` when a part of
    them is of a kind the fast path leaves to the slow path.

    The signature holds each container's type (and a dict's sorted keys) and each leaf's
    dtype and shape: two calls with one signature flatten to the same tree definitions and
    leaf specs. Python numbers are converted here as the slow path converts them.
    """
    leaves: list = []
    try:
        return tuple([_sig(t, leaves) for t in trees]), leaves
    except _Unsupported:
        return None, None


def static(*values: Any) -> tuple:
    """Static arguments by type and value (``True`` and ``1`` are different arguments)."""
    return tuple((type(v), v) for v in values)


class Signatures:
    """Up to ``maxsize`` signatures and their entries (cleared when a new one would exceed it:
    a sweep over many shapes keeps the table small)."""

    def __init__(self, maxsize: int = 8):
        self.maxsize = maxsize
        self._entries: dict = {}
        self._lock = threading.Lock()

    def get(self, sig: Hashable) -> Any:
        return self._entries.get(sig)

    def put(self, sig: Hashable, entry: Any) -> None:
        with self._lock:
            if len(self._entries) >= self.maxsize and sig not in self._entries:
                self._entries.clear()
            self._entries[sig] = entry

    def __len__(self) -> int:
        return len(self._entries)


class Table:
    """Per function object (held weakly), its :class:`Signatures`."""

    def __init__(self, per_function: int = 8):
        self.per_function = per_function
        self._table: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, f: Any, sig: Hashable) -> Any:
        """The entry recorded for ``f`` and ``sig``, or ``None``."""
        try:
            entries = self._table.get(f)
        except TypeError:  # not weakly referable
            return None
        return None if entries is None else entries.get(sig)

    def put(self, f: Any, sig: Hashable, entry: Any) -> None:
        try:
            entries = self._table.get(f)
            if entries is None:
                entries = self._table[f] = Signatures(self.per_function)
        except TypeError:
            return
        entries.put(sig, entry)

    def __len__(self) -> int:
        return sum(len(e) for e in list(self._table.values()))
