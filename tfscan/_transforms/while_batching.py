"""The batching rule of a ``While`` loop inside ``tfscan.vmap``: JAX's rule for ``while_loop``.

``pfor``'s own ``While`` rule is written for loops whose trip count differs per example
(it partitions the running examples every iteration and keeps ``TensorArray``s of the
finished ones; ``dynamic_partition`` does not compile under XLA). :class:`WhileBatcher`
builds one ``While`` over the batched loop variables instead: the loop variables that
become batched are found by a fixpoint (traced, then traced again with more of them
batched), and when the predicate itself is batched the loop runs while any example runs,
finished examples keeping their values (``where``), exactly as ``jax.vmap`` does.
"""

from __future__ import annotations

import tensorflow as tf

from tfscan import _tf
from tfscan._tf import pfor as pfor_lib
from tfscan._transforms import batching as _batching

__all__ = []  # private module


class WhileBatcher:
    """One ``While`` over the batched loop variables (batch axis 0 of the stacked ones)."""

    def __init__(self, pfor_input):
        self.pfor_input = pfor_input
        self.pfor = pfor_input.pfor
        graph = pfor_input.op.graph
        self.cond_graph = _tf.function_graph(graph, pfor_input.get_attr("cond").name)
        self.body_graph = body_graph = _tf.function_graph(graph, pfor_input.get_attr("body").name)
        if self.cond_graph is None or body_graph is None:
            raise ValueError(f"tfscan.vmap: cannot find the functions of while loop {pfor_input.op.name}.")
        self.pass_through = {i for i, (a, b) in enumerate(zip(body_graph.inputs, body_graph.outputs))
                             if a is b}
        self.parallel_iterations = pfor_input.get_attr("parallel_iterations")
        self.n = pfor_input.num_inputs

    def _cond(self, args, stacked):
        wrapped = [pfor_lib.wrap(a, s) for a, s in zip(args, stacked)]
        return pfor_lib.convert_graph_call(self.cond_graph, _batching.sub_converter(self.pfor, self.cond_graph),
                                           wrapped, 1)[0]

    def _body(self, args, stacked):
        wrapped = [pfor_lib.wrap(a, s) for a, s in zip(args, stacked)]
        return pfor_lib.convert_graph_call(self.body_graph, _batching.sub_converter(self.pfor, self.body_graph),
                                           wrapped, self.n)

    def _shapes(self, stacked):
        n_static = tf.get_static_value(self.pfor.loop_len_vector)
        batch = tf.TensorShape([int(n_static[0]) if n_static is not None else None])
        op = self.pfor_input.op
        attr_shapes = op.get_attr("output_shapes") or [None] * self.n
        shapes = []
        for i, (out, s) in enumerate(zip(op.outputs, stacked)):
            shape = out.shape
            if attr_shapes[i] is not None:
                shape = shape.merge_with(tf.TensorShape(attr_shapes[i]))
            shapes.append(batch.concatenate(shape) if s else shape)
        return shapes

    def _build(self, inputs, stacked, batched_pred, record):
        """The converted loop as a ``tf.function``; ``record`` collects stacking mismatches."""
        shapes = self._shapes(stacked)
        n = self.pfor.loop_len_vector

        def cond(*args):
            c = self._cond(args, stacked)
            if c.is_stacked:
                record["pred_stacked"] = True
                return tf.reduce_any(c.t)
            return tf.reshape(c.t, [])

        def body(*args):
            outs = self._body(args, stacked)
            new = []
            for i, (o, s) in enumerate(zip(outs, stacked)):
                t = o.t
                if o.is_stacked and not s:
                    record.setdefault("mismatch", set()).add(i)
                elif s and not o.is_stacked:
                    t = _batching.tile(t, n)
                new.append(t)
            if batched_pred:
                c = self._cond(args, stacked)
                keep = c.t if c.is_stacked else tf.fill(tf.reshape(n, [1]), tf.reshape(c.t, []))
                for i in range(self.n):
                    if stacked[i] and i not in self.pass_through:
                        new[i] = tf.where(_batching.along(keep, new[i]), new[i], args[i])
            if record.get("mismatch"):
                return list(args)  # an abandoned trace: the stacking changes, then we retrace
            for t, shape in zip(new, shapes):
                t.set_shape(shape)
            return new

        @tf.function(autograph=False)
        def while_fn():
            return tf.while_loop(cond, body, list(inputs), shape_invariants=shapes,
                                 parallel_iterations=self.parallel_iterations)

        return while_fn

    def convert(self):
        inputs = [inp.t for inp in self.pfor_input.inputs]
        stacked = [inp.is_stacked for inp in self.pfor_input.inputs]
        n = self.pfor.loop_len_vector
        batched_pred = False
        for _ in range(self.n + 2):
            record: dict = {}
            fn = self._build(inputs, stacked, batched_pred, record)
            fn.get_concrete_function()  # trace: find the loop variables that become batched
            if record.get("pred_stacked") and not batched_pred:
                # Per-example trip counts: every loop-variant variable becomes batched.
                batched_pred = True
                stacked = [s or i not in self.pass_through for i, s in enumerate(stacked)]
            elif record.get("mismatch"):
                stacked = [s or i in record["mismatch"] for i, s in enumerate(stacked)]
            else:
                break
            inputs = [_batching.tile(t, n) if s and not inp.is_stacked else t
                      for t, s, inp in zip([i.t for i in self.pfor_input.inputs], stacked,
                                           self.pfor_input.inputs)]
        else:  # pragma: no cover - the stacked set only grows, so this terminates
            raise RuntimeError("tfscan.vmap: batching a while loop did not converge.")
        outs = fn()
        return [pfor_lib.wrap(o, s) for o, s in zip(outs, stacked)]
