"""Small matrix products of a loop body as a multiply and a sum, which XLA fuses.

TensorFlow 2.21's XLA:CPU runs a ``dot`` as an operation of its own. Inside a ``While``
body that costs a call per ``dot`` per iteration, while elementwise ops and reductions
fuse with their neighbours into the body's few kernels. For the products of a small
recurrent step (issue 14's ported train step: ``[16, 8] @ [8, 8]`` and the like, forward
and backward) that call is most of the step: the same program with each ``dot`` written
as ``reduce_sum(a[..., :, :, None] * b[..., None, :, :], -2)`` runs its loops about 2.5x
faster (measured in ``benchmarks/README.md``). Beyond a few thousand multiply-adds the
``dot`` wins again (its kernel is vectorised over K, the broadcast product is
materialised), so only products of at most :data:`MAX_MACS` multiply-adds, in float32 or
float64 and with static shapes, are rewritten. The sum runs over K in another order than
the ``dot``'s kernel: values agree to float rounding (as two ``dot`` kernels do), not bit
for bit.

:func:`expand` rewrites one ``MatMul`` / ``BatchMatMulV2`` / ``BatchMatMulV3`` node of a
GraphDef (:class:`tfscan._scan.graph_piece.GraphPiece`, which every step, residual and
backward piece of a loop body goes through) into ``ExpandDims``/``Transpose``, ``Mul`` and
``Sum`` nodes, the last one named as the product (its consumers are unchanged).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = []  # private module

MAX_MACS = 4096  # M * K * N (times the batch) of a product rewritten
_DTYPES = (tf.float32, tf.float64)
_OPS = {"MatMul": ("transpose_a", "transpose_b"), "BatchMatMulV2": ("adj_x", "adj_y"),
        "BatchMatMulV3": ("adj_x", "adj_y")}


def expand(node: Any, source: tf.Graph) -> list | None:
    """Nodes computing ``node`` (a small product of ``source``) without a ``dot``, or ``None``."""
    if node.op not in _OPS:
        return None
    try:
        op = source.get_operation_by_name(node.name)
    except (KeyError, ValueError):
        return None
    a, b = op.inputs[0], op.inputs[1]
    if (a.dtype not in _DTYPES or b.dtype != a.dtype or op.outputs[0].dtype != a.dtype
            or not (a.shape.is_fully_defined() and b.shape.is_fully_defined()) or a.shape.rank < 2
            or b.shape.rank < 2 or (node.op == "MatMul" and (a.shape.rank, b.shape.rank) != (2, 2))):
        return None
    flip_a, flip_b = (bool(node.attr[k].b) for k in _OPS[node.op])
    k = a.shape[-2] if flip_a else a.shape[-1]
    if op.outputs[0].shape.num_elements() * k > MAX_MACS:
        return None
    dtype = node.attr["T"] if "T" in node.attr else node.attr["Ta"]
    made: list = []

    def add(suffix: str, op_type: str, inputs: list, **attrs) -> str:
        name = f"{node.name}/small_dot/{suffix}"
        made.append(_node(name, op_type, inputs, node.device, attrs))
        return name

    def const(suffix: str, values: list) -> str:
        proto = tf.make_tensor_proto(values, tf.int32)
        return add(suffix, "Const", [], dtype=tf.compat.v1.AttrValue(type=tf.int32.as_datatype_enum),
                   value=tf.compat.v1.AttrValue(tensor=proto))

    def flipped(x: str, rank: int, tag: str) -> str:
        perm = const(f"{tag}_perm", list(range(rank - 2)) + [rank - 1, rank - 2])
        return add(f"{tag}_t", "Transpose", [x, perm], T=dtype, Tperm=_int32())

    left, right = node.input[0], node.input[1]
    if flip_a:
        left = flipped(left, a.shape.rank, "a")
    if flip_b:
        right = flipped(right, b.shape.rank, "b")
    left = add("a_e", "ExpandDims", [left, const("a_axis", -1)], T=dtype, Tdim=_int32())    # [..., M, K, 1]
    right = add("b_e", "ExpandDims", [right, const("b_axis", -3)], T=dtype, Tdim=_int32())  # [..., 1, K, N]
    product = add("mul", "Mul", [left, right], T=dtype)
    made.append(_node(node.name, "Sum", [product, const("axis", -2)], node.device,
                      dict(T=dtype, Tidx=_int32(), keep_dims=tf.compat.v1.AttrValue(b=False))))
    for control in (i for i in node.input if i.startswith("^")):
        made[-1].input.append(control)
    return made


def _int32():
    return tf.compat.v1.AttrValue(type=tf.int32.as_datatype_enum)


def _node(name: str, op: str, inputs: list, device: str, attrs: dict):
    node = tf.compat.v1.NodeDef(name=name, op=op, input=list(inputs), device=device)
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node
