"""Errors raised inside a user's function, re-raised in tfscan's voice.

A step is traced: run once, in a graph, on tensors with the carry's and x's dtypes and
shapes. TensorFlow's own error then speaks of an op (``Input 'y' of 'AddV2' Op has type
float32 that does not match type int32``) or advises eager execution
(``OperatorNotAllowedInGraphError``), which is no help inside a compiled loop.
:func:`call` catches ``TypeError``/``ValueError`` at the function boundary and raises the
same exception type saying which function, what it was traced on (every leaf's path,
dtype and shape) and what to do, with TensorFlow's error as the ``__cause__``. tfscan's
own errors (from a nested scan, or the carry checks) pass through unchanged.
"""

from __future__ import annotations

import re
import traceback
from typing import Any, Callable, Sequence

import tensorflow as tf

__all__ = []  # private module

_APIS = ("scan", "while_loop", "fori_loop", "cond", "switch", "map", "vmap", "jit", "grad",
         "value_and_grad", "associative_scan")
_OWN = re.compile(r"^((%s)\b[^:\n]{0,60}:|[^\n]{0,60}\btfscan\b)" % "|".join(_APIS))
_DTYPE = re.compile(r"type (\w+) that does not match type (\w+)|must have the same dtype|"
                    r"expected to be an? (\w+) tensor|Cannot convert .* to EagerTensor of dtype|"
                    r"cannot compute \w+ as input #\d+(\(zero-based\))? was expected to be a")
_SHAPE = re.compile(r"Dimensions must be equal|Incompatible shapes|Shapes? must be|must be rank|"
                    r"Shapes .* are incompatible|Dimension \d+ in both shapes must be equal")
_BOOL = re.compile(r"as a Python `bool`|Using a symbolic `tf.Tensor` as a Python `bool`|"
                   r"iterating over `tf.Tensor`|is not allowed")


def describe(groups: Sequence[tuple[str, Sequence[str], Sequence[tf.TensorSpec]]]) -> str:
    """``"carry: c float32[3]; x: x['a'] int32[]"`` from ``(name, paths, specs)`` groups."""
    parts = []
    for name, paths, specs in groups:
        leaves = ", ".join(f"{p} {_typestr(s)}" for p, s in zip(paths, specs)) or "nothing"
        parts.append(f"{name}: {leaves}")
    return "; ".join(parts)


def _typestr(spec: tf.TensorSpec) -> str:
    shape = "?" if spec.shape.rank is None else ",".join("?" if d is None else str(d) for d in spec.shape.as_list())
    return f"{spec.dtype.name}[{shape}]"


def is_own(e: BaseException) -> bool:
    """Whether ``e`` is one of tfscan's own errors (its message starts with an API's name)."""
    return bool(_OWN.match(str(e)))


def call(fn: Callable, args: Sequence[Any], api: str, fn_name: str, traced_on: Callable[[], str]) -> Any:
    """``fn(*args)``; a ``TypeError``/``ValueError`` from TensorFlow becomes tfscan's."""
    try:
        return fn(*args)
    except (TypeError, ValueError) as e:
        message = str(e)
        if is_own(e):
            raise
        explained = _explain(message, api, fn_name, traced_on())
        try:
            error = type(e)(explained)
        except Exception:  # noqa: BLE001 - an exception type with another constructor
            error = (TypeError if isinstance(e, TypeError) else ValueError)(explained)
        raise error from e
    except AssertionError as e:
        if not _in_tf_conditional(e):
            raise
        raise ValueError(
            f"{api}: {fn_name} raised an error while tfscan traced it on {traced_on()}: TensorFlow's "
            "forward-mode rule of tf.cond failed (an AssertionError in cond_v2: forward mode, "
            "tf.autodiff.ForwardAccumulator, nested or inside a traced function, through a tf.cond). "
            "Write the choice with tfscan.cond or tfscan.switch, whose derivatives are tfscan's own "
            "(right to any order), or tf.where; or differentiate in reverse mode (tfscan.grad, "
            "GradientTape).") from e


def _in_tf_conditional(e: BaseException) -> bool:
    """Whether ``e`` was raised inside TensorFlow's conditional (``cond_v2``)."""
    return any(frame.filename.replace("\\", "/").endswith("/ops/cond_v2.py")
               for frame in traceback.extract_tb(e.__traceback__))


_KERAS_HEADER = re.compile(r"^Exception encountered when calling |^Arguments received by ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _gist(message: str) -> str:
    """The line of ``message`` that says what went wrong: the first one past the header a
    Keras layer puts around any error raised in its ``call`` ("Exception encountered when
    calling LSTMCell.call()."), before its list of the arguments received."""
    lines = [line.strip() for line in _ANSI.sub("", message).splitlines()]
    for line in lines:
        if line.startswith("Arguments received by "):
            break
        if line and not _KERAS_HEADER.match(line):
            return line
    return next((line for line in lines if line), "(no message)")


def _explain(message: str, api: str, fn_name: str, traced_on: str) -> str:
    first = _gist(message).split(" You can attempt")[0]  # TensorFlow's advice (eager mode) does not apply
    head = f"{api}: {fn_name} raised an error while tfscan traced it on {traced_on}: {first}"
    if _BOOL.search(message):
        return (f"{head}\nThe function is traced once into a compiled loop, so Python `if`, `while`, "
                "`and`/`or` and `bool()` cannot look at a tensor's value. Use tfscan.cond or "
                "tfscan.switch (or tf.where) to choose between values, and tfscan.while_loop or "
                "tfscan.fori_loop to loop.")
    if _DTYPE.search(message):
        return (f"{head}\nThe function mixes dtypes. Give each carry leaf in {_init_name(api)} the "
                "dtype the function computes for it (a Python 0 is int32 and 0.0 is float32; NumPy "
                "arrays are usually float64), or cast inside the function with tf.cast.")
    if _SHAPE.search(message):
        return (f"{head}\nThe shapes do not fit. Each x is one step's slice of xs (its leading time "
                "axis removed); reshape or transpose the inputs, or the carry in "
                f"{_init_name(api)}, to what the function expects.")
    return head


def _init_name(api: str) -> str:
    return "init_val" if api in ("while_loop", "fori_loop") else "init"
