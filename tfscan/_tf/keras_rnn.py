"""Keras' RNN internals: the cell's training argument and its dropout masks.

Part of the one door to TensorFlow internals (:mod:`tfscan._tf`): every entry says what
it is, why no public API serves, and the TensorFlow versions it was checked on.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__: list = []  # private module


class keras_rnn:  # noqa: N801 - a namespace
    """What ``tfscan.keras`` reads of ``keras.layers.RNN`` and its dropout cells.

    Why private: tfscan's layers subclass ``keras.layers.RNN`` and replace its inner loop;
    the dropout masks Keras draws per call (``DropoutRNNCell``) live in private cell
    attributes that a cell's ``call`` reads, and Keras' own loop sets them the same way.
    Checked on Keras 3.12–3.13.
    """

    @staticmethod
    def cell_takes_training(cell: Any, default: bool) -> bool:
        """Whether the cell's ``call`` accepts ``training`` (Keras' own record of it)."""
        return bool(getattr(cell, "_call_has_training_arg", default))

    @staticmethod
    def dropout_masks(cell: Any) -> tuple:
        """The ``(input, recurrent)`` dropout masks a dropout cell holds now."""
        return getattr(cell, "_dropout_mask", None), getattr(cell, "_recurrent_dropout_mask", None)

    @staticmethod
    def set_dropout_masks(cell: Any, masks: tuple) -> None:
        """Make the cell's next ``call`` use ``masks`` (see :meth:`dropout_masks`)."""
        cell._dropout_mask, cell._recurrent_dropout_mask = masks  # noqa: SLF001

    @staticmethod
    def config_dropout_masks(layer: Any, cell: Any, x0: tf.Tensor, state: Any) -> None:
        """Draw the masks of this call, as ``keras.layers.RNN.call`` does."""
        layer._maybe_config_dropout_masks(cell, x0, state)  # noqa: SLF001

    @staticmethod
    def reset_dropout_masks(layer: Any, cell: Any) -> None:
        """Forget this call's masks, as ``keras.layers.RNN.call`` does."""
        layer._maybe_reset_dropout_masks(cell)  # noqa: SLF001
