"""The one door to TensorFlow internals: every use of a private TensorFlow API is here.

Each entry says what it is, why no public API serves, and the TensorFlow versions it
was checked on. Everything else in tfscan imports this package (``from tfscan import
_tf``) and uses public ``tf.*`` (and ``keras.*``) APIs only — ``tests/test_tf_adapter.py``
greps the package to keep it so, and exercises every entry — so a TensorFlow release
that moves an internal breaks this package and that test, not code scattered across
tfscan.

The entries come in six groups, one module each:

* :mod:`~tfscan._tf.calls` — calling a traced function: :func:`call_concrete`,
  :func:`fixed_captures`, :func:`launch_compiled`, :func:`relaunch`, :func:`register_launch_gradient`, :func:`xla_trace`, :func:`quiet_retracing`;
* :mod:`~tfscan._tf.tapes` — the eager tapes and accumulators: :class:`record`,
  :func:`guard_empty_function_call_records`;
* :mod:`~tfscan._tf.graphs` — graphs being built: :func:`default_graph`,
  :func:`in_xla_context`, :func:`is_func_graph`, :func:`graph_function`,
  :func:`function_graph`, :func:`op_gradient_functions`, :func:`in_graph`,
  :func:`graph_variables`, :func:`set_op_gradient_function`, :func:`lean_graph`, :func:`gradient_function`, :func:`is_autograph_scope`,
  :func:`set_pfor_converter`, :func:`without_autograph`, :func:`unregister_gradient`,
  :func:`mark_variable_accessed`, :func:`distributed_container`, :func:`variable_handles`;
* :mod:`~tfscan._tf.vectorize` — vectorization: :class:`pfor`, :class:`xla`;
* :mod:`~tfscan._tf.keras_rnn` — Keras' RNN internals: :class:`keras_rnn`;
* :mod:`~tfscan._tf.loops` — a counted loop as one ``While`` op built directly: :func:`counted_loop`.

Checked on: TensorFlow 2.21 (the oldest and the newest release the package claims).
"""

from tfscan._tf.calls import (
    call_concrete,
    fixed_captures,
    launch_compiled,
    own_outputs,
    quiet_retracing,
    register_launch_gradient,
    relaunch,
    xla_trace,
)
from tfscan._tf.graphs import (
    CALL_OPS,
    CONDITIONAL_OPS,
    default_graph,
    distributed_container,
    function_graph,
    graph_function,
    gradient_function,
    graph_variables,
    in_graph,
    lean_graph,
    in_xla_context,
    is_autograph_scope,
    is_func_graph,
    mark_variable_accessed,
    op_gradient_functions,
    set_op_gradient_function,
    set_pfor_converter,
    unregister_gradient,
    variable_handles,
    without_autograph,
)
from tfscan._tf.keras_rnn import keras_rnn
from tfscan._tf.loops import counted_loop
from tfscan._tf.tapes import guard_empty_function_call_records, record
from tfscan._tf.vectorize import pfor, xla

# The door's entries (a private package: callers write ``_tf.<entry>``).
__all__ = ["CALL_OPS", "CONDITIONAL_OPS", "call_concrete", "fixed_captures", "launch_compiled", "own_outputs",
           "quiet_retracing", "register_launch_gradient", "relaunch", "xla_trace",
           "record", "guard_empty_function_call_records",
           "default_graph", "distributed_container", "function_graph", "graph_function", "gradient_function", "graph_variables", "in_graph", "lean_graph",
           "in_xla_context",
           "is_autograph_scope", "is_func_graph", "mark_variable_accessed", "op_gradient_functions",
           "set_op_gradient_function", "set_pfor_converter", "unregister_gradient", "variable_handles",
           "without_autograph",
           "counted_loop",
           "pfor", "xla", "keras_rnn"]
