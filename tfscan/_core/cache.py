"""One cache discipline for every traced or compiled program tfscan keeps.

**Keys.** A program depends on what its trace read: the user function's code, the
Python values it closes over (by value), the argument structure, shapes, dtypes and
static arguments — but never on the *values* of tensors. :func:`closure` walks a
function (its closure cells, defaults, the globals its code names, the functions those
name, a bound method's object) and returns a :class:`Closure`: a hashable ``key`` in
which every closed-over ``tf.Tensor`` appears as its shape and dtype only, and the
list of those ``tensors`` (the *slots*). ``tf.Variable``s, modules and classes count by
identity (a variable is read when the program runs), and so do tfscan's own traced objects
(:class:`ByIdentity`). Any other object (a Keras layer, a
distribution, a NumPy array) counts by its type, and the closure is not ``exact``: its
attributes may change between calls, so each call traces the function again and reuses
the compiled programs when the new trace is the same (:attr:`tfscan._scan.step.Traced.fingerprint`).

**Feeding.** A trace captures the tensors it closes over. :class:`Feed` records, once
per trace, which captured input came from which slot; on every later call the tensors
found in the slots *now* are fed in their place, so a step that closes over a tensor
recomputed each iteration (``log_A = tf.nn.log_softmax(logits)`` in a training loop)
reuses its compiled program. A capture that came from no slot (read through an object
the walk does not open) makes the feed ``complete=False``: such a trace is reused only
for the same function object, or after checking that a new trace is identical.

**Scope.** :func:`lookup` keeps entries in a bounded, thread-safe LRU per cache name
(process-wide), shared by eager code and every graph: a notebook or a sweep that traces
hundreds of graphs of the same program compiles it once (TensorFlow's XLA cache keeps
every compiled cluster for the life of the process, so a new program per graph would
grow without bound). A graph that uses an entry pins it in a store owned by the graph
(:func:`_graph_store`), so it outlives LRU eviction while the graph lives. An entry that
holds one graph's tensors, or belongs to one replica of a ``tf.distribute`` strategy
(replicas run concurrently in one graph, each reading its own variables), lives only in
that graph's store and is freed with it. An entry that says it holds nothing of a replica
(``value.replica_safe``: a scan step that reads distributed variables through their
containers) is shared by the replicas and with other graphs, so a strategy's replicas
(and Keras' symbolic build before them) trace a program once.
"""

from __future__ import annotations

import collections
import enum
import functools
import threading
import types
import weakref
from typing import Any, Callable, Hashable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from tfscan import _tf
from tfscan._core.tree import TreeDef

__all__ = []  # private module

_MAX_DEPTH = 4  # how deep the walk follows functions called by the function
# Immutable values keyed by value (a dtype, a shape and an enum member included).
_PLAIN = (bool, int, float, complex, str, bytes, type(None), np.generic, np.dtype, tf.dtypes.DType,
          tf.TensorShape, enum.Enum)


class LRUCache:
    """A bounded, thread-safe map from hashable keys to values (least recently used out)."""

    def __init__(self, maxsize: int = 256):
        self.maxsize = maxsize
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.RLock()

    def lookup(self, key: Hashable, create: Callable[[], Any]) -> tuple[Any, bool]:
        """``(value, created)``: the cached value, or a new one from ``create()``."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key], False
        value = create()  # outside the lock: tracing may call scan recursively
        self.put(key, value)
        return value, True

    def get(self, key: Hashable) -> Any:
        """The value of ``key`` (marked as used), or ``None``."""
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_SHARED: dict[str, LRUCache] = {}
_LOCK = threading.Lock()
_GRAPH_ATTR = "_tfscan_programs"


def eager_cache(name: str, maxsize: int = 256) -> LRUCache:
    """The process-wide LRU of cache ``name``."""
    with _LOCK:
        cache = _SHARED.get(name)
        if cache is None:
            cache = _SHARED[name] = LRUCache(maxsize)
        return cache


def _graph_store(graph: Any) -> LRUCache:
    """The entries owned by ``graph`` (an attribute of it: they live and die with it)."""
    store = getattr(graph, _GRAPH_ATTR, None)
    if store is None:
        with _LOCK:
            store = getattr(graph, _GRAPH_ATTR, None)
            if store is None:
                store = LRUCache(maxsize=4096)
                setattr(graph, _GRAPH_ATTR, store)
    return store


def lookup(name: str, key: Hashable, create: Callable[[], Any]) -> tuple[Any, bool]:
    """``(value, created)`` for ``key`` in cache ``name``.

    Eagerly and in graphs alike, a bounded process-wide LRU: a program traced in one
    graph serves the next (Keras retracing, a sweep of fresh ``tf.function``s) without
    compiling again, and each graph that uses it keeps it alive (pinned in the graph's
    own store). A value that holds tensors of the graph it was made in
    (``value.graph_bound``) or that was made inside a replica of a ``tf.distribute``
    strategy lives only in that graph's store, and is freed with the graph; one made
    eagerly with ``graph_bound`` set serves eager calls only.
    """
    if tf.executing_eagerly():
        return eager_cache(name).lookup(key, create)
    graph, local_key = _local(name, key)
    store = _graph_store(graph)
    value = store.get(local_key)
    if value is not None:
        return value, False
    value = eager_cache(name).get(key)  # an entry another graph (or replica) made may serve
    if value is not None and _shared(value, local_key):
        store.put(local_key, value)  # pinned: this graph keeps it alive
        return value, False
    value = create()
    put(name, key, value)
    return value, True


def put(name: str, key: Hashable, value: Any) -> None:
    """Set the entry of ``key`` in cache ``name`` (where :func:`lookup` finds it)."""
    if tf.executing_eagerly():
        eager_cache(name).put(key, value)
        return
    graph, local_key = _local(name, key)
    _graph_store(graph).put(local_key, value)
    if _shared(value, local_key):
        eager_cache(name).put(key, value)


def pin(value: Any) -> None:
    """Keep ``value`` alive as long as the graph being built (no-op eagerly): for a program
    that graph's ops use but that no :func:`lookup` in it returned."""
    if not tf.executing_eagerly():
        _graph_store(_tf.default_graph()).put(("pinned", id(value)), value)


def _shared(value: Any, local_key: tuple) -> bool:
    """Whether ``value`` may serve other graphs (and, inside a replica, other replicas)."""
    if getattr(value, "graph_bound", False):
        return False
    return local_key[1] is None or getattr(value, "replica_safe", False)


def _local(name: str, key: Hashable) -> tuple[Any, tuple]:
    """The graph being built and ``key`` in its store (with the replica, if any)."""
    replica = tf.distribute.get_replica_context() if tf.distribute.has_strategy() else None
    return _tf.default_graph(), (name, None if replica is None else id(replica), key)


def sizes() -> dict[str, int]:
    """The number of eager entries of each cache (for tests and diagnostics)."""
    with _LOCK:
        return {name: len(cache) for name, cache in _SHARED.items()}


# -- keys ----------------------------------------------------------------------------------------

class Closure(NamedTuple):
    """What a function's traces depend on.

    ``key``: hashable; closed-over tensors appear as ``("tensor", shape, dtype, alias)``.
    ``tensors``: those tensors, in walk order (fed in place of the trace's captures).
    ``exact``: no object whose contents could change between calls was met.
    """

    key: Hashable
    tensors: tuple
    exact: bool
    objects: tuple = ()

    @property
    def pinned_key(self) -> Hashable:
        """``key`` with the identity of every object met: for caches that do not trace again
        to check what a function read from its objects (the trace keeps what it read)."""
        return (self.key, tuple(_Identity(o) for o in self.objects))


class _Walk:
    def __init__(self):
        self.tensors: list = []
        self._slot_of: dict[int, int] = {}
        self.exact = True
        self.objects: list = []
        self._seen: set[int] = set()
        # What the walk read, to reuse its result while every read gives the same object:
        # (weakref to function, code, defaults), (cell, contents), (globals, name, value).
        self.reads: list = []
        self.memo_ok = True  # no value met whose contents could change in place (a list)

    def function(self, f: Any, depth: int) -> Hashable:
        if depth > _MAX_DEPTH or id(f) in self._seen:
            return self.identity(f)
        if isinstance(f, types.MethodType):
            self.memo_ok = False
            return ("method", self.function(f.__func__, depth + 1), self.value(f.__self__, depth + 1))
        if isinstance(f, types.FunctionType) and _library(f, ours=False):
            return _Identity(f)  # a library's function (``tf.tanh`` bound to a name): its code is fixed
        if isinstance(f, types.FunctionType):
            self._seen.add(id(f))
            self._record(f)
            try:
                cells = tuple(self.value(c.cell_contents, depth + 1) if _cell_full(c) else None
                              for c in (f.__closure__ or ()))
                defaults = tuple(self.value(d, depth + 1) for d in (f.__defaults__ or ()))
                kwdefaults = tuple((k, self.value(v, depth + 1)) for k, v in sorted((f.__kwdefaults__ or {}).items()))
                globs = tuple((n, self.value(f.__globals__[n], depth + 1)) for n in _global_names(f.__code__)
                              if n in f.__globals__ and _walks_global(f.__globals__[n]))
            finally:
                self._seen.discard(id(f))
            return ("fn", f.__code__, cells, defaults, kwdefaults, globs)
        if isinstance(f, _PARTIAL):
            self.memo_ok = False
            return ("partial", self.function(f.func, depth + 1), self.value(f.args, depth + 1),
                    self.value(tuple(sorted(f.keywords.items())), depth + 1))
        return ("obj", self.value(f, depth + 1))

    def value(self, x: Any, depth: int) -> Hashable:
        if isinstance(x, tf.Tensor) and x.dtype != tf.resource:
            j = self._slot_of.setdefault(id(x), len(self.tensors))
            if j == len(self.tensors):
                self.tensors.append(x)
            shape = None if x.shape.rank is None else tuple(x.shape.as_list())
            return ("tensor", shape, x.dtype, j)  # j: the same tensor met twice stays one slot
        if isinstance(x, (types.FunctionType, types.MethodType, _PARTIAL)):
            return self.function(x, depth)
        wrapped = _wrapped_function(x)
        if wrapped is not None:
            # A compiled wrapper of a function (``tfscan.jit``, ``tf.function``): by identity
            # (its configuration is fixed), and the function it wraps walked as any other.
            return ("wrapped", _Identity(x), self.function(wrapped, depth + 1))
        if _tf.is_autograph_scope(x):
            return ("autograph-scope",)  # a fresh one per trace; it holds no value
        if isinstance(x, _PLAIN + (TreeDef,)):
            return (type(x), x)  # a TreeDef (a pytree's structure) is immutable and hashable
        if isinstance(x, (tuple, list)) and len(x) < 64:
            self.memo_ok = self.memo_ok and isinstance(x, tuple)
            return (type(x), tuple(self.value(v, depth) for v in x))
        return self.identity(x)

    def _record(self, f: types.FunctionType) -> None:
        if f.__kwdefaults__:
            self.memo_ok = False
        # The function weakly: the memo's value must not keep its own key alive (a fresh
        # lambda per iteration would pin every tensor it closed over, for good).
        self.reads.append((weakref.ref(f), f.__code__, f.__defaults__))
        for c in f.__closure__ or ():
            self.reads.append((c, c.cell_contents if _cell_full(c) else _EMPTY))
        g = f.__globals__
        for n in _global_names(f.__code__):
            self.reads.append((g, n, g.get(n, _EMPTY)))

    def identity(self, x: Any) -> Hashable:
        """A variable, module or class by identity; any other object by its type only, and
        the walk is then not ``exact`` (what a trace reads from it is checked by tracing)."""
        if isinstance(x, _IMMUTABLE_BY_IDENTITY) or x is None:
            return _Identity(x)
        if isinstance(x, ByIdentity):
            return ("tfscan", weakref.ref(x))
        self.exact = self.memo_ok = False
        self.objects.append(x)
        return ("object", type(x))


_PARTIAL = type(__import__("functools").partial(int))


def _cell_full(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The global names ``code`` and the code objects nested in it (lambdas, comprehensions) read."""
    names, stack = [], [code]
    while stack:
        c = stack.pop()
        names.extend(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return tuple(dict.fromkeys(names))


def _wrapped_function(x: Any) -> types.FunctionType | None:
    """The Python function a callable object wraps (``__wrapped__``: ``tfscan.jit``,
    ``tf.function``, ``functools.update_wrapper``), or ``None``."""
    if isinstance(x, (types.FunctionType, type)) or not callable(x):
        return None
    try:
        wrapped = getattr(x, "__wrapped__", None)
    except Exception:  # noqa: BLE001 - an object whose attribute lookup fails wraps nothing we can walk
        return None
    return wrapped if isinstance(wrapped, types.FunctionType) else None


def _walks_global(x: Any) -> bool:
    """Globals that can change what a trace reads, walked as closed-over values are: tensors,
    variables, arrays, plain data (a module-level ``a = 2.0`` that a notebook cell or a sweep
    assigns again: a trace bakes it in), the user's own functions, also wrapped in a compiled
    function, and any other object (a config dict or namespace, a model: what a trace reads
    from it may change, so the walk is not exact and each call traces again, reusing the
    compiled programs). Left out: modules, classes and library functions (fixed), and lists
    and sets (state a function appends to, a counter or a log, which would key a new trace
    on every call)."""
    x = _wrapped_function(x) or x
    if isinstance(x, types.FunctionType):
        return not _library(x)
    return not isinstance(x, (types.ModuleType, type, types.BuiltinFunctionType, types.MethodType,
                              list, set, frozenset, _PARTIAL))


def _library(f: types.FunctionType, ours: bool = True) -> bool:
    """A function of TensorFlow, Keras, NumPy or JAX (not the user's code), or of tfscan
    itself when ``ours`` (a closure tfscan made around a user's function is walked)."""
    module = getattr(f, "__module__", "") or ""
    return module.startswith(("tensorflow", "keras", "tf_keras", "numpy", "jax") + (("tfscan.",) if ours else ()))


_IMMUTABLE_BY_IDENTITY = (tf.Tensor, tf.Variable, types.ModuleType, type, types.BuiltinFunctionType)


class ByIdentity:
    """A tfscan object whose identity fixes what a trace reads from it (a scan's traced
    step, its traced VJP): a function closing over one (the backward pass of a scan, as
    differentiable scans) counts it by identity, so its programs are found again on the
    next call instead of traced and compiled anew. Held weakly: a dead one's key part
    equals nothing, and the key does not keep it alive."""

    __slots__ = ("__weakref__",)


class _Identity:
    """A key part that compares by identity and keeps the object alive (its id is never
    reused): for objects whose identity fixes what a trace reads from them (a variable is
    read at run time, a module or a class is fixed)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


def closure(f: Any) -> Closure:
    """The :class:`Closure` of ``f`` (see the module docstring).

    A function called again (a held step, a held ``jit``) whose walk met only immutable
    values gets the same result without walking again, as long as each closure cell,
    default and global the walk read still holds the same object.
    """
    memo = _memo.get(f) if isinstance(f, types.FunctionType) else None
    if memo is not None and _unchanged(memo[0]):
        return memo[1]
    walk = _Walk()
    key = walk.function(f, 0)
    result = Closure(key, tuple(walk.tensors), walk.exact, tuple(walk.objects))
    if walk.memo_ok and walk.exact and isinstance(f, types.FunctionType) and not any(
            tf.is_symbolic_tensor(t) for t in walk.tensors):
        # Not over a graph's tensor: such a memo serves one trace only, and its value would
        # tie the whole graph's life to ``f``'s (anything the graph holds that reaches ``f``
        # would make a cycle through the weak-keyed dict, which Python never frees).
        _memo[f] = (tuple(walk.reads), result)
    return result


def memoized(f: Any, result: Closure) -> bool:
    """Whether :func:`closure` keeps ``result`` for ``f``: it returns this same object while
    nothing ``f``'s walk read changes (:mod:`tfscan._core.fast` relies on that identity)."""
    memo = _memo.get(f) if isinstance(f, types.FunctionType) else None
    return memo is not None and memo[1] is result


_EMPTY = object()
_memo: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _unchanged(reads: tuple) -> bool:
    for r in reads:
        if len(r) == 2:
            cell, obj = r
            try:
                if cell.cell_contents is not obj:
                    return False
            except ValueError:
                if obj is not _EMPTY:
                    return False
        elif isinstance(r[0], dict):
            if r[0].get(r[1], _EMPTY) is not r[2]:
                return False
        else:
            fn = r[0]()
            if fn is None or fn.__code__ is not r[1] or fn.__defaults__ is not r[2]:
                return False
    return True


def static_key(x: Any) -> Hashable:
    """A static (non-tensor) argument's part of a key: Python scalars and tuples/lists of
    them by value, anything else by identity."""
    if isinstance(x, (bool, int, float, complex, str, bytes, type(None), np.generic)):
        return (type(x), x)
    if isinstance(x, (tuple, list)) and len(x) < 64:
        return (type(x), tuple(static_key(v) for v in x))
    return _Identity(x)


# -- feeding ------------------------------------------------------------------------------------

class Feed:
    """Which captured input of a trace came from which slot of the :class:`Closure`.

    Built once per trace from its captured inputs (in order) and the slot tensors of the
    call that traced it; :meth:`values` gives the captured inputs for a later call.
    """

    def __init__(self, captured: Sequence[Any], tensors: Sequence[tf.Tensor]):
        index: dict[int, int] = {}
        for j, t in enumerate(tensors):
            index.setdefault(id(t), j)
        self.slots = [index.get(id(c)) for c in captured]
        self.complete = all(s is not None or not _is_value_tensor(c) for c, s in zip(captured, self.slots))

    def values(self, captured: Sequence[Any], tensors: Sequence[tf.Tensor]) -> list:
        """``captured`` with every slotted entry replaced by this call's tensor."""
        return [c if s is None else tensors[s] for c, s in zip(captured, self.slots)]

    def graph_bound(self, captured: Sequence[Any]) -> bool:
        """Whether the trace reads a tensor of the graph it was made in that no slot feeds (it
        then lives in that graph only, see :func:`lookup`). A slotted one is replaced by each
        call's own tensor, so the trace serves other graphs: a fresh ``tf.function`` closing
        over its own tensors neither traces nor compiles it again (XLA keeps every program it
        compiles for the life of the process; a new program per graph grew ~2 MiB each)."""
        return any(s is None and isinstance(c, tf.Tensor) and tf.is_symbolic_tensor(c)
                   for c, s in zip(captured, self.slots))


def _is_value_tensor(c: Any) -> bool:
    return isinstance(c, tf.Tensor) and c.dtype != tf.resource


class Owner:
    """Remembers which function object made a trace (weakly when it can)."""

    __slots__ = ("_ref",)

    def __init__(self, f: Any):
        try:
            self._ref = weakref.ref(f)
        except TypeError:
            self._ref = lambda f=f: f

    def owns(self, f: Any) -> bool:
        return self._ref() is f
