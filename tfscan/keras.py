"""Keras 3 recurrent layers that run their cell with :func:`tfscan.scan`.

:class:`Scan` is a drop-in for ``keras.layers.RNN(cell, ...)``: the same cells
(``SimpleRNNCell``, ``GRUCell``, ``LSTMCell``, ``StackedRNNCells`` or your own), the
same call arguments (``initial_state``, ``mask``, ``training``), the same outputs and
gradients given the same weights, but the time loop is one XLA-compiled ``tfscan.scan``
with tfscan's linear-time gradient (and its ``remat`` policies).
:class:`SimpleRNN`, :class:`GRU` and :class:`LSTM` are ``Scan`` around the matching
Keras cell, with the constructor arguments of ``keras.layers.SimpleRNN`` / ``GRU`` / ``LSTM``.

``Scan`` subclasses ``keras.layers.RNN`` and replaces its ``call``/``inner_loop``: the
cell's initial states, ``stateful=True`` state variables and ``reset_state()``, the
dropout masks (drawn once per call) and the configuration are Keras' own. ``call`` is
ours rather than ``RNN.call`` because the loop differs in ways ``RNN.call`` hard-codes:
its ``unroll`` is a bool (ours counts steps per iteration and needs no static length),
it has no ``time_major`` and no ``constants`` (Keras 3 dropped them; ours passes them
to the cell as Keras 2 did), and its ``inner_loop`` takes batch-major sequences.

The layers need the TensorFlow backend of Keras (``KERAS_BACKEND=tensorflow``, Keras'
default); building one under another backend raises ``RuntimeError``. ``import tfscan``
registers them for ``keras.models.load_model``.

Differences from ``keras.layers.RNN``:

* the input is one tensor (no nested inputs), and the cell must be a Keras cell (a
  ``call`` method);
* ``unroll`` is tfscan's: steps per loop iteration (an int), or ``True`` for a full unroll;
* extra ``remat`` (see :func:`tfscan.scan`) and ``time_major`` arguments, and the call
  argument ``constants``;
* under a ``mixed_bfloat16``/``mixed_float16`` policy with no GPU or TPU, the loop computes
  in float32 and rounds its outputs once to the policy's dtype (Keras' layers round every
  op; see ``loop_dtype``): XLA:CPU has no 16-bit arithmetic, so this is faster to run and
  to compile, and as near Keras' own outputs as a 16-bit XLA loop is;
* a cell's per-step output must have shape ``(batch, *output_size)``, with
  ``output_size`` the cell's attribute or else ``state_size[0]`` (as Keras assumes for
  ``compute_output_shape``) when ``return_sequences=False`` or a mask is given;
* :class:`RNN` is :class:`Scan` under ``keras.layers.RNN``'s class name, so ``.weights.h5``
  files (whose entries Keras names after each layer's class) move between the two.

Example:

>>> import numpy as np, keras, tfscan.keras
>>> x = np.ones((2, 5, 3), "float32")
>>> tuple(tfscan.keras.LSTM(4, return_sequences=True)(x).shape)
(2, 5, 4)
>>> out, h, c = tfscan.keras.Scan(keras.layers.LSTMCell(4), return_state=True)(x)
>>> tuple(out.shape), tuple(c.shape)
((2, 4), (2, 4))
>>> tfscan.keras.GRU(4, dtype="mixed_bfloat16")(x).dtype.name  # computed in float32 on CPU
'bfloat16'
"""

from __future__ import annotations

import inspect
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import tfscan
from tfscan._keras_dtypes import LOOP_DTYPES, ComputingIn, loop_dtype_for
from tfscan._tf import keras_rnn

__all__ = ["Scan", "RNN", "SimpleRNN", "GRU", "LSTM"]


def _check_backend() -> None:
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"tfscan.keras layers need the TensorFlow backend of Keras, but Keras runs on "
            f"{backend!r}. Set KERAS_BACKEND=tensorflow before importing keras.")


def _dropout_cells(cell: Any) -> list:
    """The cells (this one, or those of a ``StackedRNNCells``) that cache dropout masks."""
    cells = list(getattr(cell, "cells", None) or [cell]) if isinstance(
        cell, keras.layers.StackedRNNCells) else [cell]
    return [c for c in cells if hasattr(c, "get_dropout_mask") and hasattr(c, "get_recurrent_dropout_mask")]


def _parameters(fn: Any) -> set:
    """The names of ``fn``'s parameters (none if they cannot be read)."""
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _skeleton(nest: Any) -> Any:
    """``nest`` with every leaf replaced by 0: hashable by value, so a step keyed on it never retraces."""
    return tf.nest.map_structure(lambda _: 0, nest)


def _check_states(states: list, state_size: Any, batch: Any) -> None:
    """Each initial state must be ``[batch, size]`` for its entry of the cell's ``state_size``."""
    leaves, sizes = tf.nest.flatten(states), tf.nest.flatten(state_size)
    if len(leaves) != len(sizes):
        raise ValueError(f"tfscan.keras.Scan: initial_state has {len(leaves)} tensors but the cell has "
                         f"{len(sizes)} states (state_size={state_size!r}). Give one tensor per state.")
    for i, (s, size) in enumerate(zip(leaves, sizes)):
        if not isinstance(size, int):
            continue  # a state of more than one axis (a TensorShape): its cell checks it
        want = tf.TensorShape([batch if isinstance(batch, int) else None, size])
        if not want.is_compatible_with(s.shape):
            raise ValueError(f"tfscan.keras.Scan: initial_state[{i}] has shape {s.shape}, but the cell's "
                             f"state {i} is [batch, {size}] = {want} for these sequences. Give each initial "
                             "state one row per example of the batch and the state's size.")


def _check_mask(mask: tf.Tensor, x: tf.Tensor, time_major: bool) -> None:
    """A mask must have the sequences' two leading axes (``x`` is time-major here)."""
    want = [x.shape[0], x.shape[1]] if time_major else [x.shape[1], x.shape[0]]
    layout = "[time, batch] (time_major=True)" if time_major else "[batch, time]"
    if mask.shape.rank is None:
        return  # checked when the loop reads it
    if mask.shape.rank != 2 or any(a is not None and b is not None and a != b
                                   for a, b in zip(mask.shape.as_list(), want)):
        raise ValueError(f"tfscan.keras.Scan: mask must be {layout} booleans, shape "
                         f"{tf.TensorShape(want)}, to match the sequences; got shape {mask.shape}. "
                         + ("Transpose the mask to [time, batch]." if time_major else
                            "Give one boolean per example and step."))


def _expand_mask(m: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """A ``[batch]`` bool mask shaped to broadcast against ``like`` (``[batch, ...]``)."""
    return tf.reshape(m, tf.concat([tf.shape(m), tf.ones([like.shape.rank - 1], tf.int32)], 0))


@keras.saving.register_keras_serializable(package="tfscan")
class Scan(keras.layers.RNN):
    """``keras.layers.RNN(cell, ...)`` with the time loop run by :func:`tfscan.scan`.

    A subclass of ``keras.layers.RNN``: states, ``stateful`` state variables and
    ``reset_state()``, dropout masks, masks and serialization are Keras'; ``call`` runs
    the time loop as one compiled ``tfscan.scan`` (:meth:`inner_loop`).

    Args:
      cell: a Keras RNN cell: ``cell.call(inputs_t, states, [training], [constants])
        -> (output_t, new_states)`` with a ``state_size`` (an int or a list of them) and
        optionally ``get_initial_state(batch_size)`` and ``output_size``. A list of cells
        is stacked with ``keras.layers.StackedRNNCells``, as ``keras.layers.RNN`` does.
      return_sequences: return every step's output (``[batch, time, units]``), not the last.
      return_state: also return the final states: ``[output, *states]``.
      go_backwards: walk the sequence from its end; returned sequences are in that
        (reversed) order, as in Keras.
      stateful: keep the final states of a batch in variables and start the next call
        from them (needs a static batch size); ``reset_state()`` zeroes them.
      unroll: steps per compiled loop iteration (a positive int; ``False`` is 1), or
        ``True`` to unroll fully.
      remat: the gradient's memory policy, as :func:`tfscan.scan`'s ``remat``
        (``False``, ``True``/``"full"``, an int ``k``, or ``"sqrt"``). Outputs and
        gradients do not depend on it.
      time_major: inputs (and returned sequences) are ``[time, batch, ...]``. Not inside
        ``keras.layers.Bidirectional``: it flips axis 1 of the backward layer's sequences,
        which is the batch axis in this layout (transpose to batch-major around it instead).
      zero_output_for_mask: with a mask, masked steps output zeros instead of repeating
        the previous output (as ``keras.layers.RNN``).
      loop_dtype: the dtype the time loop computes in. ``None`` (the default): under a
        ``mixed_float16``/``mixed_bfloat16`` policy with no GPU or TPU visible, ``"float32"``
        (XLA:CPU has no 16-bit arithmetic: it converts every 16-bit op to float32 and back,
        which costs time and compile time, and its results are no nearer Keras' own
        16-bit ones than float32's); otherwise the cell's compute dtype. The layer's
        inputs and outputs keep the policy's compute dtype either way. Give the compute
        dtype (e.g. ``"bfloat16"``) to loop in it on CPU too. It applies to cells with
        float32 variables (a plain Keras dtype policy).
      **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``, ``trainable``, ...).

    Call arguments:
      sequences: ``[batch, time, features]`` (``time`` may be ``None``).
      initial_state: a tensor or list of tensors, one per state; defaults to the
        ``stateful`` variables, else the cell's ``get_initial_state`` (zeros).
      mask: ``[batch, time]`` booleans (``True`` = use the step), ``[time, batch]`` when
        ``time_major`` (the layout of the sequences' leading axes, as Keras 2's ``RNN``); a
        masked step keeps the states and repeats the previous output.
      training: passed to the cell (dropout).
      constants: a tensor or list of tensors passed unchanged to every step as the
        cell's ``constants`` argument (Keras 2's ``RNN`` convention; Keras 3's ``RNN``
        has no ``constants``). Gradients flow to them.

    Example:

    >>> import numpy as np, keras, tfscan.keras
    >>> layer = tfscan.keras.Scan(keras.layers.GRUCell(3), return_sequences=True)
    >>> tuple(layer(np.zeros((2, 7, 5), "float32")).shape)
    (2, 7, 3)
    """

    def __init__(self, cell, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, stateful: bool = False, unroll: int | bool = 1,
                 remat: bool | int | str = False, time_major: bool = False,
                 zero_output_for_mask: bool = False, loop_dtype: str | None = None, **kwargs):
        if isinstance(cell, (list, tuple)):
            cell = keras.layers.StackedRNNCells(cell)
        if not hasattr(cell, "call"):
            raise ValueError(f"Scan: cell must be a Keras RNN cell (a layer with "
                             f"call(inputs, states)); got {cell!r}.")
        state_size = getattr(cell, "state_size", None)
        if not isinstance(state_size, (int, list, tuple)):
            raise ValueError(f"Scan: the cell needs a state_size attribute (an int, or a list of "
                             f"ints with one per state); got state_size={state_size!r}.")
        super().__init__(cell, return_sequences=bool(return_sequences), return_state=bool(return_state),
                         go_backwards=bool(go_backwards), stateful=bool(stateful), unroll=False,
                         zero_output_for_mask=bool(zero_output_for_mask), **kwargs)
        # Keras' bool (``None``, a NumPy bool: its own ``unroll`` is one) or tfscan's steps per iteration.
        self.unroll = (True if unroll else 1) if unroll is None or isinstance(unroll, (bool, np.bool_)) else int(unroll)
        self.remat = remat
        self.time_major = bool(time_major)
        if loop_dtype is not None and keras.backend.standardize_dtype(loop_dtype) not in LOOP_DTYPES:
            raise ValueError(f"Scan: loop_dtype must be None, 'float32', 'bfloat16' or "
                             f"'float16'; got {loop_dtype!r}.")
        self.loop_dtype = None if loop_dtype is None else keras.backend.standardize_dtype(loop_dtype)
        self.input_spec = keras.layers.InputSpec(min_ndim=3)
        params = _parameters(cell.call)
        self._cell_takes_training = keras_rnn.cell_takes_training(cell, "training" in params)
        self._cell_takes_constants = "constants" in params

    # -- shapes --------------------------------------------------------------------------

    def _batch_major(self, shape):
        shape = tuple(shape)
        return (shape[1], shape[0]) + shape[2:] if self.time_major else shape

    def _output_size(self) -> tuple:
        size = getattr(self.cell, "output_size", None)
        if size is None:
            size = self.state_size[0]
        if isinstance(size, int):
            return (size,)
        if isinstance(size, (list, tuple, tf.TensorShape)) and all(isinstance(d, int) for d in size):
            return tuple(size)
        raise ValueError(f"Scan: cannot tell the shape of the cell's output: output_size={size!r}. "
                         "Give the cell an int output_size (or return_sequences=True without a mask).")

    def build(self, sequences_shape, initial_state_shape=None, constants_shape=None):
        _check_backend()
        super().build(self._batch_major(sequences_shape))  # builds the cell; stateful variables

    def compute_output_shape(self, sequences_shape, initial_state_shape=None, constants_shape=None):
        batch, length = self._batch_major(sequences_shape)[:2]
        states = [(batch, s) if isinstance(s, int) else [(batch, d) for d in s] for s in self.state_size]
        out = self._output_size()
        if self.return_sequences:
            output = (length, batch, *out) if self.time_major else (batch, length, *out)
        else:
            output = (batch, *out)
        return (output, *states) if self.return_state else output

    # -- the loop ------------------------------------------------------------------------

    def call(self, sequences, initial_state=None, mask=None, training=None, constants=None):
        if tf.nest.is_nested(sequences):
            raise TypeError("tfscan.keras.Scan takes one input tensor [batch, time, ...], "
                            f"not a nest: {type(sequences).__name__}.")
        if constants is not None and not self._cell_takes_constants:
            raise TypeError(f"tfscan.keras.Scan: `constants` were given but the cell "
                            f"{type(self.cell).__name__}.call takes no `constants` argument.")
        training = bool(training) if isinstance(training, bool) or training is None else training
        cell_dtype = self._computes_in()
        sequences = tf.convert_to_tensor(sequences)
        if sequences.dtype.is_floating and sequences.dtype != cell_dtype:
            sequences = tf.cast(sequences, cell_dtype)  # once, not per step
        x = sequences if self.time_major else tf.transpose(
            sequences, [1, 0] + list(range(2, sequences.shape.rank)))
        batch = tf.shape(x)[1] if x.shape[1] is None else x.shape[1]
        if initial_state is None:
            initial_state = self.states if self.stateful else self.get_initial_state(batch_size=batch)
        if self.stateful and None not in (self._expected_batch_size, x.shape[1]) and \
                x.shape[1] != self._expected_batch_size:
            raise ValueError(f"tfscan.keras.Scan(stateful=True): the batch size of the sequences "
                             f"({x.shape[1]}) must be the one the states were built for "
                             f"({self._expected_batch_size}).")
        if not tf.nest.is_nested(initial_state):
            initial_state = [initial_state]
        initial_state = tf.nest.map_structure(
            lambda s: tf.cast(tf.convert_to_tensor(s), cell_dtype), list(initial_state))
        _check_states(initial_state, self.state_size, batch)
        if constants is not None:
            constants = [tf.convert_to_tensor(c) for c in tf.nest.flatten(constants)]

        # Dropout masks are drawn once per call (Keras' way) and ride in the scan's carry,
        # so the compiled step never holds a stale mask from an earlier call.
        with ComputingIn(self.cell, cell_dtype):  # stacked cells are called once here
            keras_rnn.config_dropout_masks(self, self.cell, x[0], initial_state)
        try:
            last, outputs, states = self.inner_loop(x, initial_state, mask, training, constants)
        finally:
            keras_rnn.reset_dropout_masks(self, self.cell)
        out_dtype = self.compute_dtype
        states = [tf.nest.map_structure(lambda s: tf.cast(s, out_dtype), s) for s in states]
        if self.stateful:
            for var, s in zip(tf.nest.flatten(self.states), tf.nest.flatten(states)):
                var.assign(s)
        output = tf.cast(outputs if self.return_sequences else last, out_dtype)
        return (output, *states) if self.return_state else output

    def _computes_in(self) -> str:
        """The dtype of the loop's arithmetic (see ``loop_dtype``)."""
        if not hasattr(self.cell, "compute_dtype"):  # not a Keras layer: no policy to swap
            return self.compute_dtype
        return loop_dtype_for(self.cell, self.loop_dtype)

    def inner_loop(self, sequences, initial_state, mask, training=False, constants=None):
        """``(last_output, outputs, final_states)`` from one ``tfscan.scan`` over time.

        Unlike ``keras.layers.RNN.inner_loop``, ``sequences`` (and ``outputs``) are in the
        layer's layout: time-major when ``time_major``, else batch-major.
        """
        x = sequences
        batch = tf.shape(x)[1] if x.shape[1] is None else x.shape[1]
        cell_dtype = tf.nest.flatten(initial_state)[0].dtype
        skeleton = _skeleton(initial_state)
        m = None
        if mask is not None:
            mask = tf.nest.flatten(mask)[0]
            mask = tf.cast(mask, tf.bool) if mask.dtype != tf.bool else mask
            if mask.shape.rank == 3:
                mask = mask[..., 0]
            _check_mask(mask, sequences, self.time_major)
            m = mask if self.time_major else tf.transpose(mask, [1, 0])
        drops = tuple(keras_rnn.dropout_masks(c) for c in _dropout_cells(self.cell))
        keep_last = (not self.return_sequences) or m is not None
        last0 = tf.zeros(tf.concat([[batch], self._output_size()], 0), cell_dtype) if keep_last else None
        flags = (training, m is not None, keep_last, self.return_sequences,
                 self.zero_output_for_mask, skeleton, constants is not None, cell_dtype.name)
        carry0 = (tuple(tf.nest.flatten(initial_state)), last0, drops, constants)
        (leaves, last, _, _), ys = tfscan.scan(self._make_step(flags), carry0, (x, m),
                                               reverse=self.go_backwards, unroll=self.unroll,
                                               remat=self.remat)
        if not keep_last:
            last = ys[0] if self.go_backwards else ys[-1]
        if self.return_sequences:
            ys = tf.reverse(ys, [0]) if self.go_backwards else ys
            ys = ys if self.time_major else tf.transpose(ys, [1, 0] + list(range(2, ys.shape.rank)))
        return last, ys, tf.nest.pack_sequence_as(skeleton, list(leaves))

    def _make_step(self, flags):
        """The scan step. It closes over ``self`` and hashable ``flags`` only, so calls with
        the same configuration share one compiled program (see tfscan's trace cache)."""
        layer = self

        def step(carry, xt):
            training, has_mask, keep_last, return_sequences, zero_output, skeleton, has_k, dtype = flags
            leaves, prev, drops, constants = carry
            x_t, m_t = xt
            for c, (dm, rdm) in zip(_dropout_cells(layer.cell), drops):
                keras_rnn.set_dropout_masks(c, (dm, rdm))
            states = tuple(tf.nest.pack_sequence_as(skeleton, list(leaves)))
            kw = {"training": training} if layer._cell_takes_training else {}
            if has_k:
                kw["constants"] = list(constants)
            with ComputingIn(layer.cell, dtype):
                out, new_states = layer.cell(x_t, states, **kw)
            new_leaves = tf.nest.flatten(new_states)
            if keep_last and not prev.shape[1:].is_compatible_with(out.shape[1:]):
                raise ValueError(
                    f"tfscan.keras.Scan: the cell's output has shape {out.shape} per step, but the layer "
                    f"expected [batch, {', '.join(map(str, layer._output_size()))}] from the cell's "
                    f"output_size (or, without one, state_size[0] = {layer.state_size[0]!r}, as Keras "
                    "assumes for output shapes). Give the cell an output_size attribute with the size "
                    "of what its call returns.")
            if len(new_leaves) != len(leaves):
                raise ValueError(f"Scan: the cell returned {len(new_leaves)} state tensors for "
                                 f"{len(leaves)} in its state_size / initial state.")
            if has_mask:
                fallback = tf.zeros_like(out) if zero_output else prev
                out = tf.where(_expand_mask(m_t, out), out, fallback)
                new_leaves = [tf.where(_expand_mask(m_t, n), n, o) for n, o in zip(new_leaves, leaves)]
            new_leaves = [tf.cast(n, o.dtype) for n, o in zip(new_leaves, leaves)]
            return ((tuple(new_leaves), out if keep_last else None, drops, constants),
                    out if return_sequences else None)

        return step

    # -- serialization -------------------------------------------------------------------

    def _scan_config(self) -> dict:
        return {"return_sequences": self.return_sequences, "return_state": self.return_state,
                "go_backwards": self.go_backwards, "stateful": self.stateful, "unroll": self.unroll,
                "remat": self.remat, "time_major": self.time_major,
                "zero_output_for_mask": self.zero_output_for_mask, "loop_dtype": self.loop_dtype}

    def get_config(self):
        return {**super().get_config(), **self._scan_config()}


@keras.saving.register_keras_serializable(package="tfscan")
class RNN(Scan):
    """:class:`Scan` under Keras' name: ``tfscan.keras.RNN(cell)`` for ``keras.layers.RNN(cell)``.

    The same layer as ``Scan``; only the class name differs, and Keras names a layer's
    entry in a ``.weights.h5`` file after its class, so a model's weights file saved with
    ``keras.layers.RNN(cell)`` loads into the model written with ``tfscan.keras.RNN(cell)``
    and back (as ``SimpleRNN``/``GRU``/``LSTM`` match Keras' layers of those names).

    >>> import numpy as np, keras, tfscan.keras
    >>> tuple(tfscan.keras.RNN(keras.layers.SimpleRNNCell(3))(np.zeros((2, 4, 5), "float32")).shape)
    (2, 3)
    """


class _CellLayer(Scan):
    """``Scan`` around one Keras cell class, built from that cell's constructor arguments."""

    _cell_class: type = None
    _cell_name: str = ""

    def __init__(self, units: int, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, unroll: int | bool = 1, remat: bool | int | str = False,
                 time_major: bool = False, zero_output_for_mask: bool = False,
                 stateful: bool = False, loop_dtype: str | None = None, **kwargs):
        params = inspect.signature(self._cell_class.__init__).parameters
        cell_kwargs = {k: kwargs.pop(k) for k in list(kwargs)
                       if k in params and params[k].kind is not inspect.Parameter.VAR_KEYWORD
                       and k not in ("self", "units")}
        if "implementation" in kwargs:  # a keras.layers.LSTM / GRU argument the cells take via **kwargs
            cell_kwargs["implementation"] = kwargs.pop("implementation")
        use_cudnn = kwargs.pop("use_cudnn", "auto")  # keras.layers.LSTM / GRU: kept, unused here
        cell = self._cell_class(units, dtype=kwargs.get("dtype"), trainable=kwargs.get("trainable", True),
                                name=self._cell_name, **cell_kwargs)
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, unroll=unroll, remat=remat, time_major=time_major,
                         zero_output_for_mask=zero_output_for_mask, stateful=stateful,
                         loop_dtype=loop_dtype, **kwargs)
        self.use_cudnn = use_cudnn
        self.input_spec = keras.layers.InputSpec(ndim=3)  # [batch, time, features], as Keras' layers

    @property
    def units(self) -> int:
        return self.cell.units

    def get_config(self):
        cell_config = {k: v for k, v in self.cell.get_config().items()
                       if k not in ("name", "trainable", "dtype")}
        return {**keras.layers.Layer.get_config(self), **self._scan_config(), **cell_config}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def _cell_layer(name: str, cell_class: type, cell_name: str, doc: str) -> type:
    """A :class:`_CellLayer` subclass named ``name`` for Keras' ``cell_class``, registered for
    Keras serialization (what ``class name(_CellLayer)`` with two attributes would be)."""
    attrs = {"__doc__": doc, "__module__": __name__, "__qualname__": name,
             "_cell_class": cell_class, "_cell_name": cell_name}
    # The cell's hyper-parameters, read-only, as Keras' own layer has them (``layer.dropout``).
    for arg in inspect.signature(cell_class.__init__).parameters:
        if arg not in ("self", "units", "seed", "kwargs") and not hasattr(keras.layers.RNN, arg):
            attrs[arg] = property(lambda self, arg=arg: getattr(self.cell, arg))
    return keras.saving.register_keras_serializable(package="tfscan")(type(name, (_CellLayer,), attrs))


SimpleRNN = _cell_layer("SimpleRNN", keras.layers.SimpleRNNCell, "simple_rnn_cell", """\
``keras.layers.SimpleRNN`` run by :func:`tfscan.scan`: ``Scan(keras.layers.SimpleRNNCell(units, ...))``.

Takes ``keras.layers.SimpleRNNCell``'s arguments and :class:`Scan`'s.

>>> import numpy as np, tfscan.keras
>>> tuple(tfscan.keras.SimpleRNN(4)(np.zeros((2, 5, 3), "float32")).shape)
(2, 4)
""")

GRU = _cell_layer("GRU", keras.layers.GRUCell, "gru_cell", """\
``keras.layers.GRU`` run by :func:`tfscan.scan`: ``Scan(keras.layers.GRUCell(units, ...))``.

Takes ``keras.layers.GRUCell``'s arguments (e.g. ``reset_after``) and :class:`Scan`'s.

>>> import numpy as np, tfscan.keras
>>> out, h = tfscan.keras.GRU(4, return_state=True)(np.zeros((2, 5, 3), "float32"))
>>> tuple(h.shape)
(2, 4)
""")

LSTM = _cell_layer("LSTM", keras.layers.LSTMCell, "lstm_cell", """\
``keras.layers.LSTM`` run by :func:`tfscan.scan`: ``Scan(keras.layers.LSTMCell(units, ...))``.

Takes ``keras.layers.LSTMCell``'s arguments and :class:`Scan`'s.

>>> import numpy as np, tfscan.keras
>>> tuple(tfscan.keras.LSTM(4, return_sequences=True)(np.zeros((2, 5, 3), "float32")).shape)
(2, 5, 4)
""")
