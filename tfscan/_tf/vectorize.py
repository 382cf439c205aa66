"""Vectorization: TensorFlow's ``pfor`` converter (tfscan's batching rules plug into it)
and the two XLA ops ``tf.raw_ops`` does not expose.

Part of the one door to TensorFlow internals (:mod:`tfscan._tf`): every entry says what
it is, why no public API serves, and the TensorFlow versions it was checked on.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla as _xla
from tensorflow.python.ops.parallel_for import pfor as _pfor

__all__: list = []  # private module


class pfor:  # noqa: N801 - a namespace named after TensorFlow's module it fronts
    """``pfor``, the vectorizer behind ``tf.vectorized_map``, which ``tfscan.vmap`` drives.

    Why private: ``tf.vectorized_map`` offers no way to add or replace the conversion
    rule of an op type, to convert a function of a graph under construction, or to keep
    an output unbatched; tfscan needs all three (a scan's ``While`` batches as one loop).
    """

    PFor = _pfor.PFor
    ConversionNotImplementedError = _pfor.ConversionNotImplementedError

    @staticmethod
    def wrap(t: tf.Tensor, stacked: bool) -> Any:
        """A converted value: ``t`` with a flag saying whether it carries the batch axis."""
        return _pfor.wrap(t, stacked)

    @staticmethod
    def stack(t: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        """``t`` tiled along a new leading batch axis of ``size`` (shape ``[1]``)."""
        return _pfor._stack(t, size).t  # noqa: SLF001

    @staticmethod
    def converter(op_type: str) -> Callable | None:
        """The conversion rule registered for ``op_type``, or ``None``."""
        return _pfor._pfor_converter_registry.get(op_type)  # noqa: SLF001

    @staticmethod
    def set_converter(op_type: str, converter: Callable) -> None:
        """Register (or replace) the conversion rule of ``op_type``."""
        _pfor._pfor_converter_registry[op_type] = converter  # noqa: SLF001

    @staticmethod
    def convert(converter: Any, t: tf.Tensor) -> Any:
        """``t`` converted by ``converter`` (a ``PFor``): a wrapped value (:meth:`wrap`)."""
        return converter._convert_helper(t)  # noqa: SLF001

    @staticmethod
    def convert_graph_call(fgraph: Any, converter: Any, inputs: Sequence[Any], n_outputs: int,
                           inline: bool = False) -> list:
        """Convert a call of the function whose graph is ``fgraph`` on wrapped ``inputs``:
        the first ``n_outputs`` outputs, wrapped. As pfor's ``_convert_function_call``,
        but given the graph (a function imported from a ``GraphDef`` has only its
        ``FunctionDef``: see :func:`function_graph`). ``inline``: the converted ops go into
        the graph being built, not into a new function called from it (for a program XLA
        compiles whole: TensorFlow's gradient of a call makes the forward call return the
        constants its backward reads, and XLA's constant analysis then makes every input of
        the call, the data included, a compile-time constant)."""
        graph_outputs = fgraph.outputs[:n_outputs]
        if inline:
            for inp, arg in zip(fgraph.inputs, inputs):
                converter._add_conversion(inp, arg)  # noqa: SLF001
            return [converter._convert_helper(x) for x in graph_outputs]  # noqa: SLF001

        @tf.function(autograph=False)
        def call(*args):
            for inp, arg in zip(fgraph.inputs, args):
                converter._add_conversion(inp, arg)  # noqa: SLF001
            return tuple(converter._convert_helper(x).t for x in graph_outputs)  # noqa: SLF001

        outs = call(*inputs)
        wrapped = []
        for out, graph_out in zip(outs, graph_outputs):
            converted = converter._convert_helper(graph_out)  # noqa: SLF001
            wrapped.append(_pfor.wrap(out, converted.is_stacked, converted.is_sparse_stacked))
        return wrapped


class xla:  # noqa: N801 - a namespace named after TensorFlow's module it fronts
    """XLA's dynamic slices: how the compiled loop reads and writes its ``[length, ...]`` buffers.

    Why private: ``XlaDynamicUpdateSlice``/``XlaDynamicSlice`` have no public Python API
    (``tf.raw_ops`` does not list them; ``tf.tensor_scatter_nd_update`` lowers to a
    scatter, which XLA does not update in place). tfscan differentiates its loops with its
    own VJP; the gradients registered below (:func:`_register_gradients`) are for the ops
    TensorFlow's own gradients emit under XLA.
    """

    @staticmethod
    def dynamic_update_slice(buffer: tf.Tensor, update: tf.Tensor, start: tf.Tensor) -> tf.Tensor:
        """``buffer`` with ``update`` written at index ``start`` (one index per dimension)."""
        return _xla.dynamic_update_slice(buffer, update, start)

    @staticmethod
    def dynamic_slice(x: tf.Tensor, start: tf.Tensor, sizes: Any) -> tf.Tensor:
        """The slice of ``x`` of shape ``sizes`` starting at ``start``."""
        return _xla.dynamic_slice(x, start, sizes)


def _dynamic_update_slice_grad(op: Any, d: tf.Tensor) -> list:
    _, update, start = op.inputs
    return [xla.dynamic_update_slice(d, tf.zeros_like(update), start), xla.dynamic_slice(d, start, tf.shape(update)),
            None]


def _dynamic_slice_grad(op: Any, d: tf.Tensor) -> list:
    operand, start, _ = op.inputs
    return [xla.dynamic_update_slice(tf.zeros_like(operand), d, start), None, None]


def _register_gradients() -> None:
    """Gradients for ``XlaDynamicUpdateSlice`` and ``XlaDynamicSlice``, each written with
    the two ops themselves, so they nest to any order.

    TensorFlow's gradient of ``tf.slice`` (and of ``concat``, through it) in XLA's context
    emits an ``XlaDynamicUpdateSlice``, and registers no gradient for it: forward mode over
    such a gradient (a ``ForwardAccumulator`` around a tape: a Hessian-vector product of an
    ``associative_scan``) and a third derivative failed with TensorFlow's ``LookupError``.
    Registered once, at import, through the public ``tf.RegisterGradient``; nothing of
    TensorFlow's is overridden (if a release registers one, it is kept). Checked on TF 2.21.
    """
    for op_type, grad in (("XlaDynamicUpdateSlice", _dynamic_update_slice_grad),
                          ("XlaDynamicSlice", _dynamic_slice_grad)):
        try:
            tf.RegisterGradient(op_type)(grad)
        except KeyError:  # TensorFlow registered one: keep it
            pass


_register_gradients()
