"""``jit``: compile a function of pytrees with XLA, caching traces the way ``jax.jit`` does.

A trace is keyed on what JAX keys it on: the structure of the arguments, the shape
and dtype of every tensor leaf, and the values of the static arguments. Python numbers
are tensors (``int`` -> int32, ``float`` -> float32, as ``tf.constant``), so a new value
never retraces. Each trace is one ``tf.function(jit_compile=True)`` concrete function.

The traces live in tfscan's one cache (:mod:`tfscan._core.cache`), keyed on the function's
code and what it closes over (closed-over tensors by shape and dtype, fed at call time),
not on the ``Jitted`` object: ``tfscan.jit(f)(x)`` written inside a loop, or
``tfscan.grad(loss)(params)`` re-wrapped each step, traces and compiles once.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import threading
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import tensorflow as tf

from tfscan import _tf
from tfscan._core import cache as _cache
from tfscan._core import checks as _checks
from tfscan._core import context as _context
from tfscan._core import fast as _fast
from tfscan._core import tree as _tree
from tfscan._lax import loops as _loops
from tfscan._tf import record
from tfscan._transforms import jit_rules as _rules

__all__ = ["jit"]

_STAGES = ("hlo", "optimized_hlo", "optimized_hlo_dot", "hlo_serialized", "optimized_hlo_serialized")


def jit(fun: Callable[..., Any] | None = None, *, static_argnums: int | Sequence[int] = (),
        static_argnames: str | Sequence[str] = ()) -> "Jitted":
    """Compile ``fun`` with XLA, as ``jax.jit``: one compiled program per argument signature.

    ``fun`` is traced (run once in a TensorFlow graph) for each new combination of
    argument structure, tensor shapes and dtypes, and static argument values, and the
    trace is compiled by XLA; calls with new *values* reuse it. Python ``int``/``float``
    arguments are passed as tensors (int32/float32), not baked in: TensorFlow has no weak
    types, so ``x * 3`` on a float ``x`` needs ``3.0`` (a dtype error names the argument). A
    Python ``bool`` argument is a flag (``training=True``): it is static, as in a
    ``tf.function`` (TensorFlow would multiply a float by a bool *tensor* as booleans). A
    ``tf.Variable`` closed over by ``fun`` is read at call time; a ``tf.Variable``
    passed as an argument is passed by value. As under ``jax.jit``, Python control flow
    cannot branch on tensor values (``autograph`` is off): use :func:`tfscan.cond` or
    ``tf.cond``. Inside :func:`tfscan.disable_jit` the function runs eagerly.

    Args:
      fun: the function; its arguments and results are nests of tensors. When omitted,
        ``jit(static_argnums=...)`` returns a decorator.
      static_argnums: positional arguments (ints, negative from the end) that are
        compile-time constants: hashable Python values; a new value retraces.
      static_argnames: the same, by parameter name. Positions and names are completed
        from each other through ``fun``'s signature, as in JAX.

    Returns:
      The compiled function (same arguments, same results). ``.lower(*args)`` gives
      the compiler's view (``.as_text()`` is the optimized HLO), ``.trace_count`` the
      number of traces so far, ``._cache_size()`` the number of cached programs.

    Example:

    >>> import tensorflow as tf, tfscan
    >>> @tfscan.jit
    ... def cumsum(xs):
    ...     return tfscan.scan(lambda c, x: (c + x, c + x), 0.0, xs)[1]
    >>> cumsum(tf.constant([1.0, 2.0, 3.0])).numpy().tolist()
    [1.0, 3.0, 6.0]
    >>> _ = cumsum(tf.constant([4.0, 5.0, 6.0]))  # new values: no new trace
    >>> cumsum.trace_count
    1
    >>> "while" in cumsum.lower(tf.constant([1.0, 2.0])).as_text()
    True
    """
    if fun is None:
        return functools.partial(jit, static_argnums=static_argnums, static_argnames=static_argnames)
    return Jitted(fun, static_argnums, static_argnames)


class Jitted:
    """A function compiled by :func:`jit` (see there)."""

    def __init__(self, fun: Callable[..., Any], static_argnums: Any, static_argnames: Any):
        if not callable(fun):
            raise TypeError(f"jit: fun must be callable, got {fun!r:.80}.")
        self._fun = fun
        self._lock = threading.Lock()
        self._keys: dict = {}  # signature -> the closure key of its first trace
        self._trace_count = 0
        self._params = _positional_params(fun)
        self._static_nums, self._static_names = _static_args(fun, self._params, static_argnums, static_argnames)
        # The short-call fast path (:mod:`tfscan._core.fast`), for calls without static arguments:
        # signature -> (closure, entry, captured inputs).
        self._fast = None if self._static_nums or self._static_names else _fast.Signatures()
        functools.update_wrapper(self, fun, updated=())  # not __dict__: it would overwrite ours

    @property
    def trace_count(self) -> int:
        """How many times ``fun`` has been traced (once per new signature)."""
        return self._trace_count

    def _cache_size(self) -> int:
        """The number of compiled programs this function has used (``jax.jit``'s ``_cache_size``)."""
        return len(self._keys)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return functools.partial(self, instance)  # a method: ``self`` is argument 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fast = self._fast_call(args, kwargs)
        if fast is not None:
            return fast
        if _context.jit_disabled():
            return self._fun(*args, **kwargs)
        if not tf.executing_eagerly() and record.could_possibly_record() and \
                record.tangent_indices(_tree.flatten((args, kwargs))[0]):
            # Forward mode inside a trace (a scan's JVP step): traced inline, so the
            # accumulator differentiates each op by its own rule, as a jit inside a jit is
            # inlined in JAX. Through the call, TensorFlow would transpose the function's
            # gradient, whose shapes XLA may not know when it compiles.
            return self._fun(*args, **kwargs)
        recording = tf.executing_eagerly() and record.could_possibly_record()
        try:
            entry, flat, captured, stable = self._entry(args, kwargs)
        except AttributeError as e:
            if not (recording and "Tensor.graph is undefined" in str(e)):
                raise
            raise TypeError(
                f"jit: forward mode (tf.autodiff.ForwardAccumulator) does not reach an eager tensor "
                f"that a tf.cond (or another TensorFlow control-flow op) inside {_name(self._fun)} "
                "closes over while an accumulator opened outside differentiates it (TensorFlow's "
                "tracing fails alike for tf.function). Use tfscan.cond/tfscan.switch there, or pass "
                "that tensor as an argument of the jitted function.") from None
        closed, variables = _rules.watched_inputs(self._fun, entry.concrete) if recording else ([], [])
        inputs = flat + closed + [v.handle for v in variables]
        if recording and _rules.accumulating(inputs) and _rules.own_rules(entry.holds_conditional, self._fun):
            # Under an accumulator, derivatives of its own (compiled JVP and VJP programs), as
            # JAX: TensorFlow's forward mode of the call would transpose its gradient (which
            # a run-time-bounded loop does not have). See ``_rules.own_rules`` for a function
            # holding a tf.cond.
            with record.stop_recording():
                outs = _tf.call_concrete(entry.concrete, flat, captured, xla=True)
            outs = _rules.record_call(jit, self._fun, entry.tree, entry.static, flat, outs, closed, variables,
                                      entry.holds_conditional)
        elif recording:
            # TensorFlow's derivatives of the call, fed this call's closed-over tensors (a new
            # value is not a new trace), built in an XLA context (``xla=True``, as the function
            # itself): a conditional's gradient then saves plain tensors, not Optionals XLA lacks.
            try:
                outs = _tf.call_concrete(entry.concrete, flat, captured, xla=True)
            except ValueError as e:
                if _rules.accumulating(inputs) and not record.should_record_backprop(inputs) \
                        and _loops.REVERSE_ERROR in str(e):
                    raise ValueError(_rules.nested_forward_error(_name(self._fun))) from None
                raise
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        elif not tf.executing_eagerly() and entry.holds_conditional and not (
                _context.in_internal_trace() or _context.in_vmap_trace()) and \
                any(o.dtype.is_floating for o in _tf.own_outputs(entry.concrete)):
            # In a graph, a function holding a tf.cond carries its own VJP as the graph's
            # gradient (``_rules.with_graph_gradient``), and records its derivatives on the
            # graph's tapes.
            closed, variables = _rules.watched_inputs(self._fun, entry.concrete)
            with record.stop_recording():
                outs = _tf.call_concrete(entry.concrete, flat, captured, xla=True)
                outs = _rules.with_graph_gradient(jit, self._fun, entry.tree, entry.static, flat, outs, closed,
                                                  variables)
            if record.could_possibly_record():
                outs = _rules.record_call(jit, self._fun, entry.tree, entry.static, flat, outs, closed, variables,
                                          entry.holds_conditional)
        else:
            # Straight to the concrete function (no re-canonicalization), fed this call's
            # closed-over tensors in place of those the trace captured.
            outs = _tf.call_concrete(entry.concrete, flat, captured, xla=True)
            if stable is not None and tf.executing_eagerly():
                self._remember(args, kwargs, stable, entry, captured)
        return _tree.unflatten(entry.out_tree, outs)

    def _fast_call(self, args: tuple, kwargs: dict) -> Any:
        """The result through the fast path, or ``None`` (then the slow path runs): an eager
        call nothing records, with the signature of a call the slow path resolved."""
        if not self._fast or kwargs or not tf.executing_eagerly() or record.could_possibly_record() \
                or any(_flag(a) for a in args) \
                or _context.jit_disabled():
            return None
        sig, flat = _fast.signature(args)
        hit = self._fast.get(sig) if sig is not None else None
        if hit is None or _cache.closure(self._fun) is not hit[0]:
            return None
        entry = hit[1]
        return _tree.unflatten(entry.out_tree, _tf.call_concrete(entry.concrete, flat, hit[2], xla=True))

    def _remember(self, args: tuple, kwargs: dict, closure: Any, entry: "_Entry", captured: list) -> None:
        if self._fast is None or kwargs or _tf.fixed_captures(entry.concrete) is None:
            return
        sig, _ = _fast.signature(args)
        if sig is not None:
            self._fast.put(sig, (closure, entry, list(captured)))

    def lower(self, *args: Any, **kwargs: Any) -> "Lowered":
        """The program for these arguments (traced if needed), for inspection.

        Leaves may be ``tf.TensorSpec``s instead of tensors.
        """
        entry, flat, _, _ = self._entry(args, kwargs, specs_ok=True)
        return Lowered(entry, flat)

    # -- tracing ---------------------------------------------------------------------------

    def _split(self, args: tuple, kwargs: dict) -> tuple[list, dict, tuple]:
        """Dynamic args and kwargs (static ones replaced by None) and the static key."""
        n = len(args)
        nums = set()
        for i in self._static_nums:
            j = i + n if i < 0 else i
            if 0 <= j < n:
                nums.add(j)
        static = []
        dyn_args = []
        for i, a in enumerate(args):
            if i in nums or _flag(a):
                static.append(("pos", i, _hashable(a, self._label(i))))
                dyn_args.append(None)
            else:
                dyn_args.append(a)
        dyn_kwargs = {}
        for k in sorted(kwargs):
            if k in self._static_names or _flag(kwargs[k]):
                static.append(("kw", k, _hashable(kwargs[k], k)))
            else:
                dyn_kwargs[k] = kwargs[k]
        return dyn_args, dyn_kwargs, tuple(static)

    def _label(self, i: int) -> str:
        return self._params[i] if i < len(self._params) else f"args[{i}]"

    def _entry(self, args: tuple, kwargs: dict, specs_ok: bool = False):
        """``(entry, flat arguments, captured inputs to feed, stable)`` for this call.

        ``stable``: the closure, when a later call that finds this same closure
        object (:func:`tfscan._core.cache.memoized`) would resolve to this entry and these
        captures (the fast path may then skip this resolution), else ``None``.
        """
        dyn_args, dyn_kwargs, static = self._split(args, kwargs)
        leaves, paths = [], []
        for i, a in enumerate(dyn_args):
            if any(s[0] == "pos" and s[1] == i for s in static):
                continue
            lv, pv, _ = _tree.flatten_with_paths(a, self._label(i))
            leaves += lv
            paths += pv
        for k, v in dyn_kwargs.items():
            lv, pv, _ = _tree.flatten_with_paths(v, k)
            leaves += lv
            paths += pv
        flat = [_to_tensor(v, p, specs_ok) for v, p in zip(leaves, paths)]
        tree = _tree.flatten((tuple(dyn_args), dyn_kwargs))[1]
        specs = tuple(_spec_key(t) for t in flat)
        signature = (self._static_nums, self._static_names, tree, specs, static)
        closure = _cache.closure(self._fun)
        with self._lock:
            first = self._keys.setdefault(signature, closure.key)
        # As jax.jit, a function once traced for a signature is not traced again when what
        # it closes over changes structure (a list it appends to): its trace is kept.
        fresh = first == closure.key
        # An eager call never reuses a trace made in a graph (inside another jitted function
        # or a gradient's trace), as for the control-flow programs: its loops recorded their
        # own derivatives on that graph's tapes, and TensorFlow's gradient of the call, which
        # an eager tape takes, would meet their ops (a tfscan loop has no TensorFlow gradient).
        key = (first, tf.executing_eagerly()) + signature
        numbers_at = [p for v, p in zip(leaves, paths) if type(v) in (int, float)]
        make = lambda: _traced_entry(self._fun, tree, static, flat, closure.tensors, numbers_at)  # noqa: E731
        entry, created = _cache.lookup("jit", key, make)
        # The trace read something the key cannot see by value (an object's attributes, a
        # tensor reached through one): reuse it only for the function that made it.
        reusable = created or entry.owner.owns(self._fun) or (fresh and closure.exact and entry.feed.complete)
        own = entry.concrete.captured_inputs
        captured = entry.feed.values(own, closure.tensors) if fresh else own
        if not reusable:
            entry, created = make(), True
            _cache.put("jit", key, entry)
            captured = entry.concrete.captured_inputs
        with self._lock:
            self._trace_count += created
        stable = (fresh and _cache.memoized(self._fun, closure)
                  and (entry.owner.owns(self._fun) or (closure.exact and entry.feed.complete)))
        return entry, flat, captured, closure if stable else None

def _flag(value: Any) -> bool:
    """A Python ``bool`` argument: a flag (``training=True``), static as in a ``tf.function``
    (as a bool tensor, TensorFlow would multiply a float by it as booleans)."""
    return type(value) is bool


def _traced_entry(fun, tree, static, flat, slots, numbers_at: list) -> "_Entry":
    """``_Entry(...)``; a dtype clash in the trace, when Python numbers were passed, says what
    they became (TensorFlow's error as the cause)."""
    try:
        return _Entry(fun, tree, static, flat, slots)
    except TypeError as e:
        if not numbers_at or "does not match type" not in str(e):
            raise
        raise TypeError(
            f"jit: the function mixes dtypes: {str(e).splitlines()[0]} Python numbers passed to a "
            f"jitted function are tensors (int -> int32, float -> float32; TensorFlow has no weak "
            f"types), here {', '.join(numbers_at)}. Pass a number of the dtype it meets (3.0, not 3, "
            "or tf.constant(3, tf.float32)), or mark the argument static (static_argnums/"
            "static_argnames; a new value then traces again).") from e


class _Entry:
    """One trace: a concrete XLA-compiled function of the flat dynamic leaves."""

    def __init__(self, fun: Callable, tree, static, flat, slots: Sequence[tf.Tensor]):
        self.tree, self.static = tree, tuple((kind, where, _unwrap(value)) for kind, where, value in static)
        self.out_tree = None
        self.owner = _cache.Owner(fun)

        def traced(*leaves):
            graph = _tf.default_graph()
            for t in slots:
                # Captured unseen by the live tapes and accumulators: the trace is a program of
                # its own (its derivatives are the call's), not ops an outer accumulator reaches
                # through the capture (a conditional's could not take an eager tangent).
                record.silent_capture(graph, t)
            out = _rules.call_flat(fun, tree, self.static, leaves)
            out_leaves, out_paths, self.out_tree = _tree.flatten_with_paths(out, "output")
            return [_checks.output_tensor(v, p, "jit", "the function") for v, p in zip(out_leaves, out_paths)]

        self.function = _tf.quiet_retracing(
            tf.function(traced, jit_compile=True, autograph=False, reduce_retracing=False))
        self.specs = [t if isinstance(t, tf.TensorSpec) else tf.TensorSpec(t.shape, t.dtype) for t in flat]
        def trace():
            with _tf.xla_trace():  # a scan traced here is compiled inline, as in the function's call
                return self.function.get_concrete_function(*self.specs)
        self.concrete = _context.traced_unwatched(trace, slots)
        # TensorFlow's conditional (a tfscan one has forward rules of its own).
        self.holds_conditional = _rules.holds_conditional(self.concrete)
        self.feed = _cache.Feed(self.concrete.captured_inputs, slots)
        self.graph_bound = self.feed.graph_bound(self.concrete.captured_inputs)


class Lowered:
    """A traced program of :func:`jit` for one argument signature."""

    def __init__(self, entry: _Entry, flat: list):
        self._entry, self._flat = entry, flat

    def as_text(self, stage: str = "optimized_hlo") -> str:
        """The compiler IR as text: ``"optimized_hlo"`` (after XLA's passes, the default) or ``"hlo"``."""
        if stage not in _STAGES:
            raise ValueError(f"Lowered.as_text: stage must be one of {_STAGES}, got {stage!r}.")
        args = [tf.TensorSpec(t.shape, t.dtype) if isinstance(t, tf.TensorSpec) else t for t in self._flat]
        return self._entry.function.experimental_get_compiler_ir(*args)(stage=stage)

    def compile(self) -> "Lowered":
        """JAX's ``lower(...).compile()``: the same object (XLA compiles on the first call)."""
        return self


# ----------------------------------------------------------------------------------------------

def _positional_params(fun: Callable) -> list[str]:
    try:
        params = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _static_args(fun: Callable, params: list[str], nums: Any, names: Any) -> tuple[tuple[int, ...], frozenset]:
    """``(static_argnums, static_argnames)`` validated and completed from each other (as JAX)."""
    if isinstance(nums, numbers.Integral) and not isinstance(nums, bool):
        nums = (nums,)
    if isinstance(names, str):
        names = (names,)
    try:
        nums = tuple(nums)
        names = tuple(names)
    except TypeError:
        raise TypeError(f"jit: static_argnums must be an int or a sequence of ints and static_argnames a str or "
                        f"a sequence of str, got static_argnums={nums!r}, static_argnames={names!r}.") from None
    for i in nums:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"jit: static_argnums must be ints, got {i!r} in static_argnums={nums!r}.")
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"jit: static_argnames must be strings, got {n!r} in static_argnames={names!r}.")
    try:
        sig = inspect.signature(fun)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        kinds = {p.kind for p in sig.parameters.values()}
        has_var_pos = inspect.Parameter.VAR_POSITIONAL in kinds
        has_var_kw = inspect.Parameter.VAR_KEYWORD in kinds
        if not has_var_pos:
            for i in nums:
                if not -len(params) <= i < len(params):
                    raise ValueError(
                        f"jit: static_argnums={nums!r} refers to positional argument {i}, but {_name(fun)} "
                        f"has {len(params)} positional parameter{'s' if len(params) != 1 else ''} {params}.")
        if not has_var_kw:
            allowed = {p.name for p in sig.parameters.values()
                       if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            for n in names:
                if n not in allowed:
                    raise ValueError(f"jit: static_argnames={names!r} names {n!r}, which is not a parameter of "
                                     f"{_name(fun)} (parameters: {sorted(allowed)}).")
        # Complete one from the other, as jax.jit does.
        nums_pos = {i % len(params) if params and -len(params) <= i < 0 else i for i in nums}
        names = tuple(names) + tuple(params[i] for i in sorted(nums_pos) if 0 <= i < len(params)
                                     and params[i] not in names
                                     and sig.parameters[params[i]].kind != inspect.Parameter.POSITIONAL_ONLY)
        nums = tuple(nums) + tuple(params.index(n) for n in names if n in params and params.index(n) not in nums_pos)
    return tuple(nums), frozenset(names)


def _name(fun: Callable) -> str:
    return getattr(fun, "__qualname__", None) or getattr(fun, "__name__", None) or repr(fun)


class _Static:
    """A static argument in a cache key: hashed and compared by value (``__hash__``/``__eq__``)."""

    __slots__ = ("value", "_hash")

    def __init__(self, value: Any, h: int):
        self.value, self._hash = value, h

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, _Static) or type(other.value) is not type(self.value):
            return False
        try:
            return bool(self.value == other.value)
        except Exception:  # noqa: BLE001 - e.g. an array-valued __eq__
            return self.value is other.value


def _hashable(value: Any, label: str) -> Hashable:
    try:
        h = hash(value)
    except TypeError as e:
        raise TypeError(
            f"jit: static argument {label} must be hashable (it is part of the cache key), but it is "
            f"{type(value).__name__} {value!r:.80} ({e}). Pass a tuple instead of a list, or make it a "
            "dynamic (tensor) argument.") from None
    return _Static(value, h)


def _unwrap(value: Hashable) -> Any:
    return value.value if isinstance(value, _Static) else value


def _to_tensor(v: Any, path: str, specs_ok: bool) -> Any:
    if specs_ok and isinstance(v, tf.TensorSpec):
        return v
    if isinstance(v, tf.Tensor):
        return v
    if isinstance(v, tf.Variable):
        return v.value()
    if isinstance(v, (bool, np.bool_, numbers.Number, np.ndarray, np.generic)) or hasattr(v, "__tf_tensor__") \
            or hasattr(v, "__array__"):
        try:
            return tf.convert_to_tensor(v)
        except (TypeError, ValueError):
            pass
    raise TypeError(
        f"jit: argument {path} is {type(v).__name__} {v!r:.80}, which is not a tensor. Pass tensors, "
        "NumPy arrays or Python numbers, or mark the argument static (static_argnums/static_argnames).")


def _spec_key(t: Any) -> tuple:
    shape = None if t.shape.rank is None else tuple(t.shape.as_list())
    return (shape, t.dtype)
