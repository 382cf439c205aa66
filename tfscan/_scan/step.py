"""A step function traced once, with its closed-over values made explicit.

``tf.function`` captures what a step closes over: tensors and ``tf.Variable`` handles.
For a gradient those must be explicit inputs (the outer tape only sees what crosses the
custom-gradient boundary), and a variable must be *read at call time* so that
``v.assign`` between calls is seen. :class:`Traced` keeps the step's GraphDef in which
every captured tensor and every variable read is fed, and :meth:`Traced.apply`
imports it inline into the graph being built, fed with the given arguments and constants.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import tensorflow as tf

from tfscan import _tf
from tfscan._core import context as _context
from tfscan._core.cache import Feed
from tfscan._scan.graph_piece import GraphPiece, ancestors_of

__all__ = []  # private module


def _holds_conditional(graph: Any) -> bool:
    """Whether ``graph`` holds a conditional, also inside the functions it calls (a
    ``tfscan.cond`` traced where a tape records is a call of its program): TensorFlow's
    gradient of one built outside an XLA context saves ``variant`` optionals, which the
    compiled backward loops cannot hold (a gradient of a gradient then fails to compile)."""
    called = []
    for op in graph.get_operations():
        if op.type in _tf.CONDITIONAL_OPS:
            return True
        if op.type in _tf.CALL_OPS:
            called.append(op.node_def.attr["f"].func.name)
    seen: set = set()
    while called:  # the called functions' definitions, and the functions they call
        name = called.pop()
        func = _tf.graph_function(graph, name) if name not in seen else None
        seen.add(name)
        for node in func.definition.node_def if func is not None else ():
            if node.op in _tf.CONDITIONAL_OPS:
                return True
            if node.op in _tf.CALL_OPS:
                called.append(node.attr["f"].func.name)
    return False


class Traced:
    """``fn(*args) -> list of tensors`` traced on ``specs``; re-emitted by :meth:`apply`.

    Attributes:
      out_specs: ``tf.TensorSpec`` of every output.
      const_sources: what feeds each constant: a captured tensor or a ``tf.Variable``.
      feed: which constants came from which slot of the function's
        :class:`tfscan._core.cache.Closure` (``slots``: its tensors when this trace was made);
        :meth:`const_values` feeds a later call's slot tensors in their place.
    """

    def __init__(self, fn: Callable[..., Sequence[tf.Tensor]], specs: Sequence[tf.TensorSpec],
                 name: str = "step", slots: Sequence[tf.Tensor] = ()):
        # Traced with tapes live: a GradientTape used inside the step must record. Traced as
        # XLA compiles it (the step only ever runs inside a compiled program): a nested
        # cond/switch/scan/jit is emitted inline, so the step's VJP differentiates its ops, not
        # a call of a compiled function (whose gradient TensorFlow builds outside any XLA
        # context, with ``variant`` intermediates no loop can save).
        def trace():
            with _context.internal_trace():
                return tf.function(fn, autograph=False, jit_compile=True).get_concrete_function(*specs)
        cf = _context.traced_unwatched(trace, slots)
        self._cf = cf  # keeps the functions the step calls registered with the runtime
        graph = cf.graph
        # Its VJP is traced in an XLA context then (:class:`tfscan._scan.residuals.StepVJP`).
        self.has_conditional = _holds_conditional(graph)
        self.name = name
        self.n_args = len(specs)
        self.out_specs = [tf.TensorSpec(t.shape, t.dtype) for t in graph.outputs]
        # What each output is beneath the Identity ops tf.function adds: equal names mean the
        # step returned one tensor twice (an RNN's new state as carry and as y).
        self.out_roots = [_root(t).name for t in graph.outputs]
        self._out_names = [t.name for t in graph.outputs]
        self._arg_names = [t.name for t in graph.inputs[: self.n_args]]
        variables = {id(v.handle): v for v in graph.variables}
        self.const_sources: list[Any] = []
        self._const_names: list[str] = []
        self._handle_names: list[tuple[str, Any]] = []  # resources used other than by reads
        for external, internal in graph.captures:
            if internal.dtype != tf.resource:
                self.const_sources.append(external)
                self._const_names.append(internal.name)
                continue
            var = variables.get(id(external))
            consumers = internal.consumers()
            reads = [op for op in consumers if op.type == "ReadVariableOp"]
            if var is not None and not any(_writes(op) for op in consumers):
                # Each read is fed with the value read at call time (so a tape sees it). A
                # replica's component of a tf.distribute variable is read through its
                # container: each replica then reads its own, and the trace serves them all.
                container = _tf.distributed_container(var)
                source = var if container is None else container
                for op in reads:
                    self.const_sources.append(source)
                    self._const_names.append(op.outputs[0].name)
            if len(reads) < len(consumers) or var is None or any(_writes(op) for op in consumers):
                # Other users of the resource (state, an RNG, a writer) get the handle itself.
                self._handle_names.append((internal.name, external))
        fed = self._arg_names + self._const_names + [n for n, _ in self._handle_names]
        if self.plain:  # emitted from beneath those Identity ops: fewer ops in every loop body
            self._out_names = list(self.out_roots)  # (any other trace keeps them: control edges)
        # Resource placeholders whose every read is fed are left unused: stub them too.
        unused = [t.name for _, t in graph.captures if t.dtype == tf.resource and t.name not in fed]
        # A plain trace keeps only what its outputs read: a JVP step's trace holds the dead half
        # of its transposed gradient (:func:`tfscan._scan.forward.jvp_call`), not emitted again.
        keep = ancestors_of(graph, self._out_names, fed) if self.plain else None
        self._piece_args = (fed, self._out_names, keep, unused)
        self.piece = GraphPiece(graph.as_graph_def(), fed, self._out_names, keep=keep, stub=unused, name=name,
                                source=graph)
        self.feed = Feed(self.const_sources, slots)
        # Tensors of the graph being built (not eager ones) that no slot feeds tie this trace
        # to that graph.
        self.graph_bound = self.feed.graph_bound(self.const_sources) or any(
            isinstance(e, tf.Tensor) and tf.is_symbolic_tensor(e) for _, e in self._handle_names)
        # A trace that reads variables only by value (and through their containers) holds
        # nothing of one tf.distribute replica: every replica may run it (see _core.cache).
        self.replica_safe = not self._handle_names and not self.graph_bound

    @functools.cached_property
    def plain(self) -> bool:
        """Whether the trace is pure ops on tensors: no state, variable or other resource, no
        nested function (loop, conditional, call) and no op with a gradient of its own
        (``IdentityN``: ``tf.custom_gradient``, a nested scan). Such a step's JVP is built
        inline op by op by forward rules (:func:`tfscan._scan.forward.jvp_call`,
        :mod:`tfscan._scan.jvp_rules`), and its VJP emits this trace again."""
        if self._handle_names or any(isinstance(s, tf.Variable) for s in self.const_sources):
            return False
        for op in self._cf.graph.get_operations():
            if op.type in _OWN_GRADIENT or op.op_def.is_stateful:
                return False
            if any(a.HasField("func") or a.list.func for a in op.node_def.attr.values()):
                return False
        return True

    def changed_integers(self, n: int) -> list[int]:
        """Indices ``i < n`` of integer arguments that output ``i`` does not return unchanged
        (beneath Identity ops): as a loop's variables they are never compile-time constants
        of its program (XLA takes a loop variable as one only when the body passes it
        through), so the program's call may feed them at run time."""
        return [i for i in range(n) if self.out_specs[i].dtype.is_integer
                and self.out_roots[i] != self._arg_names[i]]

    @functools.cached_property
    def fingerprint(self) -> tuple:
        """What a new trace must share with this one to reuse its compiled programs:
        constants and variable reads of the same shapes and dtypes (their values are
        inputs), the same other resources, and the same ops in the same order (their names
        and nested function names aside)."""
        nodes = []
        # Names by position: a new Keras cell of the same configuration traces the same ops
        # under another name scope (``gru_cell_2/MatMul``), and its variables are inputs.
        # Names from outside the piece (the fed constants' reads) by order of first use.
        index = {node.name: str(i) for i, node in enumerate(self.piece.graph_def.node)}

        def renamed(ref: str) -> str:
            control, name = ref.startswith("^"), ref.lstrip("^")
            name, colon, port = name.partition(":")
            return ("^" if control else "") + index.setdefault(name, f"in{len(index)}") + colon + port
        for node in self.piece.graph_def.node:
            node = tf.compat.v1.NodeDef.FromString(node.SerializeToString())
            node.ClearField("device")  # a replica's device scope: one XLA program runs anywhere
            node.name = index[node.name]
            node.input[:] = [renamed(r) for r in node.input]
            if "_class" in node.attr:  # colocation with a named op
                del node.attr["_class"]
            for attr in node.attr.values():
                if attr.HasField("func"):
                    attr.ClearField("func")
                if attr.HasField("list"):
                    del attr.list.func[:]
            nodes.append(node.SerializeToString(deterministic=True))
        # Variables are read and passed in like tensors: their shapes and dtypes count; a
        # resource used otherwise (state, an RNG) is captured by the programs: its identity.
        consts = tuple((("variable" if isinstance(s, tf.Variable) else "tensor"),
                        tuple(s.shape.as_list()) if s.shape.rank is not None else None, s.dtype)
                       for s in self.const_sources)
        consts += tuple(("resource", id(e)) for _, e in self._handle_names)
        return consts, tuple(nodes)

    def depends_on(self) -> list[tuple[set, set]]:
        """For each output, ``(argument indices, constant indices)`` it may depend on: the
        trace's ops walked in order (a GraphDef lists a function's ops as they were created),
        every output of an op taken to depend on all of its inputs (a nested loop or call
        counts whole), except that a shape, size, rank or ``zeros_like`` depends on nothing
        (as in JAX, where shapes are static; ``pfor`` never batches them). Otherwise over-approximate: an input
        met before its op (an order this walk does not expect) counts as every input."""
        every = (frozenset(range(self.n_args)), frozenset(range(len(self._const_names))))
        reach: dict[str, tuple[frozenset, frozenset]] = {}
        for i, name in enumerate(self._arg_names):
            reach[name.split(":")[0]] = (frozenset([i]), frozenset())
        for i, name in enumerate(self._const_names):
            a, k = reach.get(name.split(":")[0], (frozenset(), frozenset()))
            reach[name.split(":")[0]] = (a, k | {i})
        for node in self.piece.graph_def.node:
            if node.name in reach:
                continue
            if node.op in _SHAPE_OPS:
                reach[node.name] = (frozenset(), frozenset())
                continue
            a, k = set(), set()
            for inp in node.input:
                if not inp.startswith("^"):
                    ra, rk = reach.get(inp.split(":")[0], every)
                    a |= ra
                    k |= rk
            reach[node.name] = (frozenset(a), frozenset(k))
        return [tuple(set(s) for s in reach.get(name.split(":")[0], every)) for name in self._out_names]

    def const_values(self, slots: Sequence[tf.Tensor] | None = None) -> list[tf.Tensor]:
        """The constants' current values: variables are read now (and seen by a tape);
        with ``slots`` (a later call's closure tensors) those replace the traced ones."""
        sources = self.const_sources if slots is None else self.feed.values(self.const_sources, slots)
        return [s.value() if isinstance(s, tf.Variable) else s for s in sources]

    @property
    def handles(self) -> list[tuple[str, Any]]:
        """``(placeholder, external)`` of the resources used other than by variable reads."""
        return list(self._handle_names)

    def feeds(self, args: Sequence[tf.Tensor], consts: Sequence[tf.Tensor]) -> list:
        """The values for ``piece.fed``: arguments, constants, then pass-through resources."""
        return list(args) + list(consts) + [external for _, external in self._handle_names]

    @functools.cached_property
    def batchable_piece(self) -> GraphPiece:
        """The trace as :attr:`piece` but with every product kept a ``dot``: what ``pfor``
        batches (:mod:`tfscan._transforms.scan_batching`). A product small for one example
        is not for the batch: rewritten before batching, the batched step would multiply and
        sum ``B`` times the elements (a ``[64, 1, 32, 32]`` broadcast for ``vmap`` of a
        ``[32] @ [32, 32]`` step) where one ``[64, 32] @ [32, 32]`` dot serves; the batched
        step's own piece then rewrites what is still small."""
        fed, outs, keep, unused = self._piece_args
        graph = self._cf.graph
        return GraphPiece(graph.as_graph_def(), fed, outs, keep=keep, stub=unused, name=self.name,
                          source=graph, small_dots=False)

    def apply(self, args: Sequence[tf.Tensor], consts: Sequence[tf.Tensor],
              batchable: bool = False) -> list[tf.Tensor]:
        """Emit the traced ops into the current graph, fed with ``args`` and ``consts``
        (``batchable``: as :attr:`batchable_piece`, for ``pfor`` to batch)."""
        piece = self.batchable_piece if batchable else self.piece
        return piece.apply(self.feeds(args, consts))


# Ops whose gradient is not their type's: a custom gradient's or a nested scan's ``IdentityN``.
_OWN_GRADIENT = frozenset({"IdentityN", "PreventGradient"})

# Ops whose value depends on their inputs' shapes only: ``pfor`` leaves them unbatched.
_SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank", "VariableShape", "ZerosLike", "OnesLike",
                        "TensorListLength", "TensorListElementShape"})


def _root(t: tf.Tensor) -> tf.Tensor:
    while t.op.type == "Identity" and t.op.inputs:
        t = t.op.inputs[0]
    return t


def _writes(op) -> bool:
    """Whether ``op`` changes a variable (then its reads must stay reads, in order)."""
    return op.type.startswith(("Assign", "ResourceApply", "ResourceScatter", "ResourceSparseApply"))
